"""The tuning package (diffcls_plugin/tuning): the error table and its replay, the choosing rule on
planted tables, the paired statistics against hand-computed values, K-fold splits, candidates."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import SAMPLERS, BaselineOptions, TTestOptions, classify, li_timesteps
from diffcls_plugin.tuning import (
    REFERENCE,
    ErrorTable,
    Outcome,
    best_within,
    candidate_key,
    candidates,
    choose,
    discordant,
    evaluate,
    evaluate_all,
    folds,
    gap_bound,
    mcnemar_p,
    paired_gap,
    paired_se,
    runnable,
    standings,
)

BENCH = Path(__file__).resolve().parents[1] / "bench"
GRID = li_timesteps(1000, 32)  # baseline-32's grid: the columns of a tuning run's table


def baseline(n: int) -> tuple[str, BaselineOptions]:
    return ("baseline", BaselineOptions(n_timesteps=n))


def plant(predictions: dict[int, list[int]], n_classes: int) -> ErrorTable:
    """A table on which the baseline at ``n`` timesteps predicts ``predictions[n][i]`` for image ``i``:
    every error is 1, but the planted class's at that baseline's timesteps, 0.5 (the grids are disjoint)."""
    grids = {n: li_timesteps(1000, n) for n in predictions}
    timesteps = [t for g in grids.values() for t in g]
    assert len(set(timesteps)) == len(timesteps)  # each baseline's timesteps are its own
    n_images = len(next(iter(predictions.values())))
    errors = torch.ones(n_images, n_classes, len(timesteps), dtype=torch.float64)  # (n_images, n_classes, n_timesteps)
    for n, predicted in predictions.items():
        columns = [timesteps.index(t) for t in grids[n]]
        for i, c in enumerate(predicted):
            errors[i, c, columns] = 0.5
    return ErrorTable(errors, timesteps)


def outcomes_of(table: ErrorTable, configs, labels) -> dict[str, Outcome]:
    return evaluate_all(runnable(configs), table, labels)


def keys(*configs) -> list[str]:
    return [candidate_key(s, o) for s, o in configs]


# ----------------------------------------------------------------------------- the rule
def test_the_rule_picks_the_cheapest_configuration_as_accurate_as_baseline_32_within_each_budget():
    # baseline-4 predicts what baseline-32 does (right but on 4 images); baseline-1 is cheaper and
    # wrong on 10 more. Two folds are the members the rule reads
    n_classes, labels = 5, [i % 5 for i in range(40)]
    wrong = lambda i, y: (y + 1) % n_classes  # noqa: E731
    b32 = [wrong(i, y) if i < 4 else y for i, y in enumerate(labels)]
    b1 = [wrong(i, y) if i < 14 else y for i, y in enumerate(labels)]
    table = plant({32: b32, 4: list(b32), 1: b1}, n_classes)
    k1, k4, k32 = keys(baseline(1), baseline(4), baseline(32))
    out = outcomes_of(table, [baseline(1), baseline(4), baseline(32)], labels)
    assert [out[k].top1 for k in (k1, k4, k32)] == [26 / 40, 36 / 40, 36 / 40]
    assert [out[k].evals_per_image for k in (k1, k4, k32)] == [5, 20, 160]

    members = [f.held_out for f in folds(labels, 2, seed=0)]
    cands = {k: [out[k].subset(m) for m in members] for k in (k1, k4, k32)}
    base = [out[k32].subset(m) for m in members]
    s = standings(cands, base, z=1.0)
    assert s[k4] == (0.0, 1 / 8, 1 / 8) and s[k32] == (0.0, 1.0, 1.0)
    assert s[k1].worst_gap > 0.25 and s[k1].worst_ratio == 1 / 32
    assert choose(cands, base, budget=1 / 16) == k1  # the only one that cheap
    assert choose(cands, base, budget=1 / 8) == k4
    assert choose(cands, base, budget=1 / 2) == k4
    assert choose(cands, base, budget=1.0) == k4  # as accurate as baseline-32 itself, and cheaper
    assert choose(cands, base, budget=1 / 64) == k1  # none that cheap: the cheapest
    assert choose(cands, base, budget=1 / 64, strict=True) is None
    assert choose({}, base, budget=1.0) is None
    # one member's most accurate within each budget, no margin
    one = {k: out[k] for k in (k1, k4, k32)}
    assert [best_within(one, out[k32], b) for b in (1 / 64, 1 / 16, 1 / 8, 1.0)] == [None, k1, k4, k4]


def test_the_margin_refuses_a_configuration_lucky_on_a_handful_of_images():
    # on 8 images baseline-4 is one image ahead of baseline-32 (right on two it misses, wrong on one
    # it gets), baseline-8 predicts exactly what baseline-32 does: without the margin the lucky one
    # wins, with one standard error the safe one does
    n_classes, labels = 3, [i % 3 for i in range(8)]
    other = lambda y: (y + 1) % n_classes  # noqa: E731
    b32 = [y if i < 6 else other(y) for i, y in enumerate(labels)]
    b4 = [other(y) if i == 0 else y for i, y in enumerate(labels)]
    table = plant({32: b32, 8: list(b32), 4: b4}, n_classes)
    lucky, safe, k32 = keys(baseline(4), baseline(8), baseline(32))
    out = outcomes_of(table, [baseline(4), baseline(8), baseline(32)], labels)
    assert (out[lucky].top1, out[safe].top1, out[k32].top1) == (7 / 8, 6 / 8, 6 / 8)
    cands, base = {lucky: [out[lucky]], safe: [out[safe]]}, [out[k32]]
    assert gap_bound(out[lucky], out[k32], z=0) == -1 / 8
    assert gap_bound(out[lucky], out[k32], z=1) == pytest.approx(-1 / 8 + math.sqrt((3 / 8 - 1 / 64) / 8))  # +0.087: parts on 3 of 8
    assert gap_bound(out[safe], out[k32], z=1) == 0.0
    assert choose(cands, base, budget=1 / 4, z=0) == lucky
    assert choose(cands, base, budget=1 / 4, z=1) == safe
    # the same pattern on ten times the images is evidence, not luck: the margin lets it win
    many = [y for _ in range(10) for y in labels]
    table = plant({32: b32 * 10, 8: b32 * 10, 4: b4 * 10}, n_classes)
    out = outcomes_of(table, [baseline(4), baseline(8), baseline(32)], many)
    assert gap_bound(out[lucky], out[k32], z=1) < 0
    assert choose({lucky: [out[lucky]], safe: [out[safe]]}, [out[k32]], budget=1 / 4, z=1) == lucky


def test_the_rule_refuses_results_on_other_members_than_the_baseline():
    o = Outcome((True, False), (3, 3))
    with pytest.raises(DiffclsError, match=r"1 member\(s\) and baseline-32 on 2"):
        choose({"x": [o]}, [o, o], budget=1.0)


# ----------------------------------------------------------------------------- paired statistics
def test_mcnemar_and_the_paired_standard_error_against_hand_computed_values():
    a, b = "1111111000", "1111000100"  # a right on 7, b on 5; only a: 3 images, only b: 1
    assert discordant(a, b) == (3, 1)
    gap, se = paired_gap(a, b)
    # d = a - b per image: three +1, one -1, six 0; mean 0.2, variance 0.4 - 0.04 = 0.36, se = sqrt(0.36 / 10)
    assert gap == pytest.approx(0.2) and se == pytest.approx(0.18973665961010275)
    assert paired_se(0.2, 4, 10) == pytest.approx(math.sqrt(0.036))
    assert paired_gap([c == "1" for c in a], [c == "1" for c in b]) == (gap, se)  # booleans or a record's string
    # McNemar: 1 of the 4 discordant images for b; two-sided exact p = 2 * P(X <= 1 | 4, 1/2) = 2 * 5 / 16
    assert mcnemar_p(a, b) == pytest.approx(10 / 16)
    assert mcnemar_p("1" * 10, "0" * 10) == pytest.approx(2 / 2**10)
    assert mcnemar_p("0" * 6 + "1" * 6, "0" * 6 + "1" * 6) == 1.0  # they never part
    assert mcnemar_p(a, b) == mcnemar_p(b, a)
    with pytest.raises(DiffclsError, match="'0'"):
        discordant("1012", "1111")
    with pytest.raises(DiffclsError, match="same images"):
        discordant("101", "1111")


# ----------------------------------------------------------------------------- the table
class Recording:
    """A batch scorer that logs each image's requests, call by call, as the image's sampler made them."""

    def __init__(self, table: ErrorTable) -> None:
        self.table, self.n_classes = table, table.n_classes
        self.requests: dict[int, list[tuple]] = {}

    def __call__(self, image_idx, class_idx, timesteps, noise_idx):
        per_image: dict[int, list] = {}
        for i, c, t, n in zip(image_idx, class_idx, timesteps, noise_idx):
            per_image.setdefault(i, []).append((c, t, n))
        for i, triples in per_image.items():
            self.requests.setdefault(i, []).append(tuple(triples))
        return self.table(image_idx, class_idx, timesteps, noise_idx)


def random_table(n_images: int = 6, n_classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, ErrorTable, list[int]]:
    generator = torch.Generator().manual_seed(seed)
    errors = 1.0 + 0.3 * torch.randn(n_images, n_classes, 32, generator=generator, dtype=torch.float64)  # (n_images, n_classes, 32)
    labels = [i % n_classes for i in range(n_images)]
    errors[range(n_images), labels] -= 0.15  # the label is ahead on average, so the configurations disagree
    return errors, ErrorTable(errors, GRID), labels


def test_the_table_replays_what_a_scorer_over_the_same_tensor_gives_request_for_request():
    errors, table, labels = random_table()
    configs = [REFERENCE, *list(candidates())[::9]]
    assert {s for s, _ in configs} == {"baseline", "adaptive", "hierarchical", "ttest", "race"}
    for sampler, options in configs:
        fn = SAMPLERS.get(sampler).fn
        recording = Recording(table)
        outcome = evaluate(fn, options, recording, labels)
        for i, y in enumerate(labels):
            calls = []

            def score(class_idx, timesteps, noise_idx, i=i, calls=calls):
                calls.append(tuple(zip(class_idx, timesteps, noise_idx)))
                return [float(errors[i, c, GRID.index(t)]) for c, t in zip(class_idx, timesteps)]

            result = classify(fn(table.n_classes, options, 1000), score)
            assert recording.requests[i] == calls, (sampler, options)
            assert (result.prediction == y, result.n_evals) == (outcome.correct[i], outcome.n_evals[i])


def test_every_candidate_replays_on_baseline_32s_grid_and_a_subset_is_a_fold_of_the_images():
    _, table, labels = random_table(n_images=5, n_classes=4, seed=1)
    configs = runnable(candidates())
    assert len(configs) == len(list(candidates())) == 313  # the keys are distinct
    out = evaluate_all(configs, table, labels)  # would raise for a timestep off the grid
    assert len({o.correct for o in out.values()}) > 3
    idx = [4, 1, 2]
    sub = evaluate_all(configs, table.subset(idx), [labels[i] for i in idx])
    assert sub == {k: o.subset(idx) for k, o in out.items()}


def test_the_outcomes_do_not_depend_on_how_the_configurations_are_split_over_processes():
    _, table, labels = random_table(n_images=8, n_classes=4, seed=2)
    configs = runnable(list(candidates())[::5])
    one = evaluate_all(configs, table, labels, workers=1)
    assert list(one) == list(configs)
    assert evaluate_all(configs, table, labels, workers=2) == one


def test_a_configuration_off_the_table_is_refused_by_name():
    _, table, labels = random_table()
    configs = runnable([("ttest", TTestOptions(timesteps="uniform"))])
    with pytest.raises(DiffclsError, match=r"ttest .*timestep \d+, which the error table does not hold"):
        evaluate_all(configs, table, labels)
    with pytest.raises(DiffclsError, match="noise 1"):
        table([0], [0], [GRID[0]], [1])


def test_a_table_is_built_from_a_tensor_or_from_errors_computed_one_at_a_time():
    errors, table, _ = random_table(n_images=2, n_classes=3)
    by_triple = {(i, c, t, 0): float(errors[i, c, j]) for i in range(2) for c in range(3) for j, t in enumerate(GRID)}
    again = ErrorTable.from_mapping(by_triple, 2, 3)
    assert again.timesteps == tuple(GRID)
    triples = list(by_triple)
    assert again(*zip(*triples)) == table(*zip(*triples)) == list(by_triple.values())
    del by_triple[(1, 2, GRID[5], 0)]
    with pytest.raises(DiffclsError, match=rf"\(1, 2, {GRID[5]}\)"):
        ErrorTable.from_mapping(by_triple, 2, 3)
    with pytest.raises(DiffclsError, match="noise"):
        ErrorTable.from_mapping({(0, 0, 15, 1): 1.0}, 1, 1)
    with pytest.raises(DiffclsError, match="shape"):
        ErrorTable(torch.ones(2, 3), GRID)
    with pytest.raises(DiffclsError, match="distinct timesteps"):
        ErrorTable(torch.ones(2, 3, 4), [1, 2, 3])
    with pytest.raises(DiffclsError, match="non-finite"):
        ErrorTable(torch.full((1, 2, 1), math.nan), [500])


# ----------------------------------------------------------------------------- folds and candidates
def test_folds_are_stratified_deterministic_and_partition_the_images():
    labels = [0] * 7 + [1] * 5 + [2] * 3
    parts = folds(labels, 3, seed=4)
    assert sorted(i for f in parts for i in f.held_out) == list(range(15))
    for f in parts:
        assert set(f.train) | set(f.held_out) == set(range(15)) and not set(f.train) & set(f.held_out)
        assert list(f.held_out) == sorted(f.held_out)
    assert sorted(len(f.held_out) for f in parts) == [5, 5, 5]
    for y in (0, 1, 2):
        counts = [sum(labels[i] == y for i in f.held_out) for f in parts]
        assert max(counts) - min(counts) <= 1
    assert folds(labels, 3, seed=4) == parts
    assert folds(labels, 3, seed=5) != parts
    for k in (1, 16, 2.0):
        with pytest.raises(DiffclsError, match="k between 2 and the number of images"):
            folds(labels, k)


def test_candidates_are_named_by_family_and_an_unknown_family_is_refused():
    races = list(candidates(["race"]))
    assert races and {s for s, _ in races} == {"race"}
    assert len(races) + len(list(candidates(["adaptive", "hierarchical", "ttest"]))) == len(list(candidates()))
    with pytest.raises(DiffclsError, match="Did you mean 'race'"):
        list(candidates(["racee"]))


def test_the_candidates_are_the_runnable_rows_of_the_bench_grid_in_its_order():
    # bench/suite.py's recorded grid is the package's candidates plus the reference baselines and
    # its own capped races (RaceVariant), which the package does not know
    sys.path.insert(0, str(BENCH))
    from suite import grid
    from variants import RaceVariant

    rows = [(s, o) for s, o in grid() if s != "baseline" and not isinstance(o, RaceVariant)]
    assert rows == list(candidates())
    assert REFERENCE in grid()
