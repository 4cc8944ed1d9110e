"""Li et al.'s baseline: every class at the same evenly spaced grid of timesteps."""

from __future__ import annotations

from dataclasses import dataclass

from diffcls_plugin.samplers.base import Evaluations, Sampler, finish, li_timesteps
from diffcls_plugin.samplers.options import SamplerOptions


@dataclass(frozen=True)
class BaselineOptions(SamplerOptions):
    """Options of the baseline sampler.

    Attributes:
        n_timesteps: size of the evenly spaced timestep grid (Li et al.'s formula).
        n_trials: noise draws per timestep.
    """

    section = "baseline"
    n_timesteps: int = 32
    n_trials: int = 1

    def validate(self, num_train_timesteps: int = 1000) -> None:
        self._check_int("n_timesteps", 1, num_train_timesteps)
        self._check_int("n_trials", 1)

    def planned_evals(self, n_classes: int) -> int:
        return n_classes * self.n_timesteps * self.n_trials


def baseline(n_classes: int, options: BaselineOptions, num_train_timesteps: int = 1000) -> Sampler:
    """Score every class at every (timestep, trial) of the grid; predict the lowest mean error.

    Args:
        n_classes: C, the number of classes.
        options: grid size and trials per timestep.
        num_train_timesteps: T of the model's noise schedule.

    Returns:
        (as the generator's value) a :class:`SamplerResult` with ``C * n_timesteps * n_trials``
        evaluations.
    """
    options.validate(num_train_timesteps)
    evals = Evaluations()
    grid = li_timesteps(num_train_timesteps, options.n_timesteps)  # (n_timesteps,)
    yield from evals.ensure((c, t, n) for c in range(n_classes) for t in grid for n in range(options.n_trials))
    return finish(n_classes, range(n_classes), [], evals, n_rounds=1, stop_reason="schedule")
