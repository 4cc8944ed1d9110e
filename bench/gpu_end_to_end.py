"""End to end on a GPU: full-size SD 2 base, SDXL base and SD3 medium (random weights) through
``diffcls run`` and the real ``clip_benchmark eval`` path.

What it measures is cost, not accuracy: seconds and denoiser evaluations per image of the
baseline and hierarchical samplers at each family's native resolution, and the plugin's
denoiser evaluations per second, to set against the raw denoiser rate that
``bench/gpu_throughput.py`` measures. The weights are random (nothing can be downloaded here;
the speed of a network does not depend on its weights), so the accuracies it prints are
chance and say nothing.

Each pipeline is built from its published configs (UNet/MMDiT, VAE, every text encoder but
SD3's optional T5, the full 49408-token CLIP tokenizer built offline, the scheduler), saved in
diffusers layout, and loaded back through ``--pretrained <folder>`` exactly as a downloaded
checkpoint would be: the family is read from ``model_index.json``.

    python bench/gpu_end_to_end.py --out bench/results/gpu-end-to-end
    python bench/gpu_end_to_end.py --tiny --allow-cpu --out /tmp/e2e   # a smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_gpu_flags, gpu_device  # noqa: E402

# text encoders, from each checkpoint's text_encoder*/config.json
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280, hidden_act="gelu")
OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, projection_dim=512, hidden_act="gelu")
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32, hidden_act="gelu")
# VAEs (vae/config.json): SD 2 and SDXL share the architecture, SD3's has 16 latent channels and a shift
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_VAE = dict(
    VAE,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)
VAES = {
    "sd2-base": dict(sample_size=768, scaling_factor=0.18215),
    "sdxl-base": dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    "sd3-medium": dict(sample_size=1024, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
}


def denoiser_config(arch: str, tiny: bool) -> dict:
    from gpu_throughput import ARCHS

    _, config, tiny_config, _ = ARCHS[arch]
    return dict(tiny_config if tiny else config)


def text_encoder(cls, shape: dict, vocab: int, tokenizer, tiny: bool):
    from transformers import CLIPTextConfig

    shape = dict(TINY_TEXT, projection_dim=shape["projection_dim"] if not tiny else TINY_TEXT["projection_dim"]) if tiny else shape
    return cls(
        CLIPTextConfig(
            vocab_size=vocab,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **shape,
        )
    )


def build_pipeline(arch: str, folder: Path, tiny: bool, device: torch.device) -> dict:
    """Build ``arch``'s pipeline with random weights on ``device`` and save it (fp16) to ``folder``."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from diffcls_plugin.data.tokenizer import CLIP_N_MERGES, save_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = save_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer", n_merges=1000 if tiny else CLIP_N_MERGES)
    vocab = len(tokenizer)
    net = denoiser_config(arch, tiny)
    vae_config = dict(TINY_VAE if tiny else VAE, **VAES[arch])
    if tiny:
        vae_config["sample_size"] = 16
    start = time.perf_counter()
    with torch.device(device):
        vae = diffusers.AutoencoderKL(**vae_config)
        if arch == "sd2-base":
            scheduler = diffusers.DDPMScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1, prediction_type="epsilon"
            )
            pipe = diffusers.StableDiffusionPipeline(
                unet=diffusers.UNet2DConditionModel(**net),
                vae=vae,
                tokenizer=tokenizer,
                scheduler=scheduler,
                text_encoder=text_encoder(CLIPTextModel, OPENCLIP_H, vocab, tokenizer, tiny),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        elif arch == "sdxl-base":
            scheduler = diffusers.EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
            )
            enc2 = text_encoder(CLIPTextModelWithProjection, CLIP_BIGG, vocab, tokenizer, tiny)
            if tiny:  # the tiny UNet's conditioning widths, from bench/gpu_throughput.py's TINY_SDXL_UNET
                net.update(cross_attention_dim=2 * TINY_TEXT["hidden_size"], projection_class_embeddings_input_dim=6 * 8 + TINY_TEXT["projection_dim"])
            pipe = diffusers.StableDiffusionXLPipeline(
                unet=diffusers.UNet2DConditionModel(**net),
                vae=vae,
                scheduler=scheduler,
                text_encoder=text_encoder(CLIPTextModel, CLIP_L, vocab, tokenizer, tiny),
                tokenizer=tokenizer,
                text_encoder_2=enc2,
                tokenizer_2=tokenizer,
            )
        else:
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
            if tiny:
                net.update(in_channels=4, out_channels=4, joint_attention_dim=64, pooled_projection_dim=2 * TINY_TEXT["projection_dim"])
                vae_config["latent_channels"] = 4
                vae = diffusers.AutoencoderKL(**vae_config)
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=diffusers.SD3Transformer2DModel(**net),
                vae=vae,
                scheduler=scheduler,
                text_encoder=text_encoder(CLIPTextModelWithProjection, CLIP_L, vocab, tokenizer, tiny),
                tokenizer=tokenizer,
                text_encoder_2=text_encoder(CLIPTextModelWithProjection, CLIP_BIGG, vocab, tokenizer, tiny),
                tokenizer_2=tokenizer,
                text_encoder_3=None,
                tokenizer_3=None,
            )
    built = time.perf_counter() - start
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(parameters=params, build_seconds=built, save_seconds=time.perf_counter() - start - built)


