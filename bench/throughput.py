"""Throughput on the CPU with the embedded model: does the time follow the evaluation count?

1. UNet evaluations per second of the plugin's batched scorer (all pending (image, class,
   timestep, noise) inputs of a harness batch flattened into UNet batches) against a loop in the
   style of Li et al.'s reference code (each image on its own, its (prompt, timestep) list cut into
   UNet batches of 32, their default), on the same images and evaluations.
2. End-to-end seconds per image of each sampler with its shipped defaults, through
   ``DiffusionClassifier.classify`` on harness-sized batches of 64 images (VAE encoding, noise,
   UNet, sampler bookkeeping), and the ratio of time saved to evaluations saved. (The adaptive
   default, Li et al.'s 2750-evaluation CIFAR10 schedule, is timed once on 32 images.)

    python bench/throughput.py             # writes bench/results/throughput.{json,md}
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import RESULTS, environment, split_pixels, tiny_digits, write

from diffcls_plugin.samplers import li_timesteps
from diffcls_plugin.scoring import make_noise


def li_style_loop(model, pixels: torch.Tensor, n_timesteps: int, batch_size: int = 32) -> tuple[int, float]:
    """Li et al.'s eval_error: per image, the flat (prompt, timestep) list in UNet batches of 32."""
    adapter = model.adapter
    timesteps = li_timesteps(adapter.num_train_timesteps, n_timesteps)
    n_evals, start = 0, time.perf_counter()
    from diffcls_plugin.scoring import image_seed

    for image in pixels:
        seed = image_seed(model.seed, image)
        latent = adapter.encode_images(image[None])  # (1, C, h, w)
        pairs = [(c, t) for c in range(model.n_classes) for t in timesteps]
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            noise = torch.stack([make_noise(seed, t, 0, model.latent_shape) for _, t in chunk])
            adapter.errors(
                latent.expand(len(chunk), -1, -1, -1),
                noise,
                torch.tensor([t for _, t in chunk]),
                model._prompt_embeds[torch.tensor([c for c, _ in chunk])],
                "l2",
            )
            n_evals += len(chunk)
    return n_evals, time.perf_counter() - start


def batched(model, pixels: torch.Tensor, harness_batch: int = 64) -> tuple[int, float, list]:
    before = model.n_unet_evals
    start = time.perf_counter()
    results = []
    for s in range(0, len(pixels), harness_batch):
        results.extend(model.classify(pixels[s : s + harness_batch]))
    return model.n_unet_evals - before, time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--n-images", type=int, default=128, help="test images timed (the first n of the split)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest is kept")
    args = parser.parse_args()
    torch.manual_seed(0)

    base = tiny_digits("diffusion-baseline")
    pixels, labels = split_pixels(base, "test")
    pixels, labels = pixels[: args.n_images], labels[: args.n_images]

    # 1. the scorer: baseline sampler (32 timesteps), same evaluations both ways
    li_evals, li_seconds = min((li_style_loop(base, pixels, 32) for _ in range(args.repeats)), key=lambda r: r[1])
    ours_evals, ours_seconds, _ = min((batched(base, pixels) for _ in range(args.repeats)), key=lambda r: r[1])
    assert li_evals == ours_evals, (li_evals, ours_evals)
    scorer = {
        "li_style_evals_per_s": li_evals / li_seconds,
        "batched_evals_per_s": ours_evals / ours_seconds,
        "speedup": li_seconds / ours_seconds,
        "evals": ours_evals,
    }

    # 2. end to end, each sampler with its shipped defaults
    samplers = {}
    for name in ("diffusion-baseline", "diffusion-adaptive", "diffusion-hier"):
        model = tiny_digits(name)
        # Li et al.'s default adaptive schedule costs 2750 evaluations per image: time it on fewer images, once
        n, repeats = (min(32, len(pixels)), 1) if name == "diffusion-adaptive" else (len(pixels), args.repeats)
        evals, seconds, results = min((batched(model, pixels[:n]) for _ in range(repeats)), key=lambda r: r[1])
        samplers[name] = {
            "options": model.options.to_dict(),
            "n_images": n,
            "repeats": repeats,
            "unet_evals_per_image": evals / n,
            "seconds_per_image": seconds / n,
            "top1_on_timed_images": sum(r.prediction == y for r, y in zip(results, labels)) / n,
        }
    b, h = samplers["diffusion-baseline"], samplers["diffusion-hier"]
    eval_ratio = b["unet_evals_per_image"] / h["unet_evals_per_image"]
    time_ratio = b["seconds_per_image"] / h["seconds_per_image"]
    summary = {"eval_ratio": eval_ratio, "time_ratio": time_ratio, "time_over_eval_ratio": time_ratio / eval_ratio}
    data = {"environment": environment(), "n_images": len(pixels), "scorer": scorer, "samplers": samplers, "summary": summary}
    lines = [
        "# Throughput on the CPU (tiny-digits)",
        "",
        f"{len(pixels)} test images, {data['environment']['torch_threads']} torch threads, fastest of {args.repeats} runs.",
        "",
        "## UNet evaluations per second (baseline sampler, 32 timesteps: the same evaluations both ways)",
        "",
        "| scorer | UNet evals / s ↑ |",
        "|---|---:|",
        f"| Li et al.-style loop (one image at a time, UNet batches of 32) | {scorer['li_style_evals_per_s']:.0f} |",
        f"| diffcls batched scorer (64 images flattened, UNet batches of 256) | {scorer['batched_evals_per_s']:.0f} |",
        "",
        f"Speed-up of the batched scorer: {scorer['speedup']:.2f}x.",
        "",
        "## End to end, shipped defaults",
        "",
        "| sampler | images timed | UNet evals / image ↓ | seconds / image ↓ |",
        "|---|---:|---:|---:|",
    ]
    for name, r in samplers.items():
        lines.append(f"| {name} | {r['n_images']} | {r['unet_evals_per_image']:.1f} | {r['seconds_per_image'] * 1000:.2f} ms |")
    lines += [
        "",
        f"Baseline / hierarchical: {eval_ratio:.1f}x fewer evaluations, {time_ratio:.1f}x less time "
        f"(time ratio = {summary['time_over_eval_ratio']:.2f} of the evaluation ratio; target >= 0.8).",
    ]
    write(Path(args.out), "throughput", data, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
