"""The bench's own race configurations (bench/variants.py): the suite's recorded rows that used the
race's removed options (``max_slots``, ``screen``), and every race row's key, run and spelled as
the record has them."""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from suite import CANDIDATES, RESULTS, grid, key  # noqa: E402
from test_samplers import Recorder, noisy  # noqa: E402
from variants import RaceVariant, from_recorded, race_variant, recorded  # noqa: E402

from diffcls_plugin.samplers import classify, li_timesteps  # noqa: E402
from diffcls_plugin.samplers.race import RaceOptions, race, visit_order  # noqa: E402

TRACES = Path(__file__).parent / "fixtures" / "race-traces-before-removal.json"
# the planted images every race configuration is traced on: (classes, seed, coarse errors with exact ties)
SCENES = [(n_classes, seed, ties) for n_classes in (3, 10, 26) for seed in range(2) for ties in (False, True)]


def planted_errors(n_classes: int, seed: int, ties: bool):
    """A planted scorer: the true class lowest by a random gap, jitter 0.5; ``ties``: rounded to 0.1."""
    rng = random.Random(seed * 100 + n_classes)
    true = rng.randrange(n_classes)
    gap = rng.choice((0.02, 0.1, 0.5))
    base = [0.0 if c == true else gap * (1 + rng.random()) for c in range(n_classes)]

    def error(c: int, t: int, n: int) -> float:
        e = base[c] + 0.5 * noisy(c, t, n, seed)
        return round(e, 1) if ties else e

    return error


def trace(make) -> str:
    """A digest of every request (in order) and every result of a sampler on the planted scenes."""
    digest = hashlib.sha256()
    for n_classes, seed, ties in SCENES:
        error = planted_errors(n_classes, seed, ties)
        calls = []

        def score(class_idx, timesteps, noise_idx):
            calls.append(list(zip(class_idx, timesteps, noise_idx)))
            return [error(*k) for k in calls[-1]]

        result = classify(make(n_classes), score)
        digest.update(repr((calls, result.ranking, result.scores, result.n_evals, result.n_rounds)).encode())
    return digest.hexdigest()[:16]


