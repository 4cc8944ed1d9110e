#!/usr/bin/env python
"""Train the embedded ``tiny-digits`` model: a ~2M-parameter text-to-image latent diffusion model
in Stable Diffusion's diffusers layout, from scratch, on scikit-learn's bundled digits.

Offline and CPU-only (about 25 minutes on 2 cores); never run by the tests. Stages:

1. tokenizer: CLIP's real BPE vocabulary from open_clip's merges file, truncated
   (:func:`diffcls_plugin.data.tokenizer.save_clip_tokenizer`);
2. VAE (f=4: 32x32x3 images <-> 4x8x8 latents): reconstruction + a small KL term; then
   ``scaling_factor`` = 1 / std of the train latents (posterior means);
3. UNet + CLIP text encoder jointly: the epsilon objective of Stable Diffusion on
   ``posterior mean x scaling_factor`` under SD's noise schedule, each caption drawn at random
   from :data:`diffcls_plugin.data.digits.TEMPLATES` (or `scripts/letters.py`)`; EMA weights are what is saved;
4. zero-shot accuracy on the VALIDATION split with the project's classifier (baseline sampler,
   32 timesteps = 320 UNet evaluations per image). The test split is never touched here.

The pipeline is saved in fp16 safetensors (``StableDiffusionPipeline.save_pretrained``) with a
``TRAINING.json`` that records the recipe, the split, the timings and the package versions.

Usage::

    HF_HUB_OFFLINE=1 python scripts/train_tiny_digits.py            # writes diffcls_plugin/weights/tiny-digits
    python scripts/train_tiny_digits.py --out scratch/td --unet-steps 500  # a quick try elsewhere
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffcls_plugin.data import digits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import letters  # noqa: E402

TASKS = {
    "digits": digits,
    "letters": letters,
    "lowercase": letters.LOWERCASE,
    "cyrillic": letters.CYRILLIC,
    "greek": letters.GREEK,
    "cyrillic-upper": letters.CYRILLIC_UPPER,
    "greek-upper": letters.GREEK_UPPER,
    "hebrew": letters.HEBREW,
}


def font_task_data(name: str, covering: str) -> dict[str, str]:
    """The record of a task rendered by scripts/letters.py: ``name`` of the glyphs, the alphabet
    the faces must cover."""
    return {
        "name": f"{name} rendered in free font faces",
        "source": f"fontconfig's faces covering {covering} (Debian font packages), one face per family (scripts/letters.py)",
        "image": "white glyph on black, ink box scaled to 18-26 px tall (train, 3 random renders per font and letter) or 22 px (val/test), 32x32 RGB",
        "split": "by font family, sha256(family) mod 20: 0-2 test, 3-4 val, else train (sizes are families)",
    }


TASK_DATA = {
    "digits": {
        "name": "scikit-learn's digits",
        "source": "sklearn.datasets.load_digits (1797 8x8 images, 16 grey levels)",
        "image": "0..16 scaled to 0..255, 8x8 -> 32x32 PIL bicubic, white digit on black, RGB",
        "split": "sklearn train_test_split, stratified, random_state=seed: test 20%, then val 15% of the rest",
    },
    "letters": font_task_data("26 capital letters", "A-Z"),
    "lowercase": font_task_data("26 lowercase letters", "a-z"),
    "greek": font_task_data("24 lowercase Greek letters (α-ω)", "α-ω"),
    "cyrillic": font_task_data("32 lowercase Cyrillic letters (а-я)", "а-я"),
    "cyrillic-upper": font_task_data("32 capital Cyrillic letters (А-Я)", "А-Я"),
    "greek-upper": font_task_data("24 capital Greek letters (Α-Ω)", "Α-Ω"),
    "hebrew": font_task_data("22 Hebrew letters (א-ת, final forms left out)", "א-ת"),
}
task = digits  # the task being trained (set from --task in main)

DEFAULT_OUT = REPO / "diffcls_plugin" / "weights" / "tiny-digits"
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


# ----------------------------------------------------------------------------- architecture
def unet_config(args) -> dict:
    return dict(
        sample_size=task.IMAGE_SIZE // 4,  # 8x8 latents
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=args.text_width,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,  # f = 2 ** (3 - 1) = 4
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=task.IMAGE_SIZE,
    )


def text_config(args, tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=args.text_width,
        intermediate_size=2 * args.text_width,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=args.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (N, 3, 32, 32) float32 in [-1, 1], exactly as the classifier's transform."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])  # (N, 32, 32, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: float, max_rot: float, max_scale: float) -> torch.Tensor:
    """Random small affine warps (rotation, scale, translation in pixels) of (N, 3, H, W) in [-1, 1]."""
    n, _, h, _ = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # (N, 4) in [-1, 1]
    angle = u[:, 0] * math.radians(max_rot)
    scale = 1 + u[:, 1] * max_scale
    shift = u[:, 2:] * (2 * max_shift / h)  # in normalised [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1  # black fill


def lr_at(step: int, total: int, base: float, warmup: int, final_frac: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a module's parameters (decay warmed up as (1+n)/(10+n))."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.n = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for ema_p, p in zip(self.module.parameters(), module.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)
        for ema_b, b in zip(self.module.buffers(), module.buffers()):
            ema_b.copy_(b)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- stages
def train_vae(args, x_train: torch.Tensor):
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    vae.train()
    for step in range(args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 100, 0.1)
        idx = torch.randint(0, len(x_train), (args.vae_batch,), generator=gen)
        x = x_train[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x)
        kl = posterior.kl().mean()  # summed over the latent's 4x8x8 entries, mean over the batch
        loss = rec + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step}/{args.vae_steps} rec {rec.item():.5f} kl {kl.item():.1f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_means(vae, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(x[s : s + batch]).latent_dist.mean for s in range(0, len(x), batch)])


def build_captions(labels: np.ndarray, gen: torch.Generator) -> list[str]:
    picks = torch.randint(0, len(task.TEMPLATES), (len(labels),), generator=gen).tolist()
    return [task.TEMPLATES[t].format(c=task.CLASSNAMES[int(y)]) for t, y in zip(picks, labels)]


def train_diffusion(args, latents: torch.Tensor, labels: np.ndarray, tokenizer, scheduler):
    """Joint UNet + text encoder training on (N_aug, N, 4, 8, 8) scaled latents."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(args.seed + 2)
    unet = UNet2DConditionModel(**unet_config(args))
    torch.manual_seed(args.seed + 3)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(args, tokenizer)))
    unet.train()
    text_encoder.train()
    # every caption of every class, tokenized once: (C, T, L)
    all_ids = torch.stack(
        [
            tokenizer(
                [t.format(c=c) for t in task.TEMPLATES],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for c in task.CLASSNAMES
        ]
    )
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    ema_unet, ema_text = EMA(unet, args.ema), EMA(text_encoder, args.ema)
    alphas = scheduler.alphas_cumprod  # (T,)
    gen = torch.Generator().manual_seed(args.seed + 4)
    n_copies, n = latents.shape[:2]
    running = None
    start = time.perf_counter()
    for step in range(args.unet_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.unet_steps, args.lr, args.warmup, args.final_lr_frac)
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        copy_idx = torch.randint(0, n_copies, (args.batch,), generator=gen)
        x0 = latents[copy_idx, idx]  # (B, 4, 8, 8)
        y = labels_t[idx]
        template = torch.randint(0, len(task.TEMPLATES), (args.batch,), generator=gen)
        ids = all_ids[y, template]  # (B, L)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise  # scheduler.add_noise, in fp32
        cond = text_encoder(ids)[0]  # (B, L, D) last hidden state, as the pipeline uses it
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 200 == 0 or step == args.unet_steps - 1:
            rate = (step + 1) / (time.perf_counter() - start)
            log(f"unet step {step}/{args.unet_steps} loss {running:.4f} lr {opt.param_groups[0]['lr']:.2e} ({rate:.2f} steps/s)")
    return ema_unet.module, ema_text.module, running


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, unet, scheduler, tokenizer_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae),
        text_encoder=copy.deepcopy(text_encoder),
        tokenizer=tokenizer,
        unet=copy.deepcopy(unet),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; transformers 4's (slow) CLIPTokenizer needs the
    # vocabulary and merges files, so ship them too
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_dir / name, folder / "tokenizer" / name)
    # drop the load-time flags transformers 5 writes back into the tokenizer config
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for f in folder.rglob("*"):  # safetensors writes its files 0600; a packaged model must be readable
        f.chmod(0o755 if f.is_dir() else 0o644)


