"""The bench's own race configurations: what the race's removed options did, kept for the record.

The race once had ``max_slots`` (a population capped to the first slots of its visit order) and
``screen`` (the first slot for every class, then the race among the best fraction of them). No
shipped default or preset used either (``RaceOptions.REMOVED``), but the suite measured them: its
baselines on a sub-grid (``alpha: 0``, capped, ``order: stratified``) and on the middle of the grid
(``center-out``), and races over the middle 16 or 8 timesteps, with or without a screen. Those rows
stay in ``bench/results/suite.json`` under their keys, and this module runs them:
:class:`RaceVariant` is the race's options plus the two knobs, and :func:`race_variant` is the race
over the capped population (:func:`~diffcls_plugin.samplers.race.race_over`), after the screen.

:func:`recorded` spells any configuration as the record does (every removed option at its former
default, or the variant's value, in its former place), so that every row keeps its key;
:func:`from_recorded` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from diffcls_plugin.samplers import SAMPLERS, Request, Sampler, SamplerOptions, SamplerResult
from diffcls_plugin.samplers.base import Evaluations
from diffcls_plugin.samplers.race import RaceOptions, population, race_over

# where the record spells each removed option: right after the option it used to follow
FORMER_PLACE = {"race": {"n_noises": "n_timesteps", "max_slots": "min_slots", "screen": "order"}}


@dataclass(frozen=True)
class RaceVariant:
    """A race the bench runs itself (the row's sampler stays ``race``).

    Attributes:
        race: the race's own options.
        max_slots: the population is the first ``max_slots`` slots of the visit order (``None``:
            all of them); with ``order: center-out`` the middle of the grid, with ``stratified`` an
            evenly spaced sub-grid (and with ``alpha: 0``, the baseline on it).
        screen: the fraction of the classes (at least two) that race on after the first slot, by
            their error there; the rest rank below them in that slot's order. ``1`` screens nothing.
    """

    race: RaceOptions
    max_slots: int | None = None
    screen: float = 1.0

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise ``ValueError`` for knobs the recorded race refused (the race's own options: its errors)."""
        self.race.validate(num_train_timesteps)
        k, n = self.max_slots, self.race.n_timesteps
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n):
            raise ValueError(f"RaceVariant.max_slots must be an integer between 1 and race.n_timesteps ({n}) or None, got {k!r}")
        f = self.screen
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"RaceVariant.screen must be a fraction in (0, 1], got {f!r}")
        if f < 1 and self.race.beam_factor > 1:
            raise ValueError("RaceVariant.screen < 1 with race.beam_factor > 1: both cut the first slot by rank; the suite never measured them together")


def race_variant(n_classes: int, options: RaceVariant, num_train_timesteps: int = 1000) -> Sampler:
    """The race over the first ``max_slots`` slots of its order, after the first-slot screen.

    Returns:
        (as the generator's value) a :class:`SamplerResult`: the screened-out classes rank below
        the racers, in their first-slot order (their score: that slot's error).
    """
    options.validate(num_train_timesteps)
    slots = population(options.race, num_train_timesteps)[: options.max_slots]  # (max_slots,) in visit order
    keep = max(2, math.ceil(options.screen * n_classes))
    if keep >= n_classes:
        return (yield from race_over(n_classes, options.race, slots))
    return (yield from _screened(n_classes, keep, options.race, slots))


