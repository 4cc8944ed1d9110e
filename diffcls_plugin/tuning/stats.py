"""Paired statistics of two configurations' per-image correctness on the same images.

Correctness is a sequence of booleans, one per image, or a string of ``"1"`` (right) and ``"0"``
(wrong), as records store it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from diffcls_plugin.errors import DiffclsError

Correctness = Sequence[bool] | str


def as_correct(correct: Correctness) -> tuple[bool, ...]:
    """Per-image correctness as booleans.

    Args:
        correct: (n_images,) booleans, or a string of ``"0"``/``"1"``.

    Raises:
        DiffclsError: a string with other characters.
    """
    if isinstance(correct, str):
        if not set(correct) <= {"0", "1"}:
            raise DiffclsError(f"a correctness string holds only '0' (wrong) and '1' (right), got {sorted(set(correct) - {'0', '1'})}")
        return tuple(c == "1" for c in correct)
    return tuple(bool(c) for c in correct)


def discordant(a: Correctness, b: Correctness) -> tuple[int, int]:
    """The images on which two paired configurations part.

    Args:
        a, b: (n_images,) correctness of each on the same images, in the same order.

    Returns:
        ``(n_a, n_b)``: images only ``a`` gets right, images only ``b`` gets right.

    Raises:
        DiffclsError: correctness of different lengths (not the same images).
    """
    a, b = as_correct(a), as_correct(b)
    if len(a) != len(b):
        raise DiffclsError(f"paired correctness must cover the same images; got {len(a)} and {len(b)} images")
    return sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b))


def paired_se(gap: float, n_discordant: int, n_images: int) -> float:
    """Standard error of a paired accuracy gap.

    The per-image difference ``d_i = a_i - b_i`` is -1, 0 or 1; its mean is the gap and its
    (population) variance ``n_discordant / n - gap^2``, so the mean's standard error is
    ``sqrt((n_discordant / n - gap^2) / n)``. It grows with every image on which the two part.

    Args:
        gap: ``accuracy(a) - accuracy(b)`` on the images (a fraction).
        n_discordant: images on which exactly one of them is right.
        n_images: images compared, > 0.

    Returns:
        the standard error, a fraction (0 when they never part).
    """
    return math.sqrt(max(0.0, n_discordant / n_images - gap * gap) / n_images)


def paired_gap(a: Correctness, b: Correctness) -> tuple[float, float]:
    """Accuracy gap of ``a`` over ``b`` on the same images, and its standard error (:func:`paired_se`).

    Returns:
        ``(gap, se)``: ``gap = accuracy(a) - accuracy(b)`` (a fraction; positive: ``a`` is ahead).
    """
    a, b = as_correct(a), as_correct(b)
    n_a, n_b = discordant(a, b)
    gap = sum(a) / len(a) - sum(b) / len(b)
    return gap, paired_se(gap, n_a + n_b, len(a))


def mcnemar_p(a: Correctness, b: Correctness) -> float:
    """Exact two-sided McNemar p-value of two paired configurations' correctness.

    The images on which they part are a fair coin's tosses under the null hypothesis (neither is
    better): ``p`` is the two-sided binomial test of ``n_b`` successes in ``n_a + n_b`` tosses.
    Smaller means the difference is less likely to be luck; 1 when they never part.
    """
    from scipy.stats import binomtest

    n_a, n_b = discordant(a, b)
    return 1.0 if n_a + n_b == 0 else float(binomtest(n_b, n_a + n_b, 0.5).pvalue)


def wilson_interval(n_right: int, n_images: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an accuracy (95 % for ``z = 1.96``).

    Args:
        n_right: images right.
        n_images: images, > 0.

    Returns:
        ``(low, high)``, fractions in [0, 1].
    """
    if n_images <= 0:
        raise DiffclsError(f"an accuracy interval needs at least one image, got {n_images}")
    p = n_right / n_images
    centre = (p + z * z / (2 * n_images)) / (1 + z * z / n_images)
    half = z * math.sqrt(p * (1 - p) / n_images + z * z / (4 * n_images * n_images)) / (1 + z * z / n_images)
    return max(0.0, centre - half), min(1.0, centre + half)
