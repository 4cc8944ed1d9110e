"""The denoiser calls of a scorer: how one round's UNet inputs are cut into forward passes, the
fixed sizes a compiled denoiser is padded to, and the record of every call a run made.

A round is one call of the batch scorer (every unfinished image's request of that round, see
:func:`~diffcls_plugin.samplers.run_samplers`); it is cut into forward passes by :func:`split`.
A compiled denoiser sees only the sizes of :func:`buckets`: each pass is padded up to the next
one (:func:`padded`), so ``torch.compile`` builds one graph per bucket and never recompiles as
a pruning sampler's rounds shrink (CUDA graphs need fixed shapes too). :class:`CallLog` counts
the passes, per round and by size, for the ``denoiser_calls`` block of a result and for
``bench/gpu_simulate.py``, which turns it into GPU seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def split(n_inputs: int, batch_size: int) -> list[int]:
    """The forward passes of a round of ``n_inputs`` UNet inputs: equal chunks of at most
    ``batch_size`` (640 at 256 -> 214, 213, 213, not 256, 256, 128), so no pass is a small
    leftover. Sizes sum to ``n_inputs``, largest first."""
    if n_inputs <= 0:
        return []
    n_calls = math.ceil(n_inputs / batch_size)
    base, extra = divmod(n_inputs, n_calls)
    return [base + 1] * extra + [base] * (n_calls - extra)


def buckets(batch_size: int) -> tuple[int, ...]:
    """The pass sizes of a compiled denoiser at UNet batch ``batch_size``: the multiples of an
    eighth of it, and the powers of two below that eighth (64 -> 1, 2, 4, 8, 16, 24, ..., 56, 64;
    256 -> 1, 2, 4, 8, 16, 32, 64, 96, ..., 256). At most about ``log2(batch_size / 8) + 9``
    graphs to compile; on the proxy suite's passes the padding costs 0-4 % of the denoiser's time
    at harness batches of 16 to 256, where powers of two alone cost up to 23 %
    (``bench/results/gpu-simulate/``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    step = max(1, batch_size // 8)
    sizes = {1 << k for k in range(step.bit_length()) if 1 << k < step}
    sizes |= {step * j for j in range(1, 9)} | {batch_size}
    return tuple(sorted(s for s in sizes if s <= batch_size))


def padded(size: int, sizes: Sequence[int] | None) -> int:
    """The size a pass of ``size`` inputs runs at: the smallest of ``sizes`` that holds it
    (``size`` itself without buckets, or when it is larger than every bucket)."""
    if not sizes:
        return size
    return min((s for s in sizes if s >= size), default=size)


class CallLog:
    """Every forward pass of the denoiser in a run: per round, how many passes of each size.

    ``rounds[r][size]`` counts the passes of ``size`` inputs in round ``r`` of a batch (rounds
    are numbered from 0 in each harness batch, so round 0 is every batch's first round);
    ``padded_inputs`` counts the inputs as run, padding included.
    """

    def __init__(self) -> None:
        self.rounds: dict[int, Counter[int]] = {}
        self.padded_inputs = 0

    def add(self, round_idx: int, size: int, run_size: int | None = None) -> None:
        """One pass of ``size`` real inputs in round ``round_idx``, run at ``run_size`` (padded)."""
        self.rounds.setdefault(round_idx, Counter())[size] += 1
        self.padded_inputs += size if run_size is None else run_size

    def merge(self, other: CallLog) -> None:
        for r, sizes in other.rounds.items():
            self.rounds.setdefault(r, Counter()).update(sizes)
        self.padded_inputs += other.padded_inputs

    def by_size(self) -> Counter[int]:
        """Passes of each size over all rounds."""
        total: Counter[int] = Counter()
        for sizes in self.rounds.values():
            total.update(sizes)
        return total

    @property
    def n_calls(self) -> int:
        return sum(self.by_size().values())

    @property
    def n_inputs(self) -> int:
        """Real UNet inputs (evaluations), padding excluded."""
        return sum(size * n for size, n in self.by_size().items())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (string keys, ascending sizes and rounds)."""
        n_calls, n_inputs = self.n_calls, self.n_inputs
        return {
            "calls": n_calls,
            "inputs": n_inputs,
            "padded_inputs": self.padded_inputs,
            "mean_batch": n_inputs / n_calls if n_calls else 0.0,
            "by_size": _sizes_json(self.by_size()),
            "by_round": {str(r): _sizes_json(self.rounds[r]) for r in sorted(self.rounds)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallLog:
        log = cls()
        for r, sizes in data.get("by_round", {}).items():
            log.rounds[int(r)] = Counter({int(size): int(n) for size, n in sizes.items()})
        log.padded_inputs = int(data.get("padded_inputs", log.n_inputs))
        return log


def _sizes_json(sizes: Mapping[int, int]) -> dict[str, int]:
    return {str(size): int(sizes[size]) for size in sorted(sizes)}