def short_key(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()[:12]


def run(options):
    return (lambda n: race_variant(n, options)) if isinstance(options, RaceVariant) else (lambda n: race(n, options))


def test_every_race_row_of_the_grid_runs_request_for_request_as_the_race_did_before_its_options_were_removed():
    # the digests were written by the race as it was before n_noises, max_slots and screen went
    # (each configuration built from its recorded options); the race and the bench's variants
    # must ask for the same triples, in the same order, and return the same results
    recorded_traces = json.loads(TRACES.read_text())["traces"]
    races = [(key(s, o), o) for s, o in grid() if s == "race"]
    assert len(races) == len(recorded_traces) == 256
    # 10 sub-grid baselines (alpha 0), 72 races over the middle 16 or 8 timesteps (36 screened), 18 screened over the whole grid
    assert sum(isinstance(o, RaceVariant) for _, o in races) == 100
    differ = [k for k, o in races if trace(run(o)) != recorded_traces[short_key(k)]]
    assert not differ, f"{len(differ)} race rows no longer run as recorded, e.g. {differ[0]}"


def test_the_grid_spells_every_row_as_the_record_does_and_reads_it_back():
    rows = json.loads((RESULTS / "suite.json").read_text())["pairs"][0]["splits"]["val"]["rows"]
    for s, o in grid():
        k = key(s, o)
        assert list(rows[k]["options"].items()) == list(recorded(s, o).items())  # values and their order
        assert from_recorded(s, rows[k]["options"]) == o
    # the race's own options are recorded with the removed ones at their former defaults
    assert recorded("race", RaceOptions()) == {
        "preset": None,
        "n_timesteps": 32,
        "n_noises": 1,
        "alpha": 0.05,
        "min_slots": 4,
        "max_slots": None,
        "order": "center-out",
        "screen": 1.0,
        "variance": "pooled",
        "correction": "none",
        "beam_factor": 1.0,
        "min_beam": 2,
    }


def test_the_shipped_race_is_chosen_only_among_races_the_sampler_runs():
    rows = json.loads((RESULTS / "suite.json").read_text())["pairs"][0]["splits"]["val"]["rows"]
    kept = {k for k, r in rows.items() if r["sampler"] == "race" and CANDIDATES["race"](r)}
    assert kept == {key(s, o) for s, o in grid() if s == "race" and isinstance(o, RaceOptions)}


def test_records_written_before_an_option_was_added_or_removed_read_back():
    # a holdout record of an earlier suite: no beam (added since), the removed options at their defaults
    older = {
        "preset": None,
        "n_timesteps": 32,
        "n_noises": 1,
        "alpha": 0.05,
        "min_slots": 4,
        "max_slots": None,
        "order": "center-out",
        "screen": 1.0,
        "variance": "pooled",
        "correction": "none",
    }
    assert from_recorded("race", older) == RaceOptions()
    assert from_recorded("race", {**older, "max_slots": 16, "screen": 0.5}) == RaceVariant(RaceOptions(), max_slots=16, screen=0.5)
    with pytest.raises(ValueError, match="n_noises: 2"):
        from_recorded("race", {**older, "n_noises": 2})  # no configuration runs it
    with pytest.raises(ValueError, match="'gone'"):
        from_recorded("race", {**older, "gone": 1})


def test_capped_race_without_elimination_is_the_baseline_on_an_evenly_spaced_sub_grid():
    grid32 = li_timesteps(1000, 32)
    for k in (1, 2, 8):
        scorer = Recorder([0.05 * (c != 4) for c in range(10)], jitter=0.5, seed=k)
        result = classify(race_variant(10, RaceVariant(RaceOptions(alpha=0, order="stratified"), max_slots=k)), scorer)
        visited = sorted({t for _, t, _ in scorer.triples})
        assert visited == [grid32[i] for i in sorted(visit_order(32, "stratified")[:k])]
        assert result.n_evals == 10 * k
        means = [sum(scorer.base[c] + 0.5 * noisy(c, t, 0, scorer.seed) for t in visited) / k for c in range(10)]
        assert result.prediction == min(range(10), key=lambda c: (means[c], c))


def test_screened_race_keeps_a_clear_winner_and_cuts_the_first_slot_to_the_best_classes():
    for seed in range(4):
        for true in (0, 13, 25):
            scorer = Recorder([0.0 if c == true else 1.0 + 0.1 * c for c in range(26)], jitter=0.05, seed=seed)
            result = classify(race_variant(26, RaceVariant(RaceOptions(), screen=0.3)), scorer)
            assert result.prediction == true
            first = scorer.calls[0]
            assert len(first) == 26 and len({t for _, t, _ in first}) == 1  # one slot, every class
            raced = {c for call in scorer.calls[1:] for c, _, _ in call}
            assert len(raced) == 8 and true in raced  # ceil(0.3 * 26) = 8 classes race on
            # the screened-out classes rank below the racers, in their first-slot order, scored by that slot
            errors = {c: scorer.base[c] + 0.05 * noisy(c, t, n, seed) for c, t, n in first}
            out = list(result.ranking[8:])
            assert set(out) == set(range(26)) - raced
            assert out == sorted(out, key=lambda c: (errors[c], c))
            assert all(result.scores[c] == errors[c] for c in out)
            assert all(math.isfinite(s) for s in result.scores)
            assert result.n_evals == len(set(scorer.triples))


def test_a_variant_that_changes_nothing_is_the_race():
    # the whole grid, or a screen that keeps every class (at least two are kept)
    for n, options in ((10, RaceVariant(RaceOptions())), (10, RaceVariant(RaceOptions(), max_slots=32)), (2, RaceVariant(RaceOptions(), screen=0.3))):
        for seed in range(3):
            base = [0.05 * (c != 1) for c in range(n)]
            a = classify(race_variant(n, options), Recorder(base, jitter=0.5, seed=seed))
            b = classify(race(n, RaceOptions()), Recorder(base, jitter=0.5, seed=seed))
            assert a == b


@pytest.mark.parametrize(
    "options, match",
    [
        (RaceVariant(RaceOptions(), max_slots=33), "max_slots"),
        (RaceVariant(RaceOptions(n_timesteps=8), max_slots=16), "max_slots"),
        (RaceVariant(RaceOptions(), screen=0), "screen"),
        (RaceVariant(RaceOptions(), screen=1.5), "screen"),
        (RaceVariant(RaceOptions(beam_factor=1.5), screen=0.5), "beam_factor"),  # two rank cuts of the first slot
        (RaceVariant(RaceOptions(alpha=0.7)), "race.alpha"),
    ],
)
def test_bad_variants_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        options.validate(1000)
