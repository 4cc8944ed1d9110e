"""Li et al.'s adaptive multi-stage elimination (their ``eval_prob_adaptive``)."""

from __future__ import annotations

from dataclasses import dataclass

from diffcls_plugin.samplers.base import Evaluations, Sampler, finish, li_timesteps, order_by_score
from diffcls_plugin.samplers.options import SamplerOptions


@dataclass(frozen=True)
class AdaptiveOptions(SamplerOptions):
    """Options of the adaptive sampler; defaults are Li et al.'s CIFAR10/STL10-style schedule.

    Attributes:
        to_keep: classes kept after each stage; strictly decreasing, the last must be 1.
        n_samples: timesteps evaluated (cumulatively) by each stage; strictly increasing.
        n_trials: noise draws per timestep.
    """

    section = "adaptive"
    # Li et al.'s published schedules (their paper's Table 6 and code), by dataset
    PRESETS = {
        "li-cifar10": {"to_keep": (5, 1), "n_samples": (50, 500)},
        "li-cifar10-halved": {"to_keep": (5, 1), "n_samples": (25, 250)},
        "li-stl10": {"to_keep": (5, 1), "n_samples": (100, 500)},
        "li-pets": {"to_keep": (5, 1), "n_samples": (25, 250)},
        "li-aircraft": {"to_keep": (20, 10, 5, 1), "n_samples": (20, 50, 100, 500)},
        "li-food101": {"to_keep": (20, 10, 5, 1), "n_samples": (20, 50, 100, 500)},
        "li-imagenet": {"to_keep": (500, 50, 10, 1), "n_samples": (50, 100, 500, 1000)},
    }
    to_keep: tuple[int, ...] = (5, 1)
    n_samples: tuple[int, ...] = (50, 500)
    n_trials: int = 1

    def validate(self, num_train_timesteps: int = 1000) -> None:
        self._check_int("n_trials", 1)
        for key in ("to_keep", "n_samples"):
            values = getattr(self, key)
            if not isinstance(values, tuple) or not values:
                raise self._fail(key, f"must be a non-empty list of integers, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise self._fail(key, f"must hold positive integers, got {list(values)}")
        if len(self.to_keep) != len(self.n_samples):
            raise self._fail(
                "to_keep",
                f"has {len(self.to_keep)} stages but adaptive.n_samples has {len(self.n_samples)}; give one to_keep per n_samples stage",
            )
        if self.to_keep[-1] != 1:
            raise self._fail("to_keep", f"must end with 1 (the last stage picks the class), got {list(self.to_keep)}")
        if any(a <= b for a, b in zip(self.to_keep, self.to_keep[1:])):
            raise self._fail("to_keep", f"must be strictly decreasing, got {list(self.to_keep)}")
        if any(a >= b for a, b in zip(self.n_samples, self.n_samples[1:])):
            raise self._fail("n_samples", f"must be strictly increasing, got {list(self.n_samples)}")
        if self.n_samples[-1] > num_train_timesteps:
            raise self._fail("n_samples", f"asks for {self.n_samples[-1]} timesteps but the model has {num_train_timesteps}")


def stage_timesteps(options: AdaptiveOptions, num_train_timesteps: int) -> list[list[int]]:
    """The new timesteps of each stage, exactly as Li et al.'s code picks them.

    The full grid has ``max(n_samples)`` timesteps; stage ``i`` takes every
    ``len(grid) // n_samples[i]``-th of them starting half a step in, and evaluates those not
    evaluated by an earlier stage (their grids need not nest).
    """
    grid = li_timesteps(num_train_timesteps, max(options.n_samples))
    seen: set[int] = set()
    stages = []
    for n in options.n_samples:
        step = len(grid) // n
        wanted = grid[step // 2 :: step][:n]
        new = [t for t in wanted if t not in seen]
        seen.update(new)
        stages.append(new)
    return stages


def adaptive(n_classes: int, options: AdaptiveOptions, num_train_timesteps: int = 1000) -> Sampler:
    """Multi-stage elimination: each stage scores the remaining classes at its new timesteps,
    ranks them by the mean error over every timestep evaluated so far, and keeps ``to_keep[i]``.

    A ``to_keep`` at or above the number of remaining classes keeps them all.

    Returns:
        (as the generator's value) a :class:`SamplerResult`; pruned classes rank below the
        survivors of later stages.
    """
    options.validate(num_train_timesteps)
    evals = Evaluations()
    remaining = list(range(n_classes))
    pruned: list[list[int]] = []
    stages = stage_timesteps(options, num_train_timesteps)
    for new_timesteps, n_keep in zip(stages, options.to_keep):
        yield from evals.ensure((c, t, n) for c in remaining for t in new_timesteps for n in range(options.n_trials))
        order = order_by_score(remaining, evals)
        if n_keep < len(order):
            pruned.append(order[n_keep:])
        remaining = order[:n_keep]
    return finish(n_classes, remaining, pruned, evals, n_rounds=len(stages), stop_reason="schedule")
