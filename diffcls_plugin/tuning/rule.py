"""The choosing rule: the configuration closest to baseline-32 in the worst case, within a budget.

Per member (a pair's validation split, or a fold's training images) a configuration has a gap to
baseline-32 (its accuracy below the baseline's, a fraction; positive is a loss) and a cost ratio
(its evaluations per image over the baseline's). The rule takes, among the configurations whose
worst ratio over the members is within the budget, the one whose worst gap plus ``z`` standard
errors of that paired gap is smallest (ties: the lower mean ratio, then the key). The margin
charges a configuration for every image on which it parts from the baseline, so a gain must be
larger than its noise to count: without it, a configuration lucky on a few hundred images wins
(``bench/README.md`` tells how the margin was chosen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.tuning.stats import Correctness, discordant, paired_se

Z = 1.0  # the margin the shipped defaults were chosen with: one standard error of the paired gap
BUDGETS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)  # the budget ladder: fractions of baseline-32's evaluations
_SLACK = 1e-12  # a ratio this far above the budget is within it (floating-point slack)


class Scored(Protocol):
    """What the rule reads of a configuration on one member (an :class:`~diffcls_plugin.tuning.Outcome` has it).

    Attributes:
        correct: (n_images,) per-image correctness (booleans or a ``"0"``/``"1"`` string).
        top1: accuracy, a fraction (higher is better).
        evals_per_image: mean evaluations per image (lower is cheaper).
    """

    @property
    def correct(self) -> Correctness: ...

    @property
    def top1(self) -> float: ...

    @property
    def evals_per_image(self) -> float: ...


class Standing(NamedTuple):
    """A configuration's standing over the members.

    Attributes:
        worst_gap: the largest gap bound (:func:`gap_bound`) over the members (smaller is better).
        worst_ratio: the largest cost ratio to baseline-32 (what the budget bounds).
        mean_ratio: the mean cost ratio (the tie-break: smaller is better).
    """

    worst_gap: float
    worst_ratio: float
    mean_ratio: float


def ratio(row: Scored, base: Scored) -> float:
    """Evaluations per image of ``row`` over those of ``base`` (below 1 is cheaper)."""
    return row.evals_per_image / base.evals_per_image


def gap_bound(row: Scored, base: Scored, z: float) -> float:
    """The gap of ``row`` to ``base`` on one member, plus ``z`` standard errors of that paired gap.

    Args:
        row: a configuration on the member's images.
        base: baseline-32 on the same images, in the same order.
        z: standard errors to add (0: the plain gap).

    Returns:
        ``base.top1 - row.top1 + z * se`` (a fraction; positive is a loss, smaller is better),
        ``se`` the paired standard error (:func:`~diffcls_plugin.tuning.stats.paired_se`).
    """
    gap = base.top1 - row.top1
    if not z:
        return gap
    n_base, n_row = discordant(base.correct, row.correct)
    return gap + z * paired_se(gap, n_base + n_row, len(base.correct))


def standings(candidates: Mapping[str, Sequence[Scored]], baseline: Sequence[Scored], z: float = Z) -> dict[str, Standing]:
    """Every candidate's standing over the members.

    Args:
        candidates: ``{key: one result per member}``, the members in the order of ``baseline``.
        baseline: baseline-32's result on each member.
        z: the margin of each gap, in standard errors.

    Returns:
        ``{key: Standing}`` in the order of ``candidates``.

    Raises:
        DiffclsError: a candidate with results on another number of members than the baseline.
    """
    out = {}
    for k, rows in candidates.items():
        if len(rows) != len(baseline):
            raise DiffclsError(
                f"candidate {k!r} has results on {len(rows)} member(s) and baseline-32 on {len(baseline)}: give one per member, in the same order"
            )
        gaps = [gap_bound(r, b, z) for r, b in zip(rows, baseline)]
        ratios = [ratio(r, b) for r, b in zip(rows, baseline)]
        out[k] = Standing(max(gaps), max(ratios), sum(ratios) / len(ratios))
    return out


def choose(candidates: Mapping[str, Sequence[Scored]], baseline: Sequence[Scored], budget: float, z: float = Z, strict: bool = False) -> str | None:
    """The rule: the candidate with the smallest worst gap bound among those within the budget.

    Args:
        candidates: ``{key: one result per member}``, the members in the order of ``baseline``.
        baseline: baseline-32's result on each member.
        budget: the most a candidate may cost on every member, as a fraction of baseline-32's evaluations.
        z: standard errors added to each gap (:func:`gap_bound`); 0 trusts every gap as measured.
        strict: when no candidate is within the budget, ``None`` instead of the cheapest.

    Returns:
        the chosen key (ties: lower mean ratio, then the smaller key); if none is within the
        budget, the one of lowest mean ratio (``strict``: ``None``); ``None`` for no candidates.
    """
    scored = standings(candidates, baseline, z)
    within = [k for k, s in scored.items() if s.worst_ratio <= budget + _SLACK]
    if within:
        return min(within, key=lambda k: (round(scored[k].worst_gap, 12), scored[k].mean_ratio, k))
    if strict or not scored:
        return None
    return min(scored, key=lambda k: (scored[k].mean_ratio, scored[k].worst_gap, k))


def best_within(candidates: Mapping[str, Scored], baseline: Scored, budget: float) -> str | None:
    """On one member: the most accurate candidate within the budget, no margin (ties: fewer evaluations, then the larger key).

    Args:
        candidates: ``{key: result}`` on the member.
        baseline: baseline-32's result on it.
        budget: the most a candidate may cost, as a fraction of baseline-32's evaluations.

    Returns:
        the key, or ``None`` when none is that cheap.
    """
    within = [(k, r) for k, r in candidates.items() if ratio(r, baseline) <= budget + _SLACK]
    if not within:
        return None
    return max(within, key=lambda kr: (kr[1].top1, -kr[1].evals_per_image, kr[0]))[0]