def _screened(n_classes: int, keep: int, options: RaceOptions, slots: list[tuple[int, int]]) -> Sampler:
    """The first slot for every class, then :func:`race_over` among the ``keep`` best there."""
    t, n = slots[0]
    first = Evaluations()
    yield from first.ensure((c, t, n) for c in range(n_classes))
    order = sorted(range(n_classes), key=lambda c: (first.error(c, t, n), c))  # best first
    racers = sorted(order[:keep])  # the inner race's class i; in class order, so ties break as the race's do
    rank = {c: i for i, c in enumerate(order)}
    position = {slot: i for i, slot in enumerate(slots)}
    inner = race_over(keep, options, slots)
    try:
        request = next(inner)
        screen_order = True  # until the race's first decision, its classes come in the screen's order
        while True:
            triples = [(racers[c], tt, nn) for c, tt, nn in zip(request.class_idx, request.timesteps, request.noise_idx)]
            new = [k for k in triples if k[1:] != (t, n)]  # the racers' first slot is scored already
            if screen_order:  # slot by slot, each slot's classes in the screen's order
                new.sort(key=lambda k: (position[k[1:]], rank[k[0]]))
                screen_order = options.alpha == 0
            fresh: dict = {}
            if new:
                errors = list((yield Request(*map(tuple, zip(*new)))))
                if len(errors) != len(new):
                    raise RuntimeError(f"scorer returned {len(errors)} errors for {len(new)} requested triples")
                fresh = dict(zip(new, errors))
            request = inner.send([fresh[k] if k in fresh else first.error(*k) for k in triples])
    except StopIteration as stop:
        result: SamplerResult = stop.value
    out = order[keep:]
    scores = [math.nan] * n_classes
    for i, c in enumerate(racers):
        scores[c] = result.scores[i]
    for c in out:
        scores[c] = first.error(c, t, n)
    ranking = tuple(racers[i] for i in result.ranking) + tuple(out)
    return SamplerResult(ranking, tuple(scores), result.n_evals + len(out), result.n_rounds, result.stop_reason)


def sampler_fn(sampler: str, options: SamplerOptions | RaceVariant):
    """The generator function that runs a configuration: the registered sampler's, or :func:`race_variant`."""
    return race_variant if isinstance(options, RaceVariant) else SAMPLERS.get(sampler).fn


def recorded(sampler: str, options: SamplerOptions | RaceVariant) -> dict[str, Any]:
    """A configuration's options as the suite's record spells them (its row's ``options``, its key).

    The sampler's options, and each option it no longer has (``REMOVED``) at its former default,
    or at a :class:`RaceVariant`'s value, in the place it used to have.
    """
    if isinstance(options, RaceVariant):
        current = options.race.to_dict()
        removed = {k: r.default for k, r in RaceOptions.REMOVED.items()} | {"max_slots": options.max_slots, "screen": options.screen}
    else:
        current = options.to_dict()
        removed = {k: r.default for k, r in type(options).REMOVED.items()}
    after = FORMER_PLACE.get(sampler, {})
    out: dict[str, Any] = {}
    for k, v in current.items():
        out[k] = v
        out.update({r: removed[r] for r, prev in after.items() if prev == k and r in removed})
    return out | {r: v for r, v in removed.items() if r not in out}


def from_recorded(sampler: str, values: dict[str, Any]) -> SamplerOptions | RaceVariant:
    """The configuration a record's options spell (the inverse of :func:`recorded`).

    Options the sampler has gained since are at their defaults; a removed option at its former
    default is dropped, ``max_slots`` and ``screen`` of a race at other values make a
    :class:`RaceVariant`.

    Raises:
        ValueError: an option the sampler never had, or a removed one no variant runs.
    """
    cls = SAMPLERS.get(sampler).options_cls
    unknown = [k for k in values if k not in cls.__dataclass_fields__ and k not in cls.REMOVED]
    if unknown:
        raise ValueError(f"the record's {sampler} options hold {unknown[0]!r}, which {sampler} never had")
    options = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in cls.__dataclass_fields__})
    changed = {k: values[k] for k in cls.REMOVED if k in values and values[k] != cls.REMOVED[k].default}
    if not changed:
        return options
    if sampler == "race" and set(changed) <= {"max_slots", "screen"}:
        return RaceVariant(options, max_slots=values.get("max_slots"), screen=values.get("screen", 1.0))
    raise ValueError(
        f"the record's {sampler} options set the removed {', '.join(f'{k}: {v!r}' for k, v in changed.items())}; no configuration of the bench runs that"
    )
