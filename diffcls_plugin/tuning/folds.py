"""Stratified K-fold splits of labelled images, for checking a choice on images it was not made on."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from diffcls_plugin.errors import DiffclsError


class Fold(NamedTuple):
    """One fold: choose on ``train``, read the choice on ``held_out`` (image indices, ascending)."""

    train: tuple[int, ...]
    held_out: tuple[int, ...]


def folds(labels: Sequence[int], k: int, seed: int = 0) -> list[Fold]:
    """Split the images into ``k`` folds, each class spread as evenly as it can be.

    Each class's images are shuffled (``random.Random(seed)``) and dealt round the folds, the deal
    going on from class to class, so fold sizes differ by at most one image and each class's
    count by at most one between folds.

    Args:
        labels: (n_images,) each image's class.
        k: folds, between 2 and the number of images.
        seed: the shuffle's seed (the same seed, the same folds).

    Returns:
        ``k`` folds; their ``held_out`` parts partition the images.

    Raises:
        DiffclsError: ``k`` out of range.
    """
    n = len(labels)
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n:
        raise DiffclsError(f"K-fold needs k between 2 and the number of images ({n}), got {k!r}: lower k or label more images")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    held_out: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for y in sorted(by_class):
        images = by_class[y]
        rng.shuffle(images)
        for i in images:
            held_out[dealt % k].append(i)
            dealt += 1
    everything = range(n)
    out = []
    for part in held_out:
        chosen = set(part)
        out.append(Fold(tuple(i for i in everything if i not in chosen), tuple(sorted(part))))
    return out
