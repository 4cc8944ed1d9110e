"""The candidate configurations a tuning run chooses among, per sampler family.

Every candidate visits only timesteps of baseline-32's grid (Li et al.'s evenly spaced formula),
one noise each, so one :class:`~diffcls_plugin.tuning.ErrorTable` of 32 timesteps replays them
all: the t-test's rounds visit the grid (``timesteps: grid``), and Li et al.'s adaptive schedules
are scaled to a last stage of 32 timesteps (their stage grids are then sub-grids of it). Every
option whose default has ever changed is spelled out, so that a candidate keeps its key. These
are the configurations ``bench/suite.py`` measures (which adds its own, for the record).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator

from diffcls_plugin.errors import unknown_name_error
from diffcls_plugin.samplers import (
    SAMPLERS,
    AdaptiveOptions,
    BaselineOptions,
    HierarchicalOptions,
    RaceOptions,
    SamplerOptions,
    TTestOptions,
)
from diffcls_plugin.tuning.evaluate import SamplerFn

FAMILIES = ("adaptive", "hierarchical", "ttest", "race")  # the samplers a tuning run chooses among
REFERENCE = ("baseline", BaselineOptions(n_timesteps=32))  # what every gap and cost ratio is measured against

Candidate = tuple[str, SamplerOptions]  # (sampler name, options)


def blocks() -> dict[str, list[Candidate]]:
    """The candidates in named blocks, in the order they are measured.

    Returns:
        ``{block: [(sampler, options), ...]}``: ``adaptive``, ``hierarchical``, ``race-per-class``,
        ``race-pooled``, ``race-holm``, ``race-beamed``, ``race-holm-per-class``,
        ``race-bonferroni``, ``ttest``. A caller that measures more (the bench's capped races)
        extends a block's configurations in place of rebuilding the grid.
    """
    out: dict[str, list[Candidate]] = {}
    # Li et al.'s elimination scaled down: their CIFAR10 shape (keep 5, then 1), sharper ones,
    # and their many-class shape (Aircraft: 20 10 5 1) as (10, 5, 1)
    two = ((1, 32), (2, 32), (4, 32), (8, 32), (16, 32))
    three = ((1, 4, 32), (2, 8, 32), (4, 16, 32))
    out["adaptive"] = [("adaptive", AdaptiveOptions(to_keep=k, n_samples=n)) for k in ((5, 1), (3, 1), (2, 1)) for n in two]
    out["adaptive"] += [("adaptive", AdaptiveOptions(to_keep=(10, 5, 1), n_samples=n)) for n in three]
    # the hierarchical beam: its shrink, patience and direction; a fixed beam; a floor under the beam
    hier = itertools.product((1.25, 1.5, 2.0, 3.0), (None, 1, 2, 4), ("ascending", "descending", "center-out"))
    out["hierarchical"] = [("hierarchical", HierarchicalOptions(beam_factor=b, min_beam=1, patience=p, direction=d)) for b, p, d in hier]
    fixed = itertools.product((2.0, 4.0), (None, 2, 4), ("ascending", "descending", "center-out"))
    out["hierarchical"] += [("hierarchical", HierarchicalOptions(beam="fixed", beam_factor=b, min_beam=1, patience=p, direction=d)) for b, p, d in fixed]
    floor = itertools.product((1.25, 1.5, 2.0, 3.0), (2, 3), (None, 4), ("descending", "center-out"))
    out["hierarchical"] += [("hierarchical", HierarchicalOptions(beam_factor=b, min_beam=m, patience=p, direction=d)) for b, m, p, d in floor]
    # careful ones, for the half budget on many classes: a slower shrink, a larger floor
    careful = [(1.1, m) for m in (2, 3, 4)] + list(itertools.product((1.25, 1.5, 2.0), (4, 5, 6)))
    out["hierarchical"] += [
        ("hierarchical", HierarchicalOptions(beam_factor=b, min_beam=m, patience=None, direction=d))
        for (b, m), d in itertools.product(careful, ("descending", "center-out"))
    ]
    out["hierarchical"] += [("hierarchical", HierarchicalOptions(**HierarchicalOptions.preset_values("paper"), preset="paper"))]
    # the race with per-class variances, in three orders of travel
    race = itertools.product((0.2, 0.1, 0.05, 0.01, 0.001), (2, 4), ("stratified", "center-out", "descending"))
    out["race-per-class"] = [("race", RaceOptions(alpha=a, min_slots=m, order=o, variance="per-class", correction="none")) for a, m, o in race]
    # the race with pooled variances (decisive from two slots)
    pooled = itertools.product((0.2, 0.1, 0.05, 0.02, 0.01), (2, 4))
    out["race-pooled"] = [("race", RaceOptions(alpha=a, min_slots=m, variance="pooled", correction="none")) for a, m in pooled]
    # the race with a multiple-comparison correction of each slot's k - 1 eliminations: Holm's
    # step-down (pooled; per-class in two orders below) and Bonferroni's (pooled)
    holm = itertools.product((0.3, 0.2, 0.1, 0.05), (2, 4))
    out["race-holm"] = [("race", RaceOptions(alpha=a, min_slots=m, variance="pooled", correction="holm")) for a, m in holm]
    # the race with the hierarchical sampler's progressive beam (cut to the best 1/b after every
    # slot, down to min_beam; the bounds eliminate on top of it): for the budgets of two to four
    # slots per class, where the bounds alone cannot decide yet. alpha > 0 only: with alpha 0 it is
    # the hierarchical sampler itself
    beamed = itertools.product((0.2, 0.1, 0.05), (2, 4), (1.1, 1.25, 1.5, 2.0, 3.0), (1, 2, 3))
    out["race-beamed"] = [
        ("race", RaceOptions(alpha=a, min_slots=m, beam_factor=b, min_beam=mb, variance="pooled", correction="none")) for a, m, b, mb in beamed
    ]
    holm_per_class = itertools.product((0.2, 0.1, 0.05), (2, 4), ("stratified", "center-out"))
    out["race-holm-per-class"] = [("race", RaceOptions(alpha=a, min_slots=m, order=o, variance="per-class", correction="holm")) for a, m, o in holm_per_class]
    out["race-bonferroni"] = [("race", RaceOptions(alpha=a, min_slots=m, variance="pooled", correction="bonferroni")) for a in (0.2, 0.1, 0.05) for m in (2, 4)]
    # Clark & Jaini's own p = 2e-3 (20 to 2000 rounds, the `clark-jaini` preset) is left out: its
    # fresh random timesteps cost more than the whole 32-timestep grid per image on small models.
    # The rounds visit the grid (`timesteps: grid`), as every other candidate's do: uniform draws
    # nearly double the evaluations of a table, and fall outside it
    ttest = itertools.product((0.2, 0.1, 0.05, 0.02), (4, 8), (7.0, 0.0))
    out["ttest"] = [("ttest", TTestOptions(p=p, min_samples=m, weight_rate=w, max_samples=32, timesteps="grid")) for p, m, w in ttest]
    return out


def candidates(families: Iterable[str] | None = None) -> Iterator[Candidate]:
    """Every candidate of the given sampler families, in :func:`blocks` order.

    Args:
        families: sampler names of :data:`FAMILIES` (default: all of them).

    Yields:
        ``(sampler, options)``.

    Raises:
        DiffclsError: a family that has no candidates, with the closest valid name.
    """
    wanted = FAMILIES if families is None else tuple(families)
    for family in wanted:
        if family not in FAMILIES:
            raise unknown_name_error("sampler family to tune", family, FAMILIES)
    for block in blocks().values():
        yield from ((s, o) for s, o in block if s in wanted)


def candidate_key(sampler: str, options: SamplerOptions) -> str:
    """A configuration's key: its sampler and its options as JSON (sorted keys)."""
    return f"{sampler} {json.dumps(options.to_dict(), sort_keys=True)}"


def runnable(configs: Iterable[Candidate]) -> dict[str, tuple[SamplerFn, SamplerOptions]]:
    """``{candidate_key: (generator function, options)}``: what :func:`~diffcls_plugin.tuning.evaluate_all` runs."""
    return {candidate_key(s, o): (SAMPLERS.get(s).fn, o) for s, o in configs}