def evaluate(folder: Path, split: str, seed: int, sampler: str = "diffusion-baseline", n_timesteps: int = 32, chunk: int = 24) -> dict:
    """Zero-shot accuracy of the saved folder on a split, with the project's classifier."""
    from diffcls_plugin.classifier import load_classifier
    from diffcls_plugin.config import load_config

    if split == "test":
        raise SystemExit("the training script never evaluates on the test split")
    cfg = load_config(None, [f"baseline.n_timesteps={n_timesteps}", "unet_batch_size=320"])
    model = load_classifier(sampler, str(folder), config=cfg, progress=False)
    model.prepare(task.CLASSNAMES, task.TEMPLATES)
    images, labels = task.load_split(split, seed=seed)
    x = torch.stack([model.transform(im) for im in images])
    start = time.perf_counter()
    preds, n_evals = [], []
    for s in range(0, len(x), chunk):
        for r in model.classify(x[s : s + chunk]):
            preds.append(r.prediction)
            n_evals.append(r.n_evals)
    preds = np.asarray(preds)
    return {
        "sampler": sampler,
        "split": split,
        "n_images": int(len(labels)),
        "accuracy": float((preds == labels).mean()),
        "mean_n_evals": float(np.mean(n_evals)),
        "seconds": round(time.perf_counter() - start, 1),
        "per_class_accuracy": [float((preds[labels == c] == c).mean()) for c in range(len(task.CLASSNAMES))],
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "numpy", "scikit-learn", "safetensors", "pillow", "open-clip-torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced)")
    p.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="digits",
        help="digits (sklearn), letters, lowercase, cyrillic, greek, cyrillic-upper, greek-upper or hebrew (font renders, scripts/letters.py)",
    )
    p.add_argument("--name", default=None, help="model name recorded in TRAINING.json (default tiny-<task>)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything, and of the data split")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-merges", type=int, default=2048, help="CLIP BPE merges kept")
    p.add_argument("--max-length", type=int, default=16, help="tokenizer model_max_length = text positions")
    p.add_argument("--text-width", type=int, default=64, help="text encoder width = UNet cross_attention_dim")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-batch", type=int, default=64)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-5, help="weight of the KL (summed over the latent) vs the pixel MSE")
    p.add_argument("--unet-steps", type=int, default=2800)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--final-lr-frac", type=float, default=0.05, help="cosine decay floor, as a fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--aug-copies", type=int, default=0, help="augmented copies of each train image (0: none)")
    p.add_argument("--aug-shift", type=float, default=1.5, help="max translation, pixels of the 32x32 image")
    p.add_argument("--aug-rot", type=float, default=8.0, help="max rotation, degrees")
    p.add_argument("--aug-scale", type=float, default=0.08, help="max relative scale change")
    p.add_argument("--vae-init", type=Path, default=None, help="(experiments only) reuse the VAE of a saved folder")
    p.add_argument("--no-eval", action="store_true", help="skip the validation accuracy")
    p.add_argument("--eval-hier", action="store_true", help="also report the hierarchical sampler on val")
    return p.parse_args(argv)


