"""A run's counters (images, evaluations, seconds, as spent and as computed now) and its progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffcls_plugin import distributed


@dataclass
class RunStats:
    """What a classifier's results cost.

    ``n_images`` ... ``stop_reasons`` are the cost of the results as each image's outcome was
    originally computed (images from the resume store included); the ``_computed`` counters are
    what was computed this time, by every rank.
    """

    n_images: int = 0
    n_unet_evals: int = 0
    n_sampler_evals: int = 0
    seconds: float = 0.0
    n_images_computed: int = 0
    n_unet_evals_computed: int = 0
    seconds_computed: float = 0.0
    images_per_rank: list[int] = field(default_factory=list)
    stop_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, results, outcomes, n_computed: int, unet_evals_computed: int, seconds: float, shares: list[int]) -> None:
        """Count one batch: its results and outcomes, what was computed, and each rank's share."""
        self.n_images += len(results)
        self.n_unet_evals += sum(o.n_unet_evals for o in outcomes)
        self.n_sampler_evals += sum(r.n_evals for r in results)
        self.seconds += sum(o.seconds for o in outcomes)
        for r in results:
            self.stop_reasons[r.stop_reason] = self.stop_reasons.get(r.stop_reason, 0) + 1
        self.n_images_computed += n_computed
        self.n_unet_evals_computed += unet_evals_computed
        self.seconds_computed += seconds
        if len(self.images_per_rank) == len(shares):
            self.images_per_rank = [a + b for a, b in zip(self.images_per_rank, shares)]
        else:
            self.images_per_rank = list(shares)

    def cost_block(self) -> dict[str, Any]:
        """The cost part of a result's ``diffcls`` block."""
        n = max(self.n_images, 1)
        return {
            "n_images": self.n_images,
            # the cost of the result, as each image's outcome was originally computed
            "unet_evals_per_image": self.n_unet_evals / n,
            "sampler_evals_per_image": self.n_sampler_evals / n,
            "seconds_per_image": self.seconds / n,
            "stop_reasons": dict(sorted(self.stop_reasons.items())),
            # what this process computed (the rest came from the resume store)
            "computed": {
                "n_images": self.n_images_computed,
                "n_images_from_store": self.n_images - self.n_images_computed,
                "unet_evals": self.n_unet_evals_computed,
                "seconds": self.seconds_computed,
            },
            "distributed": {"world_size": max(1, len(self.images_per_rank)), "images_per_rank": list(self.images_per_rank) or [0]},
        }


class ProgressBar:
    """A tqdm bar on rank 0: images done, UNet evaluations per second, evaluations per image."""

    def __init__(self, description: str, total: int | None, enabled: bool = True) -> None:
        self.description, self.total, self.enabled = description, total, enabled
        self._bar = None

    def update(self, n_images: int, stats: RunStats, with_store: bool) -> None:
        if not self.enabled or distributed.world()[0] != 0:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.description, unit="img", leave=True)
        self._bar.update(n_images)
        postfix = {
            "unet_evals_per_s": f"{stats.n_unet_evals_computed / max(stats.seconds_computed, 1e-9):.1f}",
            "evals_per_img": f"{stats.n_unet_evals / max(stats.n_images, 1):.1f}",
        }
        if with_store:
            postfix["from_store"] = stats.n_images - stats.n_images_computed
        self._bar.set_postfix(postfix)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