def run_config(arch: str, folder: Path, out: Path, args) -> Path:
    """The ``diffcls run`` config of one family: baseline and hierarchical on a digits subset."""
    lines = [
        f"name: gpu-e2e-{arch}",
        f"output: {out}",
        "seed: 0",
        f"batch_size: {args.per_class * 10}",
        "num_workers: 2",
        f"precision: {args.dtype}",
        f"subset: {{per_class: {args.per_class}, seed: 0}}",
        "models:",
        f"  - {{name: diffusion-baseline, pretrained: {folder}, label: baseline-{args.baseline_timesteps} {arch}, "
        f"options: {{baseline: {{n_timesteps: {args.baseline_timesteps}}}}}}}",
        f"  - {{name: diffusion-hier, pretrained: {folder}, label: hierarchical {arch}}}",
        "datasets:",
        f"  - {{name: wds/digits, options: {{unet_batch_size: {args.unet_batch_size}}}}}",
    ]
    path = out.parent / f"{arch}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/gpu-end-to-end")
    parser.add_argument("--arch", default="sd2-base,sdxl-base,sd3-medium")
    parser.add_argument("--per-class", type=int, default=1, help="digits per class (10 classes)")
    parser.add_argument("--baseline-timesteps", type=int, default=32)
    parser.add_argument("--unet-batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="bf16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--work", default=None, help="folder for the saved pipelines (default: a temporary one)")
    add_gpu_flags(parser, "tiny pipelines of the same families, to smoke-test this script")
    args = parser.parse_args()
    device = gpu_device(parser, args, "gpu-end-to-end")
    if device is None:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="diffcls-e2e-"))
    env = dict(os.environ, DIFFCLS_RESUME="0", HF_HUB_OFFLINE="1")
    rows, builds = [], {}
    for arch in args.arch.split(","):
        folder = work / arch
        builds[arch] = build_pipeline(arch, folder, args.tiny, device)
        print(arch, json.dumps(builds[arch]), flush=True)
        results = work / f"results-{arch}"
        config = run_config(arch, folder, results, args)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from diffcls_plugin.cli import main; main()", "run", str(config), "--force"], env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            rows.append(dict(arch=arch, error=f"diffcls run exited {done.returncode}"))
            continue
        for file in sorted(results.glob("*.json")):
            data = json.loads(file.read_text())
            block = data["diffcls"]
            rows.append(
                dict(
                    arch=arch,
                    family=block.get("family"),
                    sampler=block["sampler"],
                    dtype=block["config"]["dtype"],
                    image_size=block["config"]["image_size"],
                    n_images=block["n_images"],
                    unet_evals_per_image=block["unet_evals_per_image"],
                    seconds_per_image=block["seconds_per_image"],
                    evals_per_second=block["unet_evals_per_image"] / block["seconds_per_image"],
                    acc1_random_weights=data["metrics"]["acc1"],
                    run_wall_seconds=wall,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = dict(
        device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        model="random-weight pipelines" + (" (tiny)" if args.tiny else " (published configs)"),
        dataset=f"wds/digits, {args.per_class} per class",
        builds=builds,
    )
    (out / "gpu_end_to_end.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# End to end through clip_benchmark: {meta['model']} on {meta['device']}",
        "",
        f"{meta['dataset']}; torch {torch.__version__}. Random weights: the accuracy is chance and not reported.",
        "",
        "| arch | family | sampler | dtype | px | images | evals/img | s/img | evals/s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['arch']} | {r['family']} | {r['sampler']} | {r['dtype']} | {r['image_size']} | {r['n_images']} | "
            f"{r['unet_evals_per_image']:.0f} | {r['seconds_per_image']:.3f} | {r['evals_per_second']:.1f} |"
        )
    (out / "gpu_end_to_end.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu_end_to_end.json'} and {out / 'gpu_end_to_end.md'}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