def _portable(path: Path) -> str:
    """A path as recorded next to the weights: relative to the repository, never a machine path."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return Path(path).name


def main(argv=None) -> None:
    global task
    args = parse_args(argv)
    task = TASKS[args.task]
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    from diffusers import AutoencoderKL, DDPMScheduler

    from diffcls_plugin.data.tokenizer import save_clip_tokenizer

    t0 = time.perf_counter()
    times = {}
    work = Path(tempfile.mkdtemp(prefix="tiny-digits-"))
    try:
        tokenizer = save_clip_tokenizer(work / "tokenizer", n_merges=args.n_merges, model_max_length=args.max_length)
        scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
        split = task.split_indices(args.seed)
        train_images, train_labels = task.load_split("train", args.seed)
        x_train = to_tensor(train_images)  # (N, 3, 32, 32)
        log(f"train {len(x_train)} images; val {len(split['val'])}; test {len(split['test'])} (untouched)")

        # ---- VAE
        t = time.perf_counter()
        if args.vae_init is not None:
            vae = AutoencoderKL.from_pretrained(args.vae_init, subfolder="vae", torch_dtype=torch.float32).eval()
            vae.requires_grad_(False)
        else:
            vae = train_vae(args, x_train)
        times["vae_s"] = round(time.perf_counter() - t, 1)
        with torch.no_grad():
            means = encode_means(vae, x_train)
            recon = torch.cat([vae.decode(means[s : s + 256]).sample for s in range(0, len(means), 256)])
        vae_rec_mse = F.mse_loss(recon, x_train).item()
        scaling_factor = float(1.0 / means.std())
        vae.register_to_config(scaling_factor=scaling_factor)
        log(f"vae: train recon MSE {vae_rec_mse:.5f}; latent mean {means.mean():.3f} std {means.std():.3f} -> scaling_factor {scaling_factor:.4f}")

        # ---- latents (plus augmented copies)
        copies = [means]
        gen = torch.Generator().manual_seed(args.seed + 5)
        for _ in range(args.aug_copies):
            copies.append(encode_means(vae, augment(x_train, gen, args.aug_shift, args.aug_rot, args.aug_scale)))
        latents = torch.stack(copies) * scaling_factor  # (1 + aug_copies, N, 4, 8, 8)

        # ---- UNet + text encoder
        t = time.perf_counter()
        unet, text_encoder, final_loss = train_diffusion(args, latents, train_labels, tokenizer, scheduler)
        times["unet_s"] = round(time.perf_counter() - t, 1)
        times["train_total_s"] = round(time.perf_counter() - t0, 1)
        log(f"training done in {times['train_total_s']:.0f}s")

        # ---- save (to a temporary folder, then into place)
        staged = work / "pipeline"
        save_pipeline(staged, vae, text_encoder, tokenizer, unet, scheduler, work / "tokenizer")

        # ---- validation accuracy of the saved (fp16) weights
        results = {}
        if not args.no_eval:
            t = time.perf_counter()
            results["val_baseline_32"] = evaluate(staged, "val", args.seed)
            log(f"val baseline-32 accuracy {results['val_baseline_32']['accuracy']:.4f}")
            if args.eval_hier:
                results["val_hier_default"] = evaluate(staged, "val", args.seed, sampler="diffusion-hier")
                r = results["val_hier_default"]
                log(f"val hierarchical accuracy {r['accuracy']:.4f}, {r['mean_n_evals']:.1f} evals/image")
            times["eval_s"] = round(time.perf_counter() - t, 1)

        counts = {"unet": n_params(unet), "vae": n_params(vae), "text_encoder": n_params(text_encoder)}
        counts["total"] = sum(counts.values())
        record = {
            "model": args.name or f"tiny-{args.task}",
            "description": f"tiny text-to-image latent diffusion model (Stable Diffusion layout) trained from scratch on {TASK_DATA[args.task]['name']}",
            "seed": args.seed,
            "command": " ".join(["python", "scripts/train_tiny_digits.py", *(argv if argv is not None else sys.argv[1:])]),
            "args": {k: (_portable(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "data": {
                "source": TASK_DATA[args.task]["source"],
                "image": TASK_DATA[args.task]["image"],
                "split": {
                    "method": TASK_DATA[args.task]["split"],
                    "seed": args.seed,
                    "sizes": {k: int(len(v)) for k, v in split.items()},
                    **({"families": split} if args.task != "digits" else {}),
                },
                "classnames": task.CLASSNAMES,
                "templates": task.TEMPLATES,
                "train_on": "train",
                "tune_on": "val",
            },
            "recipe": {
                "tokenizer": {"n_merges": args.n_merges, "model_max_length": args.max_length, "vocab_size": len(tokenizer)},
                "scheduler": SCHEDULER_CONFIG,
                "vae": {
                    "config": vae_config(),
                    "steps": args.vae_steps if args.vae_init is None else f"reused from {args.vae_init}",
                    "batch": args.vae_batch,
                    "optimizer": "AdamW(weight_decay=0)",
                    "lr": args.vae_lr,
                    "lr_schedule": "linear warmup 100 steps, cosine to 10%",
                    "loss": f"pixel MSE + {args.vae_kl} * KL (summed over latent entries, mean over batch), posterior samples",
                    "train_recon_mse": vae_rec_mse,
                    "scaling_factor": scaling_factor,
                    "scaling_factor_rule": "1 / std of the train posterior means",
                },
                "unet": {"config": unet_config(args)},
                "text_encoder": {"config": text_config(args, tokenizer)},
                "diffusion_training": {
                    "steps": args.unet_steps,
                    "batch": args.batch,
                    "optimizer": f"AdamW(weight_decay={args.weight_decay}) on UNet + text encoder jointly, grad-norm clip 1.0",
                    "lr": args.lr,
                    "lr_schedule": f"linear warmup {args.warmup} steps, cosine to {args.final_lr_frac} x lr",
                    "ema_decay": args.ema,
                    "ema_warmup": "decay = min(ema, (1 + n) / (10 + n))",
                    "objective": "epsilon MSE, t ~ U{0..999}, latents = posterior mean x scaling_factor",
                    "captions": "one of the templates at random per sample, with the class word",
                    "augmentation": (
                        {"copies": args.aug_copies, "max_shift_px": args.aug_shift, "max_rot_deg": args.aug_rot, "max_scale": args.aug_scale}
                        if args.aug_copies
                        else None
                    ),
                    "saved": "EMA weights of the UNet and the text encoder",
                    "final_train_loss_smoothed": final_loss,
                },
                "saved_dtype": "float16 (safetensors)",
            },
            "parameters": counts,
            "timings_s": times,
            "threads": args.threads,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
            "versions": versions(),
            "validation": results,
        }
        (staged / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
        out = args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        incoming = out.parent / f".{out.name}.incoming-{os.getpid()}"
        shutil.copytree(staged, incoming)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            shutil.rmtree(old)
        os.replace(incoming, out)
        log(f"saved {out} ({folder_bytes(out) / 1e6:.2f} MB); parameters {counts}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
