"""GPU throughput of the Stable Diffusion 2 base UNet (random weights, published configs).

UNet evaluations per second over a sweep of batch sizes in fp16 and bf16, with and without
``torch.compile``; FLOPs per evaluation counted with ``torch.utils.flop_counter``; achieved
TFLOP/s against the device's dense fp16/bf16 peak. No download: the UNet, text encoder and VAE
are built from SD 2 base's published configs with random weights (the speed of a network does
not depend on its weights), at 512 px (64x64 latents).

Runs only where CUDA exists; elsewhere it says so and exits 0.

    python bench/gpu_throughput.py --out bench/results/gpu-throughput
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

# Stable Diffusion 2 base (stabilityai/stable-diffusion-2-base), unet/config.json
SD2_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
# text_encoder/config.json (OpenCLIP ViT-H/14 text tower, penultimate layer: 23 layers)
SD2_BASE_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)
# vae/config.json
SD2_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_UNET = dict(SD2_BASE_UNET, sample_size=8, block_out_channels=(32, 32, 64, 64), attention_head_dim=(2, 2, 4, 4), cross_attention_dim=32, norm_num_groups=8)

# dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets
PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 3090": 71.0, "RTX 4090": 165.2}


def peak_for(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def flops_per_eval(unet, latents, timesteps, embeds) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(latents[:1], timesteps[:1], encoder_hidden_states=embeds[:1])
    return int(counter.get_total_flops())


def time_unet(unet, batch: int, dtype, device, latent_side: int, cross_dim: int, seconds: float) -> float:
    latents = torch.randn(batch, 4, latent_side, latent_side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    embeds = torch.randn(batch, 77, cross_dim, device=device, dtype=dtype)
    with torch.no_grad():
        for _ in range(3):  # warm-up (and compilation)
            unet(latents, timesteps, encoder_hidden_states=embeds)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 3:
            unet(latents, timesteps, encoder_hidden_states=embeds)
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
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet, to smoke-test this script")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (only with --tiny; numbers mean nothing)")
    args = parser.parse_args()

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-throughput: no CUDA device here; nothing to measure (run it on a machine with a GPU).")
        return 0
    if args.allow_cpu and not args.tiny:
        parser.error("--allow-cpu needs --tiny: the full SD 2 base sweep on a CPU would take hours")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    unet_config = TINY_UNET if args.tiny else SD2_BASE_UNET
    base_unet = UNet2DConditionModel(**unet_config).eval()
    base_unet.set_attn_processor(AttnProcessor2_0())
    params = {"unet": sum(p.numel() for p in base_unet.parameters())}
    if not args.tiny:  # built to record their sizes and to show the whole model builds offline
        params["text_encoder"] = sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(**SD2_BASE_TEXT)).parameters())
        params["vae"] = sum(p.numel() for p in AutoencoderKL(**SD2_BASE_VAE).parameters())
    side = unet_config["sample_size"]
    cross = unet_config["cross_attention_dim"]
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_for(name) if device.type == "cuda" else None

    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = dtypes[dtype_name]
        unet = base_unet.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        sample = torch.randn(1, 4, side, side, device=device, dtype=dtype)
        flops = flops_per_eval(unet, sample, torch.tensor([500], device=device), torch.randn(1, 77, cross, device=device, dtype=dtype))
        for compiled in args.compile.split(","):
            model = torch.compile(unet) if compiled == "on" else unet
            for batch in map(int, args.batch_sizes.split(",")):
                try:
                    evals = time_unet(model, batch, dtype, device, side, cross, args.seconds)
                except torch.OutOfMemoryError:
                    print(f"{dtype_name} compile={compiled} batch={batch}: out of memory")
                    torch.cuda.empty_cache()
                    continue
                tflops = flops * evals / 1e12
                row = dict(dtype=dtype_name, compile=compiled, batch_size=batch, unet_evals_per_s=evals,
                           gflops_per_eval=flops / 1e9, achieved_tflops=tflops,
                           fraction_of_peak=(tflops / peak) if peak else None)
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=name, peak_dense_tflops=peak, torch=torch.__version__, cuda=torch.version.cuda,
                model="SD 2 base UNet, random weights" if not args.tiny else "tiny UNet (smoke test)",
                latents=f"4x{side}x{side}", parameters=params, seconds_per_config=args.seconds, python=sys.version.split()[0])
    (out / "gpu_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# GPU throughput: {meta['model']} on {name}", "",
             f"Peak (dense fp16/bf16): {peak or 'unknown'} TFLOP/s; torch {torch.__version__}; {meta['latents']} latents.", "",
             "| dtype | compile | batch | UNet evals/s | GFLOP/eval | TFLOP/s | % of peak |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pct = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] else "–"
        lines.append(f"| {r['dtype']} | {r['compile']} | {r['batch_size']} | {r['unet_evals_per_s']:.1f} | {r['gflops_per_eval']:.1f} | {r['achieved_tflops']:.1f} | {pct} |")
    (out / "gpu_throughput.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu_throughput.json'} and {out / 'gpu_throughput.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
