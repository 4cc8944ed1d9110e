"""What every sampler shares: the request/response protocol, the evaluation table, the drivers.

A sampler is a generator function. For one image it yields :class:`Request` objects (a flat batch
of pending ``(class, timestep, noise)`` triples) and receives the errors of those triples back,
lower is better; when it is done it returns a :class:`SamplerResult`. It never sees a UNet,
latents or a device, so it can be tested with a planted scorer in milliseconds.

``noise_idx`` names a noise draw *at a timestep*: the scorer maps ``(timestep, noise_idx)`` to one
fixed noise tensor per image, so every class of an image sees exactly the same noised latent for a
given pair (Li et al.'s paired comparison), whichever sampler asked for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

Triple = tuple[int, int, int]  # (class_idx, timestep, noise_idx)


@dataclass(frozen=True)
class Request:
    """A flat batch of pending evaluations for one image; the three tuples have equal length."""

    class_idx: tuple[int, ...]
    timesteps: tuple[int, ...]
    noise_idx: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.class_idx)


@dataclass(frozen=True)
class SamplerResult:
    """What a sampler returns for one image.

    Attributes:
        ranking: every class index, best first. Survivors come first (by mean error), then the
            classes pruned last, each pruned group ordered by its mean error when it was pruned.
        scores: per class, the mean error over all of its evaluations (lower is better;
            ``nan`` for a class that was never evaluated).
        n_evals: distinct (class, timestep, noise) evaluations spent on the image.
        n_rounds: rounds (stages, timesteps) the sampler ran.
        stop_reason: ``"schedule"`` (ran to the end), ``"beam"`` (one class left) or
            ``"patience"`` (the best class did not change for ``patience`` rounds).
    """

    ranking: tuple[int, ...]
    scores: tuple[float, ...]
    n_evals: int
    n_rounds: int
    stop_reason: str

    @property
    def prediction(self) -> int:
        return self.ranking[0]


Sampler = Generator[Request, Sequence[float], SamplerResult]


class Scorer(Protocol):
    """Errors of one image's triples: ``score(class_idx, timesteps, noise_idx) -> errors``."""

    def __call__(self, class_idx: Sequence[int], timesteps: Sequence[int], noise_idx: Sequence[int]) -> Sequence[float]: ...


class BatchScorer(Protocol):
    """Errors of triples from several images at once, flattened: one entry per triple."""

    def __call__(
        self,
        image_idx: Sequence[int],
        class_idx: Sequence[int],
        timesteps: Sequence[int],
        noise_idx: Sequence[int],
    ) -> Sequence[float]: ...


class Evaluations:
    """The table of one image's evaluated triples; asking again for a triple costs nothing."""

    def __init__(self) -> None:
        self._errors: dict[Triple, float] = {}
        self._by_class: dict[int, list[float]] = {}

    @property
    def n_evals(self) -> int:
        return len(self._errors)

    def ensure(self, triples: Iterable[Triple]) -> Generator[Request, Sequence[float], None]:
        """Request, in one flat batch, every triple of ``triples`` not evaluated yet."""
        pending = [k for k in dict.fromkeys(triples) if k not in self._errors]
        if not pending:
            return
        class_idx, timesteps, noise_idx = zip(*pending)
        errors = yield Request(class_idx, timesteps, noise_idx)
        errors = [float(e) for e in errors]
        if len(errors) != len(pending):
            raise RuntimeError(f"scorer returned {len(errors)} errors for {len(pending)} requested triples")
        for key, error in zip(pending, errors):
            if not math.isfinite(error):
                raise RuntimeError(f"the scorer returned a non-finite error {error} for (class, timestep, noise) = {key}")
            self._errors[key] = error
            self._by_class.setdefault(key[0], []).append(error)

    def error(self, class_idx: int, timestep: int, noise_idx: int) -> float:
        """The error of one evaluated triple (``KeyError`` if it was never evaluated)."""
        return self._errors[(class_idx, timestep, noise_idx)]

    def mean(self, class_idx: int) -> float:
        """Mean error over all evaluations of a class (exactly rounded, so order-independent)."""
        errors = self._by_class.get(class_idx)
        if not errors:
            return math.nan
        return math.fsum(errors) / len(errors)


def order_by_score(classes: Iterable[int], evals: Evaluations) -> list[int]:
    """Classes sorted best first: lowest mean error, ties broken by class index."""
    return sorted(classes, key=lambda c: (evals.mean(c), c))


