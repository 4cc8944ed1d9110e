"""A run's counters: images, evaluations, seconds, as spent and as computed now (its progress display: :mod:`.progress`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffcls_plugin.calls import CallLog


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
    unet_evals_by_image: list[int] = field(default_factory=list)  # as spent, in the order the images came
    calls: CallLog = field(default_factory=CallLog)  # the denoiser's forward passes computed now

    def add(self, results, outcomes, n_computed: int, unet_evals_computed: int, seconds: float, shares: list[int], calls: CallLog | None = None) -> None:
        """Count one batch: its results and outcomes, what was computed, each rank's share, and
        the denoiser's forward passes."""
        self.n_images += len(results)
        self.n_unet_evals += sum(o.n_unet_evals for o in outcomes)
        self.unet_evals_by_image.extend(int(o.n_unet_evals) for o in outcomes)
        self.n_sampler_evals += sum(r.n_evals for r in results)
        self.seconds += sum(o.seconds for o in outcomes)
        for r in results:
            self.stop_reasons[r.stop_reason] = self.stop_reasons.get(r.stop_reason, 0) + 1
        self.n_images_computed += n_computed
        self.n_unet_evals_computed += unet_evals_computed
        self.seconds_computed += seconds
        if calls is not None:
            self.calls.merge(calls)
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
            # each image's evaluations (the distribution behind the mean; diffcls plot draws it)
            "unet_evals_by_image": list(self.unet_evals_by_image),
            "stop_reasons": dict(sorted(self.stop_reasons.items())),
            # what this process computed (the rest came from the resume store)
            "computed": {
                "n_images": self.n_images_computed,
                "n_images_from_store": self.n_images - self.n_images_computed,
                "unet_evals": self.n_unet_evals_computed,
                "seconds": self.seconds_computed,
            },
            # the forward passes computed now, per round and by size (bench/gpu_simulate.py turns them into GPU time)
            "denoiser_calls": self.calls.to_dict(),
            "distributed": {"world_size": max(1, len(self.images_per_rank)), "images_per_rank": list(self.images_per_rank) or [0]},
        }
