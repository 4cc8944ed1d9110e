"""Shared pieces of the benchmark scripts: the embedded model, its splits, cached scoring."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from diffcls_plugin.config import load_config
from diffcls_plugin.digits import CLASSNAMES, TEMPLATES, load_split
from diffcls_plugin.model import DiffusionClassifier, load_classifier, package_versions
from diffcls_plugin.samplers import SamplerResult, run_samplers

RESULTS = Path(__file__).parent / "results"


def tiny_digits(model_name: str = "diffusion-baseline", overrides: tuple[str, ...] = (), seed: int = 0) -> DiffusionClassifier:
    """The embedded model, prepared with the digits' classes (first template, as the demo)."""
    model = load_classifier(model_name, "tiny-digits", config=load_config(None, ["unet_batch_size=256", *overrides]), seed=seed, progress=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    return model


def split_pixels(model: DiffusionClassifier, split: str) -> tuple[torch.Tensor, list[int]]:
    images, labels = load_split(split)
    return torch.stack([model.transform(img) for img in images]), [int(y) for y in labels]


class CachedScorer:
    """Every (image, class, timestep, noise) error computed once, then shared by every sampler run.

    Samplers still count their own distinct evaluations (``SamplerResult.n_evals``): the cache
    only saves this benchmark from recomputing what another configuration already asked for.
    """

    def __init__(self, model: DiffusionClassifier, pixels: torch.Tensor) -> None:
        self.inner = model.scorer(pixels)
        self.cache: dict[tuple[int, int, int, int], float] = {}
        self.computed = 0

    def __call__(self, image_idx, class_idx, timesteps, noise_idx):
        keys = list(zip(image_idx, class_idx, timesteps, noise_idx))
        missing = [k for k in dict.fromkeys(keys) if k not in self.cache]
        if missing:
            errors = self.inner(*zip(*missing))
            self.cache.update(zip(missing, errors))
            self.computed += len(missing)
        return [self.cache[k] for k in keys]


def evaluate(model: DiffusionClassifier, sampler: str, options, scorer, labels) -> dict:
    """Accuracy and mean evaluations of one sampler configuration over the scorer's images."""
    from diffcls_plugin.samplers import SAMPLERS

    spec = SAMPLERS.get(sampler)
    options.validate(model.adapter.num_train_timesteps)
    results: list[SamplerResult] = run_samplers(
        [spec.fn(len(CLASSNAMES), options, model.adapter.num_train_timesteps) for _ in labels], scorer
    )
    correct = [r.prediction == y for r, y in zip(results, labels)]
    return {
        "sampler": sampler,
        "options": options.to_dict(),
        "top1": sum(correct) / len(correct),
        "evals_per_image": sum(r.n_evals for r in results) / len(results),
        "n_images": len(results),
    }


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