def finish(
    n_classes: int,
    survivors: Sequence[int],
    pruned: Sequence[Sequence[int]],
    evals: Evaluations,
    n_rounds: int,
    stop_reason: str,
) -> SamplerResult:
    """Assemble a full ranking: survivors by score, then pruned groups, latest pruned first.

    ``pruned`` lists the groups in the order they were pruned, each group already sorted by score.
    """
    ranking = list(order_by_score(survivors, evals))
    for group in reversed(pruned):
        ranking.extend(group)
    if sorted(ranking) != list(range(n_classes)):
        raise RuntimeError("internal error: ranking is not a permutation of the classes")
    scores = tuple(evals.mean(c) for c in range(n_classes))
    return SamplerResult(tuple(ranking), scores, evals.n_evals, n_rounds, stop_reason)


def paired_moments(diffs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance (``n - 1`` denominator) of paired differences, exactly summed.

    Args:
        diffs: (n,) per-slot differences between two classes' errors, n >= 2.
    """
    n = len(diffs)
    mean = math.fsum(diffs) / n
    return mean, math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)


def li_timesteps(num_train_timesteps: int, n: int) -> list[int]:
    """Li et al.'s evenly spaced grid of ``n`` timesteps over ``[0, num_train_timesteps)``.

    ``start = T // n // 2``, ``range(start, T, T // n)[:n]``.
    """
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"n={n} timesteps must be between 1 and {num_train_timesteps}")
    step = num_train_timesteps // n
    return list(range(step // 2, num_train_timesteps, step))[:n]


def run_samplers(
    samplers: Sequence[Sampler],
    score: BatchScorer,
    on_finish: Callable[[int, SamplerResult, float], None] | None = None,
) -> list[SamplerResult]:
    """Drive several images' samplers in lockstep, one flat scorer call per round.

    Each round gathers the pending request of every unfinished sampler, flattens them into one
    call of ``score`` (with the image index of each triple), and hands each sampler its errors.
    Every image's beam, early stop and noise stay its own: the result of each image equals
    running it alone.

    Args:
        samplers: one sampler generator per image.
        score: the batch scorer.
        on_finish: called as ``on_finish(i, result, seconds)`` the moment image ``i``'s sampler
            returns (e.g. to commit it). ``seconds`` is the image's share of the wall time of
            every round it took part in, split by its share of the round's triples (the first
            requests' time split equally), so the images' seconds add up to the driver's time.
    """
    results: list[SamplerResult | None] = [None] * len(samplers)
    pending: dict[int, Request] = {}

    def done(i: int, result: SamplerResult) -> None:
        results[i] = result
        if on_finish is not None:
            on_finish(i, result, spent[i])

    start = time.perf_counter()
    finished_early: list[tuple[int, SamplerResult]] = []
    for i, sampler in enumerate(samplers):
        try:
            pending[i] = next(sampler)
        except StopIteration as stop:
            finished_early.append((i, stop.value))
    spent = [(time.perf_counter() - start) / max(1, len(samplers))] * len(samplers)  # each image's seconds so far
    for i, result in finished_early:
        done(i, result)
    while pending:
        start = time.perf_counter()
        image_idx: list[int] = []
        class_idx: list[int] = []
        timesteps: list[int] = []
        noise_idx: list[int] = []
        sizes = {i: len(request) for i, request in pending.items()}
        for i, request in pending.items():
            image_idx.extend([i] * len(request))
            class_idx.extend(request.class_idx)
            timesteps.extend(request.timesteps)
            noise_idx.extend(request.noise_idx)
        errors = list(score(image_idx, class_idx, timesteps, noise_idx))
        if len(errors) != len(image_idx):
            raise RuntimeError(f"scorer returned {len(errors)} errors for {len(image_idx)} triples")
        offset = 0
        finished: list[tuple[int, SamplerResult]] = []
        for i, request in list(pending.items()):
            chunk = errors[offset : offset + len(request)]
            offset += len(request)
            try:
                pending[i] = samplers[i].send(chunk)
            except StopIteration as stop:
                finished.append((i, stop.value))
                del pending[i]
        elapsed = time.perf_counter() - start
        for i, n in sizes.items():
            spent[i] += elapsed * n / len(image_idx)
        for i, result in finished:
            done(i, result)
    return results  # type: ignore[return-value]


def classify(sampler: Sampler, score: Scorer) -> SamplerResult:
    """Run one image's sampler against a single-image scorer."""

    def batch_score(image_idx, class_idx, timesteps, noise_idx):
        return score(class_idx, timesteps, noise_idx)

    return run_samplers([sampler], batch_score)[0]
