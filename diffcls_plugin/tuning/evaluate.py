"""Running configurations against an error table: per image, right or wrong and the evaluations spent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import Sampler, run_samplers
from diffcls_plugin.tuning.table import ErrorSource

# a sampler's generator function: fn(n_classes, options, num_train_timesteps) -> Sampler
# (``SamplerSpec.fn``; the bench passes its own for configurations the samplers no longer have)
SamplerFn = Callable[[int, Any, int], Sampler]


@dataclass(frozen=True)
class Outcome:
    """One configuration's result on a set of images.

    A sampler's result on an image does not depend on the other images (``run_samplers``), so
    the outcome on a subset of the images (a fold) is :meth:`subset` of the outcome on all of them.

    Attributes:
        correct: (n_images,) whether the top-1 prediction is the label (more is better).
        n_evals: (n_images,) distinct (class, timestep, noise) evaluations spent (fewer is cheaper).
    """

    correct: tuple[bool, ...]
    n_evals: tuple[int, ...]

    @property
    def top1(self) -> float:
        """Top-1 accuracy, a fraction (higher is better)."""
        return sum(self.correct) / len(self.correct)

    @property
    def evals_per_image(self) -> float:
        """Mean evaluations per image (lower is cheaper)."""
        return sum(self.n_evals) / len(self.n_evals)

    @property
    def bits(self) -> str:
        """The correctness as records store it: ``"1"`` right, ``"0"`` wrong, one per image."""
        return "".join("1" if c else "0" for c in self.correct)

    def subset(self, image_idx: Sequence[int]) -> Outcome:
        """The outcome on some of the images, in the order of ``image_idx``."""
        return Outcome(tuple(self.correct[i] for i in image_idx), tuple(self.n_evals[i] for i in image_idx))


def evaluate(fn: SamplerFn, options: Any, table: ErrorSource, labels: Sequence[int], num_train_timesteps: int = 1000) -> Outcome:
    """Run one configuration on every image of a table, in lockstep (``run_samplers``).

    Args:
        fn: the sampler's generator function (``SAMPLERS.get(name).fn``).
        options: its options.
        table: the errors (image ``i`` of the table is ``labels[i]``'s image).
        labels: (n_images,) each image's true class.
        num_train_timesteps: the model's schedule length (the samplers' timestep grids).

    Returns:
        per image, right or wrong and the evaluations spent.
    """
    results = run_samplers([fn(table.n_classes, options, num_train_timesteps) for _ in labels], table)
    return Outcome(tuple(r.prediction == y for r, y in zip(results, labels)), tuple(r.n_evals for r in results))


_WORKER: dict = {}  # a forked worker's configurations, table and labels (set in the worker, by _start_worker)


def _start_worker(configs: Mapping[str, tuple[SamplerFn, Any]], table: ErrorSource, labels: Sequence[int], num_train_timesteps: int) -> None:
    _WORKER.update(configs=configs, table=table, labels=labels, num_train_timesteps=num_train_timesteps)


def _evaluate_named(key: str, configs, table, labels, num_train_timesteps: int) -> tuple[str, Outcome]:
    fn, options = configs[key]
    try:
        return key, evaluate(fn, options, table, labels, num_train_timesteps)
    except DiffclsError as err:
        raise DiffclsError(f"{key}: {err}") from None


def _evaluate_in_worker(key: str) -> tuple[str, Outcome]:
    return _evaluate_named(key, _WORKER["configs"], _WORKER["table"], _WORKER["labels"], _WORKER["num_train_timesteps"])


def evaluate_all(
    configs: Mapping[str, tuple[SamplerFn, Any]], table: ErrorSource, labels: Sequence[int], num_train_timesteps: int = 1000, workers: int = 1
) -> dict[str, Outcome]:
    """Run every configuration on every image of a table.

    The samplers' bookkeeping is pure Python, so ``workers > 1`` splits the configurations over
    forked processes (POSIX only); the outcomes do not depend on how they are split.

    Args:
        configs: ``{key: (fn, options)}`` (:func:`~diffcls_plugin.tuning.candidates.runnable`).
        table: the errors; with ``workers > 1`` it must not grow (an :class:`ErrorTable`).
        labels: (n_images,) each image's true class.
        num_train_timesteps: the model's schedule length.
        workers: processes to run them in.

    Returns:
        ``{key: outcome}`` in the order of ``configs``.

    Raises:
        DiffclsError: a configuration the table cannot replay, named by its key.
    """
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers, initializer=_start_worker, initargs=(configs, table, labels, num_train_timesteps)) as pool:
            done = dict(pool.map(_evaluate_in_worker, list(configs), chunksize=4))
    else:
        done = dict(_evaluate_named(k, configs, table, labels, num_train_timesteps) for k in configs)
    return {k: done[k] for k in configs}
