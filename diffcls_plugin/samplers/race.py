"""A race: classes are eliminated by paired confidence bounds on the full-grid mean error.

The 32-timestep baseline predicts ``argmin_c mean_{t in grid} e_c(t)``: a mean over a *finite,
known* population of (timestep, noise) slots. The race visits that population slot by slot (by
default from the middle of the grid outwards; ``order: stratified`` spreads every prefix evenly
over the noise levels) and scores every class still in the race at each slot, so all survivors
share the same slots (Li et al.'s paired comparison). After each slot it estimates, for every
survivor ``c``, the full-population mean of its paired difference to the current leader ``L``,
``d_c = mean_slots (e_c - e_L)``, with a finite-population standard error

    se_c = s_c / sqrt(n) * sqrt((N - n) / N)        n slots seen of N

and eliminates ``c`` once ``mean(d_c) - q * se_c > 0`` with ``q`` Student's t quantile at
``1 - alpha`` (``n - 1`` degrees of freedom): ``c`` is then confidently behind the leader on the
*whole* grid, which is what the baseline would decide. With ``variance: pooled`` the ``s_c^2`` of
all survivors but the leader are averaged into one estimate with ``(k - 1)(n - 1)`` degrees of
freedom (``k`` survivors): after two slots one class's variance rests on a single difference, far
too unreliable to act on, while the pooled one rests on one per class, so the race can start
eliminating at two slots instead of four. Each slot tests ``k - 1`` classes against the leader;
with ``correction: bonferroni`` each test runs at ``alpha / (k - 1)`` and with ``correction: holm``
Holm's step-down procedure (1979) controls the same family-wise level with more power, so
``alpha`` bounds the chance of eliminating *any* class wrongly at a slot, not each one: with many
classes and a weak model, per-comparison tests repeated at every slot eliminate the true class
far too often. It stops when one class is left or the population is exhausted; at that point
``se = 0`` and the prediction is exactly the baseline's among the survivors. So easy images cost
a few slots of all classes, close calls cost more, and ``alpha = 0`` never eliminates: the
result is the baseline's, evaluation for evaluation.

A small budget (an eighth or a sixteenth of the baseline's evaluations: two to four slots per
class) is spent before the bounds can decide anything. ``beam_factor`` gives the race the
hierarchical sampler's progressive beam for that case: after every slot the survivors are also cut
to their best ``1 / b`` by rank, down to ``min_beam``, and the bounds eliminate on top of it. With
``alpha = 0`` that is the hierarchical sampler on the same visit order, evaluation for evaluation;
with ``alpha > 0`` it spends less wherever the bounds are decisive.

This is a racing algorithm (Maron & Moore 1994, "Hoeffding races"; successive elimination,
Even-Dar et al. 2002) with the sampling-without-replacement correction of survey sampling; its
pruning rule resembles Clark & Jaini 2023's paired t-test, but it estimates the baseline's own
finite-grid decision rather than an expectation over continuous timesteps.

:func:`race_over` runs the same race on any finite population of slots (``bench/suite.py`` uses it
for the baseline on a sub-grid and the race over the middle of the grid, which are no option of
the race: ``RaceOptions.REMOVED``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from diffcls_plugin.samplers.base import Evaluations, Sampler, finish, li_timesteps, order_by_score, paired_moments
from diffcls_plugin.samplers.options import Removed, SamplerOptions

ORDERS = ("stratified", "descending", "center-out")
# option values the race once accepted: never measured by the suite, so they went
REMOVED_ORDERS = {"ascending": "clean to noisy; never measured for the race"}
VARIANCES = ("per-class", "pooled")
CORRECTIONS = ("none", "bonferroni", "holm")


@dataclass(frozen=True)
class RaceOptions(SamplerOptions):
    """Options of the race sampler.

    Attributes:
        n_timesteps: size of the population grid (Li et al.'s evenly spaced formula, the same grid
            as the baseline's ``n_timesteps``), one noise per timestep: ``n_timesteps`` slots.
        alpha: one-sided error level of each elimination (smaller is more careful and costs
            more). ``0`` never eliminates: the result equals the baseline's.
        min_slots: slots every class is scored at before the bounds' first elimination (>= 2;
            the beam, if any, cuts from the first slot).
        order: the order slots are visited in: ``center-out`` (nearest the middle of the grid
            first, alternating above and below; the default), ``stratified`` (van der Corput
            order starting at the middle: every prefix is spread evenly over the noise levels)
            or ``descending`` (noisy to clean).
        beam_factor: b >= 1; after every slot, once the confidence eliminations are done, the
            survivors are also cut to their best ``max(min_beam, floor(k / b))`` by mean error
            over the slots seen (``k`` survivors): the hierarchical sampler's progressive beam,
            which the race then tightens wherever the bounds are decisive. ``1`` (the default)
            cuts nothing: the pure race. Eliminations by the bounds are not held to
            ``min_beam``; the beam's cuts are. A small budget needs it: the bounds cannot
            decide on the two or three slots such a budget pays for, a rank cut can.
        min_beam: the beam never cuts the survivors below this many (>= 1); they race on.
        variance: how each elimination's standard error is estimated: ``per-class`` (each
            class's own paired differences to the leader, ``n - 1`` degrees of freedom) or
            ``pooled`` (those variances averaged over the survivors, ``(k - 1)(n - 1)`` degrees of
            freedom; decisive after fewer slots; the default).
        correction: the multiple-comparison correction of the ``k - 1`` eliminations tested at
            each slot (``k`` survivors): ``none`` (each at ``alpha``; the default), ``bonferroni``
            (each at ``alpha / (k - 1)``) or ``holm`` (Holm's step-down: the strongest case at
            ``alpha / (k - 1)``, the next at ``alpha / (k - 2)``, ... until one fails).

    Removed options (``REMOVED``, with the value at which the race behaved as it does now):
    ``n_noises`` (never measured above 1 for the race), ``max_slots`` (a population capped to the
    first slots of the order: the bench's sub-grid baselines and middle-of-the-grid races, which
    ``bench/suite.py`` runs itself; no default or preset used it) and ``screen`` (a first-slot cut
    to a fraction of the classes, kept by the bench; the beam's first cut screens, and the
    ``eighth`` and ``sixteenth`` presets use the beam).
    """

    section = "race"
    # The settings bench/suite.py's rule picks on its members' validation splits for the small
    # budgets (at most 1/16 and 1/8 of the 32-timestep baseline's evaluations on every one of
    # them), where the bounds alone cannot decide yet: beamed races
    PRESETS = {
        "sixteenth": {"alpha": 0.2, "min_slots": 2, "beam_factor": 2.0, "min_beam": 3},
        "eighth": {"alpha": 0.1, "min_slots": 4, "beam_factor": 1.25, "min_beam": 2},
    }
    REMOVED = {
        "n_noises": Removed(1, "the race draws one noise per timestep (for more, baseline.n_trials or hierarchical.n_noises)"),
        "max_slots": Removed(None, "the race's population is the whole grid of race.n_timesteps (set that for a coarser grid)"),
        "screen": Removed(1.0, "for a first cut of the classes by rank set race.beam_factor (its first cut screens)"),
    }
    n_timesteps: int = 32
    # defaults chosen by bench/suite.py on its members' validation splits, among races over the
    # whole grid: at most a quarter of the 32-timestep baseline's evaluations, the smallest
    # worst-case gap to it plus one standard error
    alpha: float = 0.05
    min_slots: int = 4
    order: str = "center-out"
    variance: str = "pooled"
    correction: str = "none"
    beam_factor: float = 1.0
    min_beam: int = 2

    def validate(self, num_train_timesteps: int = 1000) -> None:
        self._check_int("n_timesteps", 1, num_train_timesteps)
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a < 0.5:
            raise self._fail("alpha", f"must be a number in [0, 0.5), got {a!r}")
        self._check_int("min_slots", 2)
        if self.order in REMOVED_ORDERS:
            raise self._fail("order", f"{self.order!r} was removed ({REMOVED_ORDERS[self.order]}); set race.order to one of {', '.join(ORDERS)}")
        if self.order not in ORDERS:
            raise self._fail("order", f"must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.variance not in VARIANCES:
            raise self._fail("variance", f"must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        if self.correction not in CORRECTIONS:
            raise self._fail("correction", f"must be one of {', '.join(CORRECTIONS)}, got {self.correction!r}")
        b = self.beam_factor
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 1:
            raise self._fail("beam_factor", f"must be a number >= 1 (1: no beam, the pure race), got {b!r}")
        self._check_int("min_beam", 1)


def _van_der_corput(k: int) -> float:
    """The k-th point of the base-2 van der Corput sequence in [0, 1)."""
    value, denom = 0.0, 1.0
    while k:
        denom *= 2
        k, bit = divmod(k, 2)
        value += bit / denom
    return value


def visit_order(n: int, order: str) -> list[int]:
    """Indices ``0..n-1`` of an ascending grid in the order the race visits them.

    ``stratified``: ``floor(((v_k + 1/2) mod 1) * n)`` for the van der Corput points ``v_k``,
    first occurrences only, so the middle comes first and every prefix of length ``2^j`` (for
    ``n`` a power of two) is an evenly spaced sub-grid.
    """
    if order == "descending":
        return list(range(n - 1, -1, -1))
    if order == "center-out":
        middle = (n - 1) / 2
        return sorted(range(n), key=lambda i: (abs(i - middle), i))
    seen: dict[int, None] = {}
    k = 0
    while len(seen) < n:
        seen.setdefault(int(((_van_der_corput(k) + 0.5) % 1.0) * n), None)
        k += 1
    return list(seen)


@lru_cache(maxsize=65536)  # (level, dof) pairs: Holm's levels and pooled dofs grow with the classes
def t_quantile(p: float, dof: int) -> float:
    """Student's t quantile ``t_{p, dof}`` (scipy)."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(p, dof))


