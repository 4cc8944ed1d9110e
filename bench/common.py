"""Shared pieces of the benchmark scripts: the embedded model, its splits, the environment record."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from diffcls_plugin.classifier import DiffusionClassifier, load_classifier, package_versions
from diffcls_plugin.config import load_config
from diffcls_plugin.data.digits import CLASSNAMES, TEMPLATES, load_split

RESULTS = Path(__file__).parent / "results"


def tiny_digits(model_name: str = "diffusion-baseline", overrides: tuple[str, ...] = (), seed: int = 0) -> DiffusionClassifier:
    """The embedded model, prepared with the digits' classes (first template, as the demo)."""
    model = load_classifier(model_name, "tiny-digits", config=load_config(None, ["unet_batch_size=256", "resume=false", *overrides]), seed=seed, progress=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    return model


def split_pixels(model: DiffusionClassifier, split: str) -> tuple[torch.Tensor, list[int]]:
    images, labels = load_split(split)
    return torch.stack([model.transform(img) for img in images]), [int(y) for y in labels]


def environment() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


def write(out: Path, name: str, data: dict, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(f"wrote {out / (name + '.json')} and {out / (name + '.md')}")


def add_gpu_flags(parser, tiny_help: str) -> None:
    """The GPU benchmarks' smoke-test flags: ``--tiny`` (small models) and ``--allow-cpu``."""
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (only with --tiny; numbers mean nothing)")


def gpu_device(parser, args, name: str) -> torch.device | None:
    """CUDA when present; the CPU only for a ``--tiny --allow-cpu`` smoke test; ``None``: nothing to run."""
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"{name}: no CUDA device here; nothing to measure (run it on a machine with a GPU).")
        return None
    if args.allow_cpu and not args.tiny:
        parser.error("--allow-cpu needs --tiny: the full-size models on a CPU would take hours")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
