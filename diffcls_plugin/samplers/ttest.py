"""Clark & Jaini 2023's pruning ("Text-to-Image Diffusion Models are Zero-Shot Classifiers"):
successive elimination by a paired Student t-test against the current best class.

Each round draws one timestep ``t ~ U{0, ..., T-1}`` and one fresh noise, shared by every class
still in play (a paired comparison), and scores those classes (``timesteps: uniform``, Clark &
Jaini's). With ``timesteps: grid`` the rounds visit the ``max_samples`` evenly spaced timesteps of
Li et al.'s grid instead, one noise each, in the race's stratified order (every prefix spread over
``[0, T)``): a stratified sample, so each class's mean error varies less than under uniform draws,
and with ``max_samples: 32`` the rounds are the 32-timestep baseline's own evaluations.

A class's score is the weighted mean of its errors, ``w_t = exp(-weight_rate * t / T)`` (their
``exp(-7t)`` with t in [0, 1]; ``weight_rate: 0`` is an unweighted mean). Once every class has
``min_samples`` scores, after each round every class whose weighted errors are worse than the
leader's by a one-sided paired t-test at ``p`` is dropped. It stops when one class is left or
after ``max_samples`` rounds.

Uniform timesteps come from a generator seeded with ``seed`` (the same sequence for every image;
each image's noises are its own), so runs are reproducible and every configuration with the same
seed shares its evaluations.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from diffcls_plugin.samplers.base import Evaluations, Sampler, finish, li_timesteps, paired_moments
from diffcls_plugin.samplers.options import SamplerOptions
from diffcls_plugin.samplers.race import visit_order

TIMESTEPS = ("grid", "uniform")


@dataclass(frozen=True)
class TTestOptions(SamplerOptions):
    """Options of the paired t-test sampler.

    The defaults were chosen by ``bench/suite.py`` on its members' validation splits (at most half
    the 32-timestep baseline's evaluations, the smallest worst-case loss against it plus one
    standard error); Clark & Jaini's published settings are the ``clark-jaini`` preset.

    Attributes:
        p: a class is dropped when the one-sided paired t-test that it is worse than the leader
            gives a p-value below this (smaller is more careful and costs more).
        min_samples: rounds (scores per class) before the first test.
        max_samples: the most rounds per image.
        weight_rate: ``w_t = exp(-weight_rate * t / T)``; 7 is Clark & Jaini's main text, 6 their
            appendix, 0 no weighting.
        timesteps: ``grid`` (the default): the rounds visit Li et al.'s grid of ``max_samples``
            evenly spaced timesteps, in a stratified order (see the module); ``uniform``: each
            round draws ``t ~ U{0, ..., T-1}`` (Clark & Jaini's).
        seed: seed of the uniform timestep sequence (``timesteps: uniform``).
    """

    section = "ttest"
    # Clark & Jaini 2023's published settings
    PRESETS = {"clark-jaini": {"p": 2e-3, "min_samples": 20, "max_samples": 2000, "weight_rate": 7.0, "timesteps": "uniform", "seed": 0}}
    p: float = 0.05
    min_samples: int = 8
    max_samples: int = 32
    weight_rate: float = 0.0
    timesteps: str = "grid"
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
        if self.timesteps not in TIMESTEPS:
            raise self._fail("timesteps", f"must be one of {', '.join(TIMESTEPS)}, got {self.timesteps!r}")
        if self.timesteps == "grid" and self.max_samples > num_train_timesteps:
            raise self._fail(
                "max_samples",
                f"is {self.max_samples}, more than the model's {num_train_timesteps} timesteps, "
                "with ttest.timesteps: grid (one noise per grid timestep); lower it, or set timesteps: uniform",
            )
        self._check_int("seed", 0)


def draws(options: TTestOptions, num_train_timesteps: int) -> list[tuple[int, int]]:
    """The (timestep, noise_idx) of every round: ``noise_idx`` counts earlier draws of that t."""
    if options.timesteps == "grid":
        grid = li_timesteps(num_train_timesteps, options.max_samples)
        return [(grid[i], 0) for i in visit_order(len(grid), "stratified")]
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
            weighted = {c: [w * evals.error(c, t, n) for (t, n), w in zip(rounds[:n_seen], weights)] for c in alive}
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
