"""Deterministic, stratified subsets of a dataset: the same images on every machine."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from diffcls_plugin.errors import DiffclsError


@dataclass(frozen=True)
class SubsetSpec:
    """``per_class`` images of every class, or ``total`` images spread over the classes in
    proportion to their sizes (largest remainders), chosen with ``seed``.

    Attributes:
        per_class: images per class (all of a class when it has fewer).
        total: total images (exclusive with ``per_class``).
        seed: the selection seed (independent of the run seed).
    """

    per_class: int | None = None
    total: int | None = None
    seed: int = 0

    def validate(self, where: str = "subset") -> None:
        if (self.per_class is None) == (self.total is None):
            raise DiffclsError(f"{where}: give exactly one of per_class or total")
        for key in ("per_class", "total"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DiffclsError(f"{where}.{key} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DiffclsError(f"{where}.seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select(labels: Sequence[int], spec: SubsetSpec) -> np.ndarray:
    """Indices of the subset, ascending (the dataset's own order).

    Within each class the images are shuffled with ``numpy.random.default_rng([seed, class])``
    and the first ones are taken, so adding classes or images elsewhere does not change a class's
    choice.

    Args:
        labels: (N,) integer class of every image.
        spec: the subset.

    Returns:
        (n,) int64 indices into ``labels``.
    """
    spec.validate()
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    if spec.per_class is not None:
        quota = {c: min(spec.per_class, len(members[c])) for c in classes}
    else:
        total = min(spec.total, len(labels))
        exact = {c: total * len(members[c]) / len(labels) for c in classes}
        quota = {c: int(np.floor(exact[c])) for c in classes}
        short = total - sum(quota.values())
        for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[:short]:
            quota[c] += 1
    chosen = []
    for c in classes:
        rng = np.random.default_rng([spec.seed, int(c)])
        chosen.append(rng.permutation(members[c])[: quota[c]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def fingerprint(indices: np.ndarray) -> str:
    """A short hash of the chosen indices, recorded with results to show which images ran."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