def population(options: RaceOptions, num_train_timesteps: int = 1000) -> list[tuple[int, int]]:
    """The race's population: every ``(timestep, noise_idx)`` slot of its grid, in visit order."""
    grid = li_timesteps(num_train_timesteps, options.n_timesteps)  # (n_timesteps,) ascending
    return [(grid[i], 0) for i in visit_order(len(grid), options.order)]


def race(n_classes: int, options: RaceOptions, num_train_timesteps: int = 1000) -> Sampler:
    """Score survivors slot by slot; eliminate classes confidently behind the leader.

    The race over :func:`population` (see :func:`race_over`).

    Returns:
        (as the generator's value) a :class:`SamplerResult`; eliminated classes rank below the
        survivors, the latest eliminated first. ``stop_reason`` is ``"beam"`` when one class was
        left, ``"schedule"`` when the grid was exhausted.
    """
    options.validate(num_train_timesteps)
    return (yield from race_over(n_classes, options, population(options, num_train_timesteps)))


def race_over(n_classes: int, options: RaceOptions, slots: Sequence[tuple[int, int]]) -> Sampler:
    """The race on an explicit finite population of ``(timestep, noise_idx)`` slots, in visit order.

    Its finite-population bounds count ``len(slots)`` slots, and once every slot is seen it
    decides as the baseline on exactly those slots. ``options.n_timesteps`` and ``options.order``
    are not read (they define :func:`population`); ``options`` is validated by the caller.

    Args:
        n_classes: C, the number of classes.
        options: alpha, min_slots, variance, correction, beam_factor and min_beam.
        slots: (N,) the population, in the order the race visits it; N >= 1.

    Returns:
        (as the generator's value) a :class:`SamplerResult`, as :func:`race`'s.
    """
    n_cap = len(slots)  # the population's size
    evals = Evaluations()
    alive = list(range(n_classes))
    pruned: list[list[int]] = []
    beam = options.beam_factor > 1
    # without a beam the first min_slots slots need no decision in between: one flat request; the
    # beam cuts after every slot, so its slots are requested one by one
    n_seen = 1 if beam else min(options.min_slots, n_cap)
    yield from evals.ensure((c, t, n) for t, n in slots[:n_seen] for c in alive)
    stop_reason = "schedule"
    while True:
        if len(alive) > 1 and options.alpha > 0 and n_seen >= max(2, min(options.min_slots, n_cap)):
            alive, out = _eliminate(alive, slots[:n_seen], n_cap, evals, options.alpha, options.variance == "pooled", options.correction)
            if out:
                pruned.append(out)
        if beam and n_seen < n_cap:
            n_keep = max(options.min_beam, math.floor(len(alive) / options.beam_factor))
            if n_keep < len(alive):
                order = order_by_score(alive, evals)  # best first; all survivors share the slots seen
                alive = order[:n_keep]
                pruned.append(order[n_keep:])
        if len(alive) == 1 and n_classes > 1:
            stop_reason = "beam"
            break
        if n_seen >= n_cap:
            break
        t, n = slots[n_seen]
        n_seen += 1
        yield from evals.ensure((c, t, n) for c in alive)
    return finish(n_classes, alive, pruned, evals, n_rounds=n_seen, stop_reason=stop_reason)


