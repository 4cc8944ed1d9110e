"""What a run will cost, said before it is spent: images, classes, UNet evaluations and a time.

- **Evaluations per image** come from the sampler itself, run against two planted scorers: a clear
  image (one class far below the rest) and an ambiguous one (every class ties). A fixed schedule
  (baseline, adaptive, hierarchical) spends the same on both, so its count is exact; the t-test
  and the race spend by difficulty, so theirs is the range between the two.
- **The rate** (UNet evaluations per second, end to end) is the one measured on this device for
  this checkpoint, dtype and image size by an earlier run (kept in ``$DIFFCLS_CACHE/rates.json``),
  else, on a GPU, the committed H200 table of docs/performance.md for the checkpoint's family,
  marked as an estimate; a CPU without a measurement gets no time.
- A full-size checkpoint on a CPU is said to need a GPU in practice, and a run estimated above an
  hour says how to evaluate a subset first.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.samplers import SAMPLERS, classify

RATES_FILE = "rates.json"
# end-to-end baseline-32 UNet evaluations per second on one H200, bf16, harness batches of 64
# (docs/performance.md, "GPU timings"): an estimate for other GPUs, image sizes and samplers
GPU_RATES = {"sd": (302.0, "SD 2 base"), "sdxl": (53.0, "SDXL base"), "sd3": (40.0, "SD3 medium")}
# (images, classes) of common harness datasets' test splits: the cost of a run whose data is not here yet
KNOWN_TEST_SPLITS = {
    "cifar10": (10_000, 10),
    "cifar100": (10_000, 100),
    "mnist": (10_000, 10),
    "stl10": (8_000, 10),
    "imagenet1k": (50_000, 1000),
    "imagenetv2": (10_000, 1000),
    "imagenet_sketch": (50_889, 1000),
    "imagenet-a": (7_500, 200),
    "imagenet-r": (30_000, 200),
    "food101": (25_250, 101),
    "gtsrb": (12_630, 43),
    "fgvc_aircraft": (3_333, 100),
    "cars": (8_041, 196),
    "dtd": (1_880, 47),
    "pets": (3_669, 37),
    "flowers": (6_149, 102),
}
FULL_SIZE_BYTES = 100_000_000  # a denoiser above this is a real checkpoint (the tiny test models are a few MB)
LONG_RUN_SECONDS = 3600.0
MIN_MEASURED_SECONDS = 1.0  # shorter runs do not record a rate
MAX_RATES = 100  # rates kept (devices x checkpoints x dtypes x sizes)


@dataclass(frozen=True)
class Cost:
    """A run's planned cost.

    Attributes:
        n_images, n_classes: what it classifies (``n_images`` is ``None`` when the dataset cannot
            be counted without reading it, e.g. a remote webdataset).
        evals_low, evals_high: UNet evaluations per image on a clear and on an ambiguous image
            (equal for a fixed schedule).
        rate: UNet evaluations per second, or ``None`` when none is known; ``rate_source`` says
            where it comes from.
        gpu_needed: a full-size checkpoint on a CPU.
    """

    model: str
    dataset: str
    n_images: int | None
    n_classes: int
    evals_low: int
    evals_high: int
    rate: float | None = None
    rate_source: str = ""
    gpu_needed: bool = False

    @property
    def exact(self) -> bool:
        return self.evals_low == self.evals_high

    def seconds(self) -> tuple[float, float] | None:
        if self.rate is None or self.n_images is None:
            return None
        return self.n_images * self.evals_low / self.rate, self.n_images * self.evals_high / self.rate

    def line(self) -> str:
        """The one line printed before the first UNet evaluation."""
        images = "? images" if self.n_images is None else f"{self.n_images:,} images"
        if self.exact:
            per_image = f"{self.evals_low:,} UNet evaluations per image (fixed schedule)"
        else:
            per_image = f"{self.evals_low:,} to {self.evals_high:,} UNet evaluations per image (clear to ambiguous images)"
        text = f"cost: {self.model} on {self.dataset}: {images} x {self.n_classes} classes, {per_image}"
        if self.n_images is not None:
            low, high = self.n_images * self.evals_low, self.n_images * self.evals_high
            text += f", {low:,} in all" if low == high else f", {low:,} to {high:,} in all"
        spans = self.seconds()
        if spans is not None:
            span = duration(spans[0]) if self.exact else f"{duration(spans[0])} to {duration(spans[1])}"
            text += f"; about {span} at {self.rate:,.1f} evaluations/s ({self.rate_source})"
        elif self.rate is None:
            text += "; no time estimate (no rate measured on this device yet)"
        if self.gpu_needed:
            text += "; this is a full-size checkpoint on a CPU, where a UNet evaluation takes seconds: a GPU is needed in practice"
        if self.gpu_needed or (spans is not None and spans[1] > LONG_RUN_SECONDS):
            text += "; for a first look, `diffcls eval --subset-per-class 5 ...` evaluates 5 images per class"
        return text


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@lru_cache(maxsize=256)
def evals_per_image(sampler: str, options, n_classes: int, num_train_timesteps: int = 1000) -> tuple[int, int]:
    """UNet evaluations the sampler spends on a clear image and on an ambiguous one (its own code
    run against planted errors; equal for a fixed schedule)."""
    spec = SAMPLERS.get(sampler)

    def clear(classes, timesteps, noises):  # class 0 far below the rest
        return [0.0 if c == 0 else 1.0 + 0.01 * math.sin(7 * t + n) for c, t, n in zip(classes, timesteps, noises)]

    def ambiguous(classes, timesteps, noises):  # every class ties at every (timestep, noise)
        return [1.0 + 0.01 * math.sin(7 * t + n) for _, t, n in zip(classes, timesteps, noises)]

    counts = [classify(spec.fn(n_classes, options, num_train_timesteps), scorer).n_evals for scorer in (clear, ambiguous)]
    return min(counts), max(counts)


def plan(
    model: str,
    dataset: str,
    sampler: str,
    config: DiffclsConfig,
    n_classes: int,
    n_images: int | None,
    *,
    checkpoint=None,
    family: str = "sd",
    device: str = "cpu",
    num_train_timesteps: int | None = None,
) -> Cost:
    """The planned cost of classifying ``n_images`` images over ``n_classes`` classes."""
    k = n_classes if config.prefilter is None else min(config.prefilter.top_k, n_classes)
    low, high = evals_per_image(sampler, config.sampler_options(sampler), k, num_train_timesteps or 1000)
    rate, source = known_rate(rate_key(checkpoint, config, device)), ""
    if rate is not None:
        rate, source = rate
    elif device_kind(device) == "cuda" and family in GPU_RATES:
        rate, name = GPU_RATES[family]
        source = f"estimate: {name} on one H200, bf16, from the plugin's GPU table"
    full_size = checkpoint is None or denoiser_bytes(checkpoint) >= FULL_SIZE_BYTES
    return Cost(model, dataset, n_images, n_classes, low, high, rate, source, gpu_needed=device_kind(device) == "cpu" and full_size and rate is None)


def device_kind(device: str | None) -> str:
    """``cuda`` when the run computes on a GPU (``--device cuda`` and one is present), else ``cpu``."""
    import torch

    return "cuda" if str(device or "cuda").startswith("cuda") and torch.cuda.is_available() else "cpu"


def device_name(device: str | None) -> str:
    import torch

    if device_kind(device) == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return f"cpu-{os.cpu_count()}"


def denoiser_bytes(checkpoint) -> int:
    """Bytes of a local checkpoint's denoiser weights (``unet/`` or ``transformer/``); a hub or zoo
    checkpoint counts as full-size."""
    if not getattr(checkpoint, "is_local", False):
        return FULL_SIZE_BYTES
    root = Path(checkpoint.source)
    total = 0
    for part in ("unet", "transformer"):
        for path in (root / part).glob("*"):
            if path.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth"):
                total += path.stat().st_size
    return total


def rate_key(checkpoint, config: DiffclsConfig, device: str | None) -> str:
    """What a measured rate depends on: the device, the checkpoint, dtype, image size and UNet batch."""
    source = getattr(checkpoint, "source", None) or "default"
    return f"{device_name(device)}|{source}|{config.dtype}|{config.image_size or 'native'}|{config.unet_batch_size}"


def rates_path() -> Path:
    from diffcls_plugin.store import cache_dir

    return cache_dir() / RATES_FILE


def known_rate(key: str) -> tuple[float, str] | None:
    """The rate an earlier run measured for ``key``, with where it came from."""
    try:
        entry = json.loads(rates_path().read_text()).get(key)
        rate = float(entry["unet_evals_per_s"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not math.isfinite(rate) or rate <= 0:
        return None
    return rate, f"measured on this device on {entry.get('date', '?')}"


def record_rate(key: str, unet_evals: int, seconds: float) -> None:
    """Keep the rate a run measured (runs under :data:`MIN_MEASURED_SECONDS` of compute are too
    short to say much); a cache folder that cannot be written is skipped without a word."""
    if seconds < MIN_MEASURED_SECONDS or unet_evals <= 0:
        return
    from diffcls_plugin.jsonio import write_json_atomic

    path = rates_path()
    try:
        rates: Any = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: start afresh
        rates = {}
    if not isinstance(rates, dict):
        rates = {}
    try:
        rates.pop(key, None)
        rates[key] = {"unet_evals_per_s": round(unet_evals / seconds, 3), "date": time.strftime("%Y-%m-%d")}
        rates = dict(list(rates.items())[-MAX_RATES:])  # the latest ones
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, rates, indent=1)
    except (OSError, ValueError):
        return
