"""Clark & Jaini 2023's pruning ("Text-to-Image Diffusion Models are Zero-Shot Classifiers"):
successive elimination by a paired Student t-test against the current best class.

Each round draws one timestep ``t ~ U{0, ..., T-1}`` and one fresh noise, shared by every class
still in play (a paired comparison), and scores those classes. A class's score is the weighted
mean of its errors, ``w_t = exp(-weight_rate * t / T)`` (their ``exp(-7t)`` with t in [0, 1];
``weight_rate: 0`` is an unweighted mean). Once every class has ``min_samples`` scores, after
each round every class whose weighted errors are worse than the leader's by a one-sided paired
t-test at ``p`` is dropped. It stops when one class is left or after ``max_samples`` rounds.

The timesteps come from a generator seeded with ``seed`` (the same sequence for every image;
each image's noises are its own), so runs are reproducible and every configuration with the same
seed shares its evaluations.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from diffcls_plugin.samplers.base import Evaluations, Sampler, finish, paired_moments
from diffcls_plugin.samplers.options import SamplerOptions


@dataclass(frozen=True)
class TTestOptions(SamplerOptions):
    """Options of the paired t-test sampler.

    The defaults were chosen by ``bench/suite.py`` on the proxy pairs' validation splits (no loss
    against the 32-timestep baseline on any, fewest evaluations); Clark & Jaini's published
    settings are the ``clark-jaini`` preset.

    Attributes:
        p: a class is dropped when the one-sided paired t-test that it is worse than the leader
            gives a p-value below this (smaller is more careful and costs more).
        min_samples: rounds (scores per class) before the first test.
        max_samples: the most rounds per image.
        weight_rate: ``w_t = exp(-weight_rate * t / T)``; 7 is Clark & Jaini's main text, 6 their
            appendix, 0 no weighting.
        seed: seed of the timestep sequence.
    """

    section = "ttest"
    # Clark & Jaini 2023's published settings
    PRESETS = {"clark-jaini": {"p": 2e-3, "min_samples": 20, "max_samples": 2000, "weight_rate": 7.0, "seed": 0}}
    p: float = 0.1
    min_samples: int = 4
    max_samples: int = 32
    weight_rate: float = 0.0
    seed: int = 0

    def validate(self, num_train_timesteps: int = 1000) -> None:
        p = self.p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 0.5:
            raise self._fail("p", f"must be a number in [0, 0.5), got {p!r}")
        self._check_int("min_samples", 2)
        self._check_int("max_samples", self.min_samples)
        w = self.weight_rate
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise self._fail("weight_rate", f"must be a finite number >= 0, got {w!r}")
        self._check_int("seed", 0)


def draws(options: TTestOptions, num_train_timesteps: int) -> list[tuple[int, int]]:
    """The (timestep, noise_idx) of every round: ``noise_idx`` counts earlier draws of that t."""
    rng = random.Random(options.seed)
    count: dict[int, int] = {}
    out = []
    for _ in range(options.max_samples):
        t = rng.randrange(num_train_timesteps)
        out.append((t, count.get(t, 0)))
        count[t] = count.get(t, 0) + 1
    return out


def one_sided_p(diffs: list[float]) -> float:
    """p-value of the paired t-test that the mean of ``diffs`` is > 0 (scipy's Student t)."""
    from scipy.special import stdtr

    n = len(diffs)
    mean, var = paired_moments(diffs)
    if var == 0:
        return 0.0 if mean > 0 else 1.0
    return float(stdtr(n - 1, -mean / math.sqrt(var / n)))


def ttest(n_classes: int, options: TTestOptions, num_train_timesteps: int = 1000) -> Sampler:
    """Successive elimination with a paired t-test against the leader (Clark & Jaini 2023).

    Returns:
        (as the generator's value) a :class:`SamplerResult`; ``scores`` are the plain mean
        errors, the ranking uses the weighted means (dropped classes below survivors).
    """
    options.validate(num_train_timesteps)
    rounds = draws(options, num_train_timesteps)
    weights = [math.exp(-options.weight_rate * t / num_train_timesteps) for t, _ in rounds]
    evals = Evaluations()
    alive = list(range(n_classes))
    pruned: list[list[int]] = []
    n_seen = options.min_samples
    yield from evals.ensure((c, t, n) for t, n in rounds[:n_seen] for c in alive)
    stop_reason = "schedule"
    while True:
        if len(alive) > 1:
            weighted = {
                c: [w * evals.error(c, t, n) for (t, n), w in zip(rounds[:n_seen], weights)] for c in alive
            }
            order = sorted(alive, key=lambda c: (math.fsum(weighted[c]), c))
            leader = weighted[order[0]]
            keep, out = [order[0]], []
            for c in order[1:]:
                p = one_sided_p([a - b for a, b in zip(weighted[c], leader)])
                (out if p < options.p else keep).append(c)
            if out:
                pruned.append(out)
            alive = keep
        if len(alive) == 1 and n_classes > 1:
            stop_reason = "beam"
            break
        if n_seen == len(rounds):
            break
        t, n = rounds[n_seen]
        n_seen += 1
        yield from evals.ensure((c, t, n) for c in alive)
    # the survivors are in the order of the last test: weighted mean, best first
    result = finish(n_classes, alive, pruned, evals, n_rounds=n_seen, stop_reason=stop_reason)
    return replace(result, ranking=tuple(alive) + result.ranking[len(alive) :])