def _eliminate(
    alive: list[int],
    seen: list[tuple[int, int]],
    n_total: int,
    evals: Evaluations,
    alpha: float,
    pooled: bool = False,
    correction: str = "none",
) -> tuple[list[int], list[int]]:
    """Split the survivors into those kept and those confidently behind the leader."""
    order = order_by_score(alive, evals)  # best first; all survivors share the slots seen
    leader = order[0]
    lead = [evals.error(leader, t, n) for t, n in seen]
    n = len(seen)
    moments = [paired_moments([evals.error(c, t, k) - e for (t, k), e in zip(seen, lead)]) for c in order[1:]]
    dof = n - 1
    if pooled:
        pooled_var = sum(var for _, var in moments) / len(moments)
        moments = [(mean, pooled_var) for mean, _ in moments]
        dof *= len(moments)
    m = len(moments)  # the comparisons tested at this slot
    if n >= n_total:  # the population is seen: the leader is the baseline's pick among the survivors
        behind = [mean > 0 for mean, _ in moments]
    else:
        fpc = (n_total - n) / n_total
        se = [math.sqrt(var / n * fpc) for _, var in moments]
        if correction == "holm":  # strongest evidence first, each at alpha / (m - i), until one fails
            behind = [False] * m
            strength = [mean / s if s > 0 else math.inf if mean > 0 else -math.inf for (mean, _), s in zip(moments, se)]
            for i, j in enumerate(sorted(range(m), key=lambda j: -strength[j])):
                if not moments[j][0] - t_quantile(1.0 - alpha / (m - i), dof) * se[j] > 0:
                    break
                behind[j] = True
        else:
            q = t_quantile(1.0 - (alpha / m if correction == "bonferroni" else alpha), dof)
            behind = [mean - q * s > 0 for (mean, _), s in zip(moments, se)]
    keep, out = [leader], []
    for c, is_behind in zip(order[1:], behind):
        (out if is_behind else keep).append(c)
    return keep, out
