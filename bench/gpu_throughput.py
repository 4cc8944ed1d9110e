"""GPU throughput of the denoisers of Stable Diffusion 2 base, SDXL base and SD3 medium
(random weights, published configs).

Denoiser (UNet or MMDiT) evaluations per second over a sweep of batch sizes in fp16 and bf16,
with and without ``torch.compile``; FLOPs per evaluation counted with
``torch.utils.flop_counter``; achieved TFLOP/s against the device's dense fp16/bf16 peak. No
download: each denoiser is built from its published config with random weights (the speed of a
network does not depend on its weights), at its native resolution (SD 2 base 512 px, 64x64
latents; SDXL and SD3 1024 px, 128x128 latents), with the conditioning its pipeline passes
(SDXL: pooled text embeddings and size ids; SD3: 77 CLIP + 256 T5 tokens and pooled projections).

Runs only where CUDA exists; elsewhere it says so and exits 0.

    python bench/gpu_throughput.py --arch sd2-base,sdxl-base,sd3-medium --out bench/results/gpu-throughput
    python bench/gpu_throughput.py --tiny --allow-cpu --out /tmp/x   # a smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from common import add_gpu_flags, gpu_device

# Stable Diffusion 2 base (stabilityai/stable-diffusion-2-base), unet/config.json
SD2_BASE_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)
# text_encoder/config.json (OpenCLIP ViT-H/14 text tower, penultimate layer: 23 layers)
SD2_BASE_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
# vae/config.json
SD2_BASE_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    sample_size=768,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_UNET = dict(SD2_BASE_UNET, sample_size=8, block_out_channels=(32, 32, 64, 64), attention_head_dim=(2, 2, 4, 4), cross_attention_dim=32, norm_num_groups=8)
# Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0), unet/config.json
SDXL_BASE_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)
TINY_SDXL_UNET = dict(
    SDXL_BASE_UNET,
    sample_size=8,
    block_out_channels=(16, 32, 32),
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=(1, 1, 1),
    cross_attention_dim=64,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 16,
    norm_num_groups=8,
)
# Stable Diffusion 3 medium (stabilityai/stable-diffusion-3-medium-diffusers), transformer/config.json
SD3_MEDIUM_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
TINY_SD3_TRANSFORMER = dict(
    sample_size=8,
    patch_size=1,
    in_channels=4,
    out_channels=4,
    num_layers=1,
    attention_head_dim=8,
    num_attention_heads=4,
    joint_attention_dim=32,
    caption_projection_dim=32,
    pooled_projection_dim=16,
)
ARCHS = {  # name -> (kind, config, tiny config, text tokens)
    "sd2-base": ("unet", SD2_BASE_UNET, TINY_UNET, 77),
    "sdxl-base": ("unet", SDXL_BASE_UNET, TINY_SDXL_UNET, 77),
    "sd3-medium": ("mmdit", SD3_MEDIUM_TRANSFORMER, TINY_SD3_TRANSFORMER, 77 + 256),
}


def build(arch: str, tiny: bool, device=None):
    """The denoiser of ``arch`` with random weights, initialised on ``device``: (module, config)."""
    kind, config, tiny_config, _ = ARCHS[arch]
    config = tiny_config if tiny else config
    with torch.device(device or "cpu"):
        return _build(kind, config), config


def _build(kind: str, config: dict):
    if kind == "unet":
        from diffusers import UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor2_0

        model = UNet2DConditionModel(**config).eval()
        model.set_attn_processor(AttnProcessor2_0())
        return model
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**config).eval()


def inputs(arch: str, config: dict, batch: int, dtype, device) -> dict:
    """One batch of the keyword arguments its pipeline passes the denoiser."""
    kind, _, _, tokens = ARCHS[arch]
    side, channels = config["sample_size"], config["in_channels"]
    sample = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
    if kind == "mmdit":
        return dict(
            hidden_states=sample,
            timestep=torch.rand(batch, device=device, dtype=dtype) * 1000,
            encoder_hidden_states=torch.randn(batch, tokens, config["joint_attention_dim"], device=device, dtype=dtype),
            pooled_projections=torch.randn(batch, config["pooled_projection_dim"], device=device, dtype=dtype),
        )
    out = dict(
        sample=sample.contiguous(memory_format=torch.channels_last),
        timestep=torch.randint(0, 1000, (batch,), device=device),
        encoder_hidden_states=torch.randn(batch, tokens, config["cross_attention_dim"], device=device, dtype=dtype),
    )
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        out["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]], device=device, dtype=dtype).repeat(batch, 1),
        }
    return out


# dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets
PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "RTX 3090": 71.0,
    "RTX 4090": 165.2,
}


def peak_for(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def flops_per_eval(model, kwargs: dict) -> int:
    """FLOPs of one evaluation (the first input of ``kwargs``)."""
    from torch.utils.flop_counter import FlopCounterMode

    one = {k: ({kk: vv[:1] for kk, vv in v.items()} if isinstance(v, dict) else v[:1]) for k, v in kwargs.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**one)
    return int(counter.get_total_flops())


def time_model(model, kwargs: dict, batch: int, device, seconds: float) -> float:
    """Denoiser evaluations per second on one batch of ``batch`` inputs."""
    with torch.no_grad():
        for _ in range(3):  # warm-up (and compilation)
            model(**kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 3:
            model(**kwargs)
            n += 1
            if device.type == "cuda" and n % 5 == 0:
                torch.cuda.synchronize()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return n * batch / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/gpu-throughput")
    parser.add_argument("--batch-sizes", default="8,16,32,64,128")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--compile", default="off,on", help="off, on, or off,on")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per configuration")
    parser.add_argument("--arch", default="sd2-base,sdxl-base,sd3-medium", help=f"comma-separated, from {', '.join(ARCHS)}")
    add_gpu_flags(parser, "tiny denoisers of the same kinds, to smoke-test this script")
    args = parser.parse_args()
    device = gpu_device(parser, args, "gpu-throughput")
    if device is None:
        return 0
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_for(name) if device.type == "cuda" else None
    rows, params = [], {}
    for arch in args.arch.split(","):
        if arch not in ARCHS:
            parser.error(f"--arch {arch!r}: choose from {', '.join(ARCHS)}")
        torch.manual_seed(0)
        base, config = build(arch, args.tiny, device)
        params[arch] = sum(p.numel() for p in base.parameters())
        if arch == "sd2-base" and not args.tiny:  # built to record their sizes and to show the whole model builds offline
            params["sd2-base text_encoder"] = sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(**SD2_BASE_TEXT)).parameters())
            params["sd2-base vae"] = sum(p.numel() for p in AutoencoderKL(**SD2_BASE_VAE).parameters())
        for dtype_name in args.dtypes.split(","):
            dtype = dtypes[dtype_name]
            model = base.to(device=device, dtype=dtype)
            if ARCHS[arch][0] == "unet":
                model = model.to(memory_format=torch.channels_last)
            flops = flops_per_eval(model, inputs(arch, config, 1, dtype, device))
            for compiled in args.compile.split(","):
                runner = torch.compile(model) if compiled == "on" else model
                for batch in map(int, args.batch_sizes.split(",")):
                    try:
                        evals = time_model(runner, inputs(arch, config, batch, dtype, device), batch, device, args.seconds)
                    except torch.OutOfMemoryError:
                        print(f"{arch} {dtype_name} compile={compiled} batch={batch}: out of memory")
                        torch.cuda.empty_cache()
                        continue
                    tflops = flops * evals / 1e12
                    row = dict(
                        arch=arch,
                        dtype=dtype_name,
                        compile=compiled,
                        batch_size=batch,
                        evals_per_s=evals,
                        gflops_per_eval=flops / 1e9,
                        achieved_tflops=tflops,
                        fraction_of_peak=(tflops / peak) if peak else None,
                        latents=f"{config['in_channels']}x{config['sample_size']}x{config['sample_size']}",
                    )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        base.to("cpu")
        del base, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=name,
        peak_dense_tflops=peak,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        model=("random-weight denoisers of " + args.arch) if not args.tiny else "tiny denoisers (smoke test)",
        parameters=params,
        seconds_per_config=args.seconds,
        python=sys.version.split()[0],
    )
    (out / "gpu_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# GPU throughput: {meta['model']} on {name}",
        "",
        f"Peak (dense fp16/bf16): {peak or 'unknown'} TFLOP/s; torch {torch.__version__}.",
        "",
        "| arch | latents | dtype | compile | batch | evals/s | GFLOP/eval | TFLOP/s | % of peak |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pct = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] else "–"
        lines.append(
            f"| {r['arch']} | {r['latents']} | {r['dtype']} | {r['compile']} | {r['batch_size']} | {r['evals_per_s']:.1f} | {r['gflops_per_eval']:.1f} | {r['achieved_tflops']:.1f} | {pct} |"
        )
    (out / "gpu_throughput.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu_throughput.json'} and {out / 'gpu_throughput.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
