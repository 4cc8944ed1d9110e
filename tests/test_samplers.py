"""The samplers on planted scorers: exact equivalences, evaluation counts, pairing, reuse."""

from __future__ import annotations

import hashlib
import math

import pytest

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import (
    AdaptiveOptions,
    BaselineOptions,
    HierarchicalOptions,
    adaptive,
    baseline,
    classify,
    hierarchical,
    li_timesteps,
    run_samplers,
    schedule,
)


def noisy(c: int, t: int, n: int, seed: int = 0) -> float:
    """A deterministic pseudo-random error in [0, 1) for a triple."""
    digest = hashlib.blake2b(f"{seed}:{c}:{t}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class Recorder:
    """A planted scorer: ``base[c] + jitter * noisy(c, t, n)``; records every call."""

    def __init__(self, base, jitter: float = 0.5, seed: int = 0) -> None:
        self.base = base
        self.jitter = jitter
        self.seed = seed
        self.calls: list[list[tuple[int, int, int]]] = []

    def __call__(self, class_idx, timesteps, noise_idx):
        triples = list(zip(class_idx, timesteps, noise_idx))
        self.calls.append(triples)
        return [self.base[c] + self.jitter * noisy(c, t, n, self.seed) for c, t, n in triples]

    @property
    def triples(self):
        return [k for call in self.calls for k in call]

    def pairs_of(self, c: int):
        return [(t, n) for cc, t, n in self.triples if cc == c]


def test_li_grid_matches_their_formula():
    assert li_timesteps(1000, 32) == list(range(15, 1000, 31))[:32]
    assert li_timesteps(1000, 500)[:3] == [1, 3, 5]
    assert len(li_timesteps(1000, 1000)) == 1000


@pytest.mark.parametrize("n_trials", [1, 3])
def test_hierarchical_that_never_prunes_equals_baseline_bit_for_bit(n_trials):
    n_classes = 7
    base = [0.5] * n_classes  # only the jitter separates the classes: a hard, noisy problem
    scorer_a, scorer_b = Recorder(base, seed=3), Recorder(base, seed=3)
    a = classify(baseline(n_classes, BaselineOptions(n_timesteps=16, n_trials=n_trials)), scorer_a)
    b = classify(
        hierarchical(n_classes, HierarchicalOptions(n_timesteps=16, n_noises=n_trials, beam_factor=1, patience=None)),
        scorer_b,
    )
    assert a.ranking == b.ranking
    assert a.scores == b.scores  # floats compared exactly
    assert a.n_evals == b.n_evals == n_classes * 16 * n_trials
    assert set(scorer_a.triples) == set(scorer_b.triples)
    assert b.stop_reason == "schedule" and b.n_rounds == 16


def test_baseline_plan_and_one_flat_batch():
    scorer = Recorder([0.3, 0.1, 0.2], jitter=0.01)
    result = classify(baseline(3, BaselineOptions(n_timesteps=8, n_trials=2)), scorer)
    assert len(scorer.calls) == 1  # every triple in one flat request
    assert result.n_evals == len(scorer.triples) == 3 * 8 * 2
    assert result.prediction == 1
    assert result.ranking == (1, 2, 0)


@pytest.mark.parametrize(
    "n_classes, to_keep, n_samples, expected",
    [
        (10, (5, 1), (50, 500), 2750),  # CIFAR10 in Li et al. (reference-protocols.md)
        (10, (5, 1), (100, 500), 3000),  # STL10
        (100, (20, 10, 5, 1), (20, 50, 100, 500), 5550),  # Aircraft: their code, grids do not nest
        # Food101: the paper's 5120 assumes nested grids, as for Aircraft's 5100; their code gives 5570
        (101, (20, 10, 5, 1), (20, 50, 100, 500), 5570),
        # ImageNet: the paper's 100000 assumes nested grids; their code's grids give 124500
        (1000, (500, 50, 10, 1), (50, 100, 500, 1000), 124500),
    ],
)
def test_adaptive_counts_match_li_et_al(n_classes, to_keep, n_samples, expected):
    scorer = Recorder([0.01 * c for c in range(n_classes)], jitter=0.001)
    result = classify(adaptive(n_classes, AdaptiveOptions(to_keep=to_keep, n_samples=n_samples)), scorer)
    assert result.n_evals == expected
    assert len(scorer.triples) == len(set(scorer.triples)) == expected  # nothing evaluated twice
    assert len(scorer.calls) == len(to_keep)  # one flat batch per stage
    assert result.prediction == 0


def test_adaptive_survivors_share_all_pairs_and_reuse_earlier_stages():
    scorer = Recorder([0.2, 0.1, 0.3, 0.4, 0.0, 0.5], jitter=0.01)
    result = classify(adaptive(6, AdaptiveOptions(to_keep=(3, 1), n_samples=(4, 16))), scorer)
    winner_pairs = scorer.pairs_of(result.prediction)
    assert len(winner_pairs) == 16
    stage1 = scorer.calls[0]
    # every class saw the same first-stage pairs
    first = {c: sorted((t, n) for cc, t, n in stage1 if cc == c) for c in range(6)}
    assert all(pairs == first[0] for pairs in first.values())
    # stage 2 asks only for the new timesteps of the three survivors
    assert {c for c, _, _ in scorer.calls[1]} == set(result.ranking[:3])
    assert len(scorer.calls[1]) == 3 * 12


def test_hierarchical_beam_shrinks_by_beam_factor():
    n_classes = 100
    scorer = Recorder([0.001 * c for c in range(n_classes)], jitter=0.0001)
    result = classify(hierarchical(n_classes, HierarchicalOptions(beam_factor=2, min_beam=1, n_timesteps=32)), scorer)
    sizes = [len(call) for call in scorer.calls]
    assert sizes == [100, 50, 25, 12, 6, 3]  # keep floor(|beam| / 2) after each timestep
    assert result.stop_reason == "beam"
    assert result.n_evals == sum(sizes)
    assert result.prediction == 0


def test_hierarchical_beam_factor_below_two_and_noises_per_timestep():
    scorer = Recorder([0.1 * c for c in range(10)], jitter=0.01)
    result = classify(hierarchical(10, HierarchicalOptions(beam_factor=1.5, min_beam=1, n_noises=3, n_timesteps=32)), scorer)
    assert result.stop_reason == "beam" and result.prediction == 0
    sizes = [len(call) // 3 for call in scorer.calls]
    expected, beam = [], 10
    while beam > 1:
        expected.append(beam)
        beam = max(1, math.floor(beam / 1.5))
    assert sizes == expected
    assert all(len({n for _, _, n in call}) == 3 for call in scorer.calls)


def test_every_class_in_the_beam_gets_the_same_pairs_in_the_same_order():
    n_classes = 9
    scorer = Recorder([0.5] * n_classes, seed=11)
    options = HierarchicalOptions(beam_factor=1.3, n_noises=2, n_timesteps=10, direction="descending")
    result = classify(hierarchical(n_classes, options), scorer)
    reference = scorer.pairs_of(result.prediction)
    for c in range(n_classes):
        pairs = scorer.pairs_of(c)
        assert pairs == reference[: len(pairs)], f"class {c} saw different (t, noise) pairs"
    assert [t for t, _ in reference[::2]] == schedule(options)[: len(reference) // 2]


def test_early_stop_after_patience_further_timesteps():
    scorer = Recorder([0.5, 0.1, 0.5, 0.5], jitter=0.01)  # class 1 is best at every timestep
    options = HierarchicalOptions(beam_factor=1, patience=3, n_timesteps=20)
    result = classify(hierarchical(4, options), scorer)
    assert result.stop_reason == "patience"
    assert result.n_rounds == 4  # best at round 1, then stayed best for 3 further timesteps
    assert result.n_evals == 4 * 4
    assert result.prediction == 1


def test_no_early_stop_while_the_best_class_changes():
    # class 0 leads at the first timesteps, class 1 after: the streak restarts when the lead changes
    def score(class_idx, timesteps, noise_idx):
        return [(0.0 if t < 300 else 1.0) if c == 0 else 0.2 for c, t in zip(class_idx, timesteps)]

    options = HierarchicalOptions(beam_factor=1, patience=4, t_step=100, direction="ascending")  # t = 0, 100, ..., 900
    result = classify(hierarchical(2, options), score)
    # class 0's mean: 0, 0, 0, .25, .4, ...: it leads rounds 1-3 (2 further rounds), class 1 from
    # round 4; class 1 has stayed best for 4 further rounds at round 8
    assert result.prediction == 1
    assert result.stop_reason == "patience"
    assert result.n_rounds == 8


def test_ranking_puts_pruned_classes_below_survivors_by_prune_time_then_error():
    base = [0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4]
    result = classify(hierarchical(8, HierarchicalOptions(beam_factor=2, min_beam=1, n_timesteps=4)), Recorder(base, jitter=0.0))
    # beam 8 -> 4 (prune 0.5, 0.7, 0.8, 0.9) -> 2 (prune 0.3, 0.4) -> 1 (prune 0.2)
    assert result.ranking == (1, 5, 3, 7, 2, 6, 4, 0)
    assert result.n_evals == 8 + 4 + 2


def test_directions_visit_the_same_grid_in_their_order():
    asc = schedule(HierarchicalOptions(n_timesteps=8, direction="ascending"))
    assert asc == li_timesteps(1000, 8)
    assert schedule(HierarchicalOptions(n_timesteps=8, direction="descending")) == asc[::-1]
    center = schedule(HierarchicalOptions(n_timesteps=8, direction="center-out"))
    assert sorted(center) == asc
    assert [abs(t - 500) for t in center] == sorted(abs(t - 500) for t in asc)
    assert schedule(HierarchicalOptions(t_start=100, t_end=500, t_step=100, direction="ascending")) == [100, 200, 300, 400]
    assert schedule(HierarchicalOptions(t_start=100, t_end=500, n_timesteps=4, direction="ascending")) == [150, 250, 350, 450]
    assert schedule(HierarchicalOptions(n_timesteps=4))[0] == 375  # the default travels center-out


def test_samplers_are_deterministic_and_batched_images_equal_single_images():
    options = HierarchicalOptions(beam_factor=1.5, n_noises=2, patience=3)
    bases = [[0.5] * 6 for _ in range(4)]
    seeds = [1, 2, 3, 4]

    def single(i):
        return classify(hierarchical(6, options), Recorder(bases[i], seed=seeds[i]))

    def batch_score(image_idx, class_idx, timesteps, noise_idx):
        return [bases[i][c] + 0.5 * noisy(c, t, n, seeds[i]) for i, c, t, n in zip(image_idx, class_idx, timesteps, noise_idx)]

    together = run_samplers([hierarchical(6, options) for _ in range(4)], batch_score)
    assert together == [single(i) for i in range(4)]
    assert together == run_samplers([hierarchical(6, options) for _ in range(4)], batch_score)


def test_scorer_returning_the_wrong_count_or_nan_is_an_error():
    with pytest.raises(RuntimeError, match="errors for"):
        classify(baseline(3, BaselineOptions(n_timesteps=2)), lambda c, t, n: [0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        classify(baseline(2, BaselineOptions(n_timesteps=1)), lambda c, t, n: [float("nan")] * len(c))


@pytest.mark.parametrize(
    "options, message",
    [
        (AdaptiveOptions(to_keep=(5, 2), n_samples=(50, 500)), "must end with 1"),
        (AdaptiveOptions(to_keep=(5, 1), n_samples=(50,)), "2 stages"),
        (AdaptiveOptions(to_keep=(1, 5, 1), n_samples=(1, 2, 3)), "strictly decreasing"),
        (AdaptiveOptions(to_keep=(5, 1), n_samples=(500, 50)), "strictly increasing"),
        (AdaptiveOptions(to_keep=(5, 1), n_samples=(50, 2000)), "the model has 1000"),
        (BaselineOptions(n_timesteps=0), "between 1 and 1000"),
        (HierarchicalOptions(beam_factor=0.5), "beam_factor must be a number >= 1"),
        (HierarchicalOptions(t_step=10, n_timesteps=10), "set one of them"),
        (HierarchicalOptions(direction="up"), "ascending, descending, center-out"),
        (HierarchicalOptions(patience=0), "patience must be >= 1"),
        (HierarchicalOptions(min_beam=0), "min_beam must be >= 1"),
        (HierarchicalOptions(t_start=600, t_end=500), "t_end must be between"),
    ],
)
def test_inconsistent_options_are_rejected_before_any_compute(options, message):
    with pytest.raises(DiffclsError, match=message):
        options.validate(1000)
    sampler = {AdaptiveOptions: adaptive, BaselineOptions: baseline, HierarchicalOptions: hierarchical}[type(options)]
    calls = []
    with pytest.raises(DiffclsError):
        classify(sampler(10, options), lambda c, t, n: calls.append(1) or [0.0] * len(c))
    assert calls == []


def test_fixed_beam_is_algorithm_1_as_written():
    """BeamSize = C/b once (line 3): after the first timestep, C/b classes at every timestep."""
    options = HierarchicalOptions(beam="fixed", beam_factor=2, min_beam=1, n_timesteps=8, direction="ascending")
    scorer = Recorder([0.0] + [1.0] * 9, jitter=0.1)
    result = classify(hierarchical(10, options), scorer)
    assert result.n_evals == 10 + 7 * 5
    assert result.prediction == 0 and result.stop_reason == "schedule"
    assert [len(call) for call in scorer.calls] == [10] + [5] * 7
    # a progressive beam with the same b halves every time: 10, 5, 2, 1
    progressive = classify(hierarchical(10, HierarchicalOptions(beam_factor=2, min_beam=1, n_timesteps=8)), Recorder([0.0] + [1.0] * 9, jitter=0.1))
    assert progressive.n_evals == 10 + 5 + 2 and progressive.stop_reason == "beam"


def test_min_beam_keeps_the_last_classes_over_the_whole_schedule():
    """The beam stops shrinking at ``min_beam``; those classes see every remaining timestep, and
    the prediction is decided on all of them, not on the first few."""
    options = HierarchicalOptions(beam_factor=2, min_beam=2, n_timesteps=8, direction="ascending")
    scorer = Recorder([0.3, 0.0] + [1.0] * 8, jitter=0.01)
    result = classify(hierarchical(10, options), scorer)
    assert [len(call) for call in scorer.calls] == [10, 5, 2, 2, 2, 2, 2, 2]
    assert result.stop_reason == "schedule" and result.n_evals == 10 + 5 + 6 * 2
    assert result.prediction == 1 and result.ranking[:2] == (1, 0)
    # a late decision: class 0 looks best on the first (clean) timesteps, class 1 on the rest
    grid = schedule(options)

    def late(class_idx, timesteps, noise_idx):
        early = {t: i < 3 for i, t in enumerate(grid)}
        return [(0.0 if early[t] else 1.0) if c == 0 else (0.5 if c == 1 else 2.0) for c, t in zip(class_idx, timesteps)]

    assert classify(hierarchical(10, options), late).prediction == 1  # mean over 8 timesteps
    assert classify(hierarchical(10, HierarchicalOptions(beam_factor=2, min_beam=1, n_timesteps=8, direction="ascending")), late).prediction == 0


def test_min_beam_of_every_class_is_the_baseline():
    scorer, reference = Recorder([0.5] * 7, seed=3), Recorder([0.5] * 7, seed=3)
    result = classify(hierarchical(7, HierarchicalOptions(beam_factor=3, min_beam=7, n_timesteps=12, direction="ascending")), scorer)
    base = classify(baseline(7, BaselineOptions(n_timesteps=12)), reference)
    assert result.ranking == base.ranking and result.scores == base.scores and result.n_evals == base.n_evals == 7 * 12
