"""The race and the paired t-test samplers on planted scorers.

Each planted scorer gives class ``c`` the error ``base[c] + jitter * noise(c, t, n)``: with a large
planted gap and small jitter the true class (the lowest ``base``) must never be eliminated; a
close call (a small gap) must cost more evaluations than an easy one; and a confidence level that
forbids elimination must reproduce the baseline exactly.
"""

from __future__ import annotations

import random

import pytest
from test_samplers import Recorder

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import BaselineOptions, baseline, classify, li_timesteps
from diffcls_plugin.samplers.base import Evaluations
from diffcls_plugin.samplers.race import RaceOptions, _eliminate, population, race, race_over, visit_order
from diffcls_plugin.samplers.ttest import TTestOptions, draws, one_sided_p, ttest


def planted(n_classes: int, true: int, gap: float) -> list[float]:
    return [0.0 if c == true else gap * (1 + 0.1 * c) for c in range(n_classes)]


SAMPLERS = {
    "race": lambda n, o=None: race(n, o or RaceOptions()),
    "race-per-class": lambda n, o=None: race(n, o or RaceOptions(variance="per-class", alpha=0.2, min_slots=4)),
    "race-pooled": lambda n, o=None: race(n, o or RaceOptions(variance="pooled", min_slots=2, alpha=0.05, correction="none")),
    "race-pooled-holm": lambda n, o=None: race(n, o or RaceOptions(variance="pooled", min_slots=2, alpha=0.05, correction="holm")),
    "race-per-class-bonferroni": lambda n, o=None: race(n, o or RaceOptions(variance="per-class", min_slots=4, correction="bonferroni")),
    "race-beam": lambda n, o=None: race(n, o or RaceOptions(alpha=0.1, min_slots=2, beam_factor=1.25, min_beam=2)),
    "ttest": lambda n, o=None: ttest(n, o or TTestOptions(min_samples=4, max_samples=64)),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("seed", range(5))
def test_never_eliminates_the_true_class_when_the_gap_is_large(name, seed):
    for true in (0, 7, 25):
        scorer = Recorder(planted(26, true, gap=1.0), jitter=0.05, seed=seed)
        result = classify(SAMPLERS[name](26), scorer)
        assert result.prediction == true
        assert result.stop_reason == "beam"
        # paired: every class's slots are the first slots of the true class's, in the same order
        kept = scorer.pairs_of(true)
        for c in range(26):
            seen = scorer.pairs_of(c)
            assert seen and seen == kept[: len(seen)]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_spends_more_on_close_calls_than_on_easy_ones(name):
    easy, close = [], []
    for seed in range(6):
        easy.append(classify(SAMPLERS[name](10), Recorder(planted(10, 3, gap=1.0), jitter=0.2, seed=seed)).n_evals)
        close.append(classify(SAMPLERS[name](10), Recorder(planted(10, 3, gap=0.04), jitter=0.2, seed=seed)).n_evals)
    assert sum(close) > 1.5 * sum(easy), (easy, close)
    assert sorted(close)[len(close) // 2] > max(easy), (easy, close)  # the median close call costs more


@pytest.mark.parametrize("variance", ["per-class", "pooled"])
@pytest.mark.parametrize("n_timesteps", [32, 10])
def test_race_that_cannot_eliminate_equals_the_baseline(variance, n_timesteps):
    for seed in range(4):
        scorer_a = Recorder(planted(10, 4, gap=0.05), jitter=0.5, seed=seed)
        scorer_b = Recorder(planted(10, 4, gap=0.05), jitter=0.5, seed=seed)
        a = classify(race(10, RaceOptions(alpha=0, n_timesteps=n_timesteps, order="stratified", variance=variance)), scorer_a)
        b = classify(baseline(10, BaselineOptions(n_timesteps=n_timesteps)), scorer_b)
        assert a.ranking == b.ranking
        assert a.scores == b.scores
        assert a.n_evals == b.n_evals == 10 * n_timesteps
        assert sorted(scorer_a.triples) == sorted(scorer_b.triples)


def test_race_that_runs_to_the_end_decides_as_the_baseline_among_survivors():
    # a near tie between classes 1 and 2: the race must visit the whole grid for them and then
    # pick exactly the baseline's winner
    base = [1.0, 0.0, 0.001, 1.0, 1.0]
    for seed in range(5):
        a = classify(race(5, RaceOptions(alpha=0.001)), Recorder(base, jitter=0.3, seed=seed))
        b = classify(baseline(5, BaselineOptions()), Recorder(base, jitter=0.3, seed=seed))
        assert a.prediction == b.prediction
        assert a.n_evals < b.n_evals


def test_ttest_that_cannot_eliminate_scores_every_class_every_round():
    options = TTestOptions(p=0, min_samples=4, max_samples=12)
    scorer = Recorder(planted(6, 2, gap=1.0), jitter=0.05)
    result = classify(ttest(6, options), scorer)
    assert result.n_evals == 6 * 12
    assert result.prediction == 2
    assert result.stop_reason == "schedule"


def test_stratified_order_covers_the_grid_evenly():
    order = visit_order(32, "stratified")
    assert sorted(order) == list(range(32))
    assert order[0] == 16  # the middle of the grid first (t = 511 of li_timesteps(1000, 32))
    for k in (2, 4, 8, 16):
        prefix = sorted(order[:k])
        gaps = {b - a for a, b in zip(prefix, prefix[1:])}
        assert gaps == {32 // k}, (k, prefix)
    for n in (1, 5, 10, 33):
        assert sorted(visit_order(n, "stratified")) == list(range(n))
    assert li_timesteps(1000, 32)[16] == 511


def test_ttest_draws_and_p_values():
    rounds = draws(TTestOptions(max_samples=3000, timesteps="uniform", seed=3), 1000)
    assert len(rounds) == 3000 and all(0 <= t < 1000 for t, _ in rounds)
    assert len(set(rounds)) == 3000  # a repeated timestep gets a fresh noise
    assert rounds == draws(TTestOptions(max_samples=3000, timesteps="uniform", seed=3), 1000)
    assert rounds != draws(TTestOptions(max_samples=3000, timesteps="uniform", seed=4), 1000)
    # the grid: the 32-timestep baseline's own (timestep, noise) pairs, every prefix spread out
    grid = draws(TTestOptions(max_samples=32), 1000)
    assert sorted(grid) == [(t, 0) for t in li_timesteps(1000, 32)]
    assert grid == [(li_timesteps(1000, 32)[i], 0) for i in visit_order(32, "stratified")]
    assert sorted(t for t, _ in grid[:4]) == [li_timesteps(1000, 32)[i] for i in (0, 8, 16, 24)]
    assert draws(TTestOptions(max_samples=32, seed=5), 1000) == grid  # the seed is the uniform draws'
    assert sorted(draws(TTestOptions(max_samples=1000), 1000)) == [(t, 0) for t in range(1000)]  # every timestep once
    assert one_sided_p([1.0, 1.1, 0.9, 1.05]) < 1e-3
    assert one_sided_p([-1.0, -1.1, -0.9, -1.05]) > 0.999
    assert one_sided_p([0.5, -0.5, 0.4, -0.4]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "options, key",
    [
        (RaceOptions(alpha=0.7), "race.alpha"),
        (RaceOptions(min_slots=1), "race.min_slots"),
        (RaceOptions(order="random"), "race.order"),
        (RaceOptions(order="ascending"), "race.order 'ascending' was removed"),  # a value never measured for the race
        (RaceOptions(variance="shared"), "race.variance"),
        (RaceOptions(correction="sidak"), "race.correction"),
        (RaceOptions(beam_factor=0.5), "race.beam_factor"),
        (RaceOptions(beam_factor=float("inf")), "race.beam_factor"),
        (RaceOptions(min_beam=0), "race.min_beam"),
        (TTestOptions(p=-1), "ttest.p"),
        (TTestOptions(min_samples=10, max_samples=5), "ttest.max_samples"),
        (TTestOptions(weight_rate=float("nan")), "ttest.weight_rate"),
        (TTestOptions(timesteps="random"), "ttest.timesteps"),
        (TTestOptions(max_samples=2000), "ttest.max_samples"),  # more grid timesteps than the model has
    ],
)
def test_bad_options_name_the_key(options, key):
    with pytest.raises(DiffclsError, match=key.replace(".", r"\.")):
        options.validate(1000)


def noisy_of(scorer, c, t):
    from test_samplers import noisy

    return noisy(c, t, 0, scorer.seed)


def test_race_over_a_prefix_of_the_stratified_order_without_elimination_is_the_baseline_on_a_sub_grid():
    grid = li_timesteps(1000, 32)
    options = RaceOptions(alpha=0, order="stratified")
    for k in (1, 2, 8):
        scorer = Recorder(planted(10, 4, gap=0.05), jitter=0.5, seed=k)
        result = classify(race_over(10, options, population(options)[:k]), scorer)
        visited = sorted({t for _, t, _ in scorer.triples})
        assert visited == [grid[i] for i in sorted(visit_order(32, "stratified")[:k])]
        assert result.n_evals == 10 * k and result.stop_reason == "schedule"
        means = [sum(scorer.base[c] + 0.5 * noisy_of(scorer, c, t) for t in visited) / k for c in range(10)]
        assert result.prediction == min(range(10), key=lambda c: (means[c], c))


@pytest.mark.parametrize("variance", ["per-class", "pooled"])
def test_race_over_a_population_decides_as_the_baseline_on_it(variance):
    # the population is the middle k slots of the grid. A near tie between classes 1 and 2 runs to
    # its end, where the race must pick the baseline's winner on exactly those k timesteps (the
    # finite-population bound counts k slots, so it reaches 0)
    grid = li_timesteps(1000, 32)
    base = [1.0, 0.0, 0.002, 1.0, 1.0, 1.0]
    options = RaceOptions(alpha=0.001, variance=variance)
    ran_out = 0
    for k in (8, 16):
        middle = sorted(grid[i] for i in visit_order(32, "center-out")[:k])
        for seed in range(4):
            scorer = Recorder(base, jitter=0.3, seed=seed)
            result = classify(race_over(6, options, population(options)[:k]), scorer)
            visited = sorted({t for _, t, _ in scorer.triples})
            assert set(visited) <= set(middle)
            survivors = [c for c in range(6) if len(scorer.pairs_of(c)) == len(visited)]
            if result.n_rounds == k:  # it ran to the end of the population
                ran_out += 1
                assert visited == middle
                means = {c: sum(base[c] + 0.3 * noisy_of(scorer, c, t) for t in middle) / k for c in survivors}
                assert result.prediction == min(means, key=lambda c: (means[c], c))
            assert result.prediction in (1, 2)
            assert result.n_evals < 6 * k
    assert ran_out  # the near tie did reach the end of the population


def test_a_removed_option_is_refused_naming_it_its_former_default_and_the_fix():
    # race.n_noises, race.max_slots and race.screen went (RaceOptions.REMOVED); a config that sets one
    # must say so, not just call it unknown
    assert set(RaceOptions.REMOVED) == {"n_noises", "max_slots", "screen"}
    assert not set(RaceOptions.REMOVED) & set(RaceOptions.__dataclass_fields__)
    assert {k: r.default for k, r in RaceOptions.REMOVED.items()} == {"n_noises": 1, "max_slots": None, "screen": 1.0}
    err = RaceOptions.removed_option_error("screen", "my.yaml")
    assert str(err).startswith("my.yaml: race.screen was removed: race now always runs as it did at race.screen: 1.0")
    assert "Delete race.screen" in str(err) and "race.beam_factor" in str(err)
    assert "race.max_slots: null" in str(RaceOptions.removed_option_error("max_slots"))
    assert RaceOptions.removed_option_error("alpha") is None  # an option it has
    assert RaceOptions.removed_option_error("sreen") is None  # an ordinary unknown key
    with pytest.raises(TypeError):
        RaceOptions(screen=0.5)


@pytest.mark.parametrize("beam_factor, min_beam", [(1.25, 2), (2.0, 1), (1.1, 3)])
def test_beamed_race_that_cannot_eliminate_is_the_hierarchical_sampler(beam_factor, min_beam):
    from diffcls_plugin.samplers import HierarchicalOptions, hierarchical

    for seed in range(3):
        scorer_a = Recorder(planted(12, 5, gap=0.05), jitter=0.5, seed=seed)
        scorer_b = Recorder(planted(12, 5, gap=0.05), jitter=0.5, seed=seed)
        options = RaceOptions(alpha=0, order="descending", beam_factor=beam_factor, min_beam=min_beam)
        a = classify(race(12, options), scorer_a)
        b = classify(hierarchical(12, HierarchicalOptions(beam_factor=beam_factor, min_beam=min_beam, direction="descending")), scorer_b)
        assert a.ranking == b.ranking and a.scores == b.scores
        assert a.n_evals == b.n_evals < 12 * 32
        assert [sorted(c) for c in scorer_a.calls] == [sorted(c) for c in scorer_b.calls]  # the same evaluations, request by request


def test_beamed_race_cuts_by_rank_from_the_first_slot_and_the_bounds_cut_further():
    from diffcls_plugin.samplers import HierarchicalOptions, hierarchical

    spent, beam_only = [], []
    for seed in range(4):
        scorer = Recorder(planted(26, 9, gap=1.0), jitter=0.05, seed=seed)
        result = classify(race(26, RaceOptions(alpha=0.05, min_slots=4, beam_factor=1.5, min_beam=2)), scorer)
        assert result.prediction == 9
        assert [len(call) for call in scorer.calls[:3]] == [26, 17, 11]  # floor(26 / 1.5), floor(17 / 1.5)
        spent.append(result.n_evals)
        beam_only.append(
            classify(hierarchical(26, HierarchicalOptions(beam_factor=1.5, min_beam=2)), Recorder(planted(26, 9, gap=1.0), jitter=0.05, seed=seed)).n_evals
        )
    # an easy image: the bounds end the race where the beam alone keeps two classes to the end
    assert max(spent) < min(beam_only), (spent, beam_only)


def test_race_with_a_beam_factor_of_one_is_the_plain_race():
    for seed in range(3):
        a = classify(race(10, RaceOptions(beam_factor=1.0, min_beam=5)), Recorder(planted(10, 2, gap=0.05), jitter=0.5, seed=seed))
        b = classify(race(10, RaceOptions()), Recorder(planted(10, 2, gap=0.05), jitter=0.5, seed=seed))
        assert a == b


def test_pooled_variance_decides_after_fewer_slots_than_per_class_variances():
    # an easy image: per-class bounds rest on one difference after two slots and must wait, the
    # pooled bound rests on one per class and eliminates at once; both keep the true class
    per_class, pooled = [], []
    for seed in range(12):
        for variance, spent in (("per-class", per_class), ("pooled", pooled)):
            scorer = Recorder(planted(10, 6, gap=0.3), jitter=0.3, seed=seed)
            result = classify(race(10, RaceOptions(variance=variance, min_slots=2, alpha=0.05, correction="none")), scorer)
            assert result.prediction == 6
            spent.append(result.n_evals)
    assert min(pooled) >= 2 * 10  # nothing is eliminated before every class has two slots
    # what each spends beyond those two slots: the pooled race less than half the per-class one's
    assert sum(n - 20 for n in pooled) < 0.5 * sum(n - 20 for n in per_class), (pooled, per_class)


@pytest.mark.parametrize("pooled", [False, True])
def test_corrections_eliminate_nested_sets(pooled):
    # at one slot, on the same errors: Bonferroni's eliminations are among Holm's, Holm's among
    # the uncorrected test's; with two survivors (one comparison) all three agree
    rng = random.Random(0)
    strict = 0
    for _trial in range(300):
        k, n = rng.choice((2, 3, 6, 26)), rng.choice((2, 3, 5, 9))
        evals = Evaluations()
        base = [rng.uniform(0, 0.3) for _ in range(k)]
        slots = [(t, 0) for t in range(n)]
        gen = evals.ensure((c, t, j) for t, j in slots for c in range(k))
        request = next(gen)
        with pytest.raises(StopIteration):
            gen.send([base[c] + rng.gauss(0, 0.2) for c in request.class_idx])
        out = {name: set(_eliminate(list(range(k)), slots, 32, evals, 0.2, pooled, name)[1]) for name in ("none", "holm", "bonferroni")}
        assert out["bonferroni"] <= out["holm"] <= out["none"]
        if k == 2:
            assert out["bonferroni"] == out["holm"] == out["none"]
        strict += out["bonferroni"] < out["holm"] or out["holm"] < out["none"]
    assert strict > 10  # the corrections do bite


def test_corrected_race_spends_more_and_predicts_the_true_class_more_often():
    # a weak model with many classes: 26 classes, the true one slightly ahead, much noise. The
    # uncorrected race tests 25 eliminations at every slot and eliminates the true class more often
    right = {"none": 0, "holm": 0, "bonferroni": 0}
    spent = dict(right)
    for seed in range(20):
        for correction in right:
            scorer = Recorder(planted(26, 4, gap=0.08), jitter=0.5, seed=seed)
            result = classify(race(26, RaceOptions(alpha=0.2, correction=correction, variance="pooled", min_slots=2)), scorer)
            right[correction] += result.prediction == 4
            spent[correction] += result.n_evals
    assert right["none"] < right["holm"] <= right["bonferroni"], right
    assert spent["none"] < spent["holm"] < spent["bonferroni"], spent
