"""The per-batch pipeline behind the classifier: store lookup, prefilter, samplers, store commit,
and the torchrun share and gather.

:class:`ClassifyEngine` knows no harness and no model: it is handed a scorer factory, a sampler
factory and, as collaborators, the resume store and the CLIP prefilter (lm-evaluation-harness's
``CachingLM`` wraps a model with a cache the same way). It can be driven with a planted scorer.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from diffcls_plugin import distributed
from diffcls_plugin.calls import CallLog
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.keys import image_key
from diffcls_plugin.samplers import Sampler, SamplerResult, run_samplers
from diffcls_plugin.store import Outcome, OutcomeStore


@dataclass
class BatchOutcome:
    """One process's part of a batch.

    Attributes:
        results: the sampler's result of each image, in batch order.
        outcomes: each image's outcome (its result, UNet evaluations and seconds as spent).
        n_computed: images computed now (the rest came from the store).
        unet_evals_computed: UNet evaluations spent now.
        unet_batch_size: the scorer's batch size after the batch (halved on out-of-memory), or
            ``None`` when nothing was computed.
        calls: the denoiser's forward passes for the images computed now.
    """

    results: list[SamplerResult] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    n_computed: int = 0
    unet_evals_computed: int = 0
    unet_batch_size: int | None = None
    calls: CallLog = field(default_factory=CallLog)


@dataclass
class Share:
    """One rank's part of a batch, as gathered: its batch's digest, its images' positions, its outcome."""

    digest: str
    positions: list[int]
    part: BatchOutcome


@dataclass
class BatchReport:
    """What :meth:`ClassifyEngine.classify` hands back for the whole batch (every rank's images)."""

    results: list[SamplerResult]
    outcomes: list[Outcome]
    n_computed: int
    unet_evals_computed: int
    shares: list[int]  # images per rank
    unet_batch_size: int | None
    calls: CallLog  # every rank's forward passes


class ClassifyEngine:
    """Classify batches of images with one sampler per image, all images' rounds batched together.

    Args:
        n_classes: the classes every image is ranked over.
        make_scorer: pixels ``(B, 3, H, W)`` -> a batch scorer ``score(image_idx, class_idx,
            timesteps, noise_idx) -> errors`` with a ``unet_evals`` list (per image) and a ``batch_size``.
        make_sampler: ``n_classes -> Sampler``, a fresh sampler generator for one image.
        store: the resume store, or ``None``; ``run_key`` the run's key in it.
        prefilter: ``None``, or an object whose ``order(pixels)`` gives, per image, every class in
            its order (best first); the sampler then ranks the first ``top_k`` only.
        top_k: classes the sampler sees per image with a prefilter.
    """

    def __init__(
        self,
        n_classes: int,
        make_scorer: Callable,
        make_sampler: Callable[[int], Sampler],
        *,
        store: OutcomeStore | None = None,
        run_key: str | None = None,
        prefilter=None,
        top_k: int | None = None,
    ) -> None:
        self.n_classes = n_classes
        self.make_scorer, self.make_sampler = make_scorer, make_sampler
        self.store, self.run_key = store, run_key
        self.prefilter = prefilter
        self.k = min(top_k, n_classes) if prefilter is not None and top_k is not None else n_classes

    def classify(self, images) -> BatchReport:
        """Every image's result, in batch order. Under ``torchrun`` the batch's images are split
        over the ranks and every rank returns every image's result (see :mod:`distributed`)."""
        rank, world_size = distributed.world()
        if world_size == 1:
            part = self.classify_here(images)
            return BatchReport(part.results, part.outcomes, part.n_computed, part.unet_evals_computed, [len(images)], part.unet_batch_size, part.calls)
        # exactly one process touches the store: rank 0 looks the whole batch up and tells the others
        keys = self._keys(images) if rank == 0 else None
        stored = distributed.broadcast(self._stored(keys))  # {position: Outcome}
        todo = [b for b in range(len(images)) if b not in stored]
        mine = todo[rank::world_size]
        local = self._compute(images, mine, keys) if mine else BatchOutcome()
        digest = hashlib.sha256(images.detach().float().cpu().numpy().tobytes()).hexdigest()
        shares: list[Share] = distributed.gather(Share(digest, mine, local))
        if len({share.digest for share in shares}) > 1:
            raise DiffclsError(
                "the torchrun ranks loaded different batches, so their images cannot be shared out; "
                "give every rank the same data and loader settings (and do not pass the harness's --distributed)"
            )
        results: list = [None] * len(images)
        outcomes: list = [None] * len(images)
        for b, outcome in stored.items():
            results[b], outcomes[b] = outcome.result, outcome
        for r, share in enumerate(shares):
            for b, result, outcome in zip(share.positions, share.part.results, share.part.outcomes):
                results[b], outcomes[b] = result, outcome
                if keys is not None and r != 0:
                    self.store.put(self.run_key, keys[b], outcome)  # rank 0 committed its own as they finished
        calls = CallLog()
        for share in shares:
            calls.merge(share.part.calls)
        per_rank = [len(share.positions) for share in shares]
        per_rank[0] += len(stored)  # rank 0 read the stored images
        return BatchReport(
            results,
            outcomes,
            n_computed=sum(share.part.n_computed for share in shares),
            unet_evals_computed=sum(share.part.unet_evals_computed for share in shares),
            shares=per_rank,
            unet_batch_size=local.unet_batch_size,
            calls=calls,
        )

    def classify_here(self, images) -> BatchOutcome:
        """This process's images: stored ones looked up, the rest computed and committed one by one."""
        keys = self._keys(images)
        stored = self._stored(keys)
        todo = [b for b in range(len(images)) if b not in stored]
        if not todo:
            return BatchOutcome([o.result for o in stored.values()], list(stored.values()))
        part = self._compute(images, todo, keys)
        results: list = [None] * len(images)
        outcomes: list = [None] * len(images)
        for b, outcome in stored.items():
            results[b], outcomes[b] = outcome.result, outcome
        for b, result, outcome in zip(todo, part.results, part.outcomes):
            results[b], outcomes[b] = result, outcome
        return BatchOutcome(results, outcomes, part.n_computed, part.unet_evals_computed, part.unet_batch_size, part.calls)

    def _keys(self, images) -> list[str] | None:
        """The images' store keys (``None`` without a store)."""
        return [image_key(image) for image in images] if self.store is not None else None

    def _stored(self, keys: list[str] | None) -> dict[int, Outcome]:
        """The stored outcomes of a batch, by position."""
        if keys is None:
            return {}
        found = self.store.get_many(self.run_key, keys)
        return {b: found[key] for b, key in enumerate(keys) if key in found}

    def _compute(self, images, todo: list[int], keys: list[str] | None) -> BatchOutcome:
        """Compute the images at positions ``todo`` (in that order), committing each one to the
        store as it finishes when ``keys`` are given."""
        encode_start = time.perf_counter()
        pixels = images[todo] if len(todo) < len(images) else images
        scorer = self.make_scorer(pixels)
        orders = self.prefilter.order(pixels) if self.prefilter is not None else None  # per image, every class in its order
        encode_share = (time.perf_counter() - encode_start) / len(todo)
        batch_score = (
            scorer
            if orders is None
            else (
                lambda image_idx, class_idx, timesteps, noise_idx: scorer(image_idx, [orders[i][c] for i, c in zip(image_idx, class_idx)], timesteps, noise_idx)
            )
        )
        results: list = [None] * len(todo)
        outcomes: list = [None] * len(todo)

        def finished(i: int, result: SamplerResult, seconds: float) -> None:
            if orders is not None:
                result = self._in_class_order(result, orders[i])
            outcome = Outcome(result, scorer.unet_evals[i], seconds + encode_share)
            results[i], outcomes[i] = result, outcome
            if keys is not None:
                self.store.put(self.run_key, keys[todo[i]], outcome)

        run_samplers([self.make_sampler(self.k) for _ in todo], batch_score, on_finish=finished)
        return BatchOutcome(results, outcomes, len(todo), sum(scorer.unet_evals), scorer.batch_size, _calls_of(scorer))

    def _in_class_order(self, result: SamplerResult, order: list[int]) -> SamplerResult:
        """A result over the prefilter's top k (local indices) -> over every class: the sampler's
        ranking first, then the prefilter's order of the rest; unscored classes score NaN."""
        scores = [math.nan] * self.n_classes
        for local, score in enumerate(result.scores):
            scores[order[local]] = score
        ranking = tuple(order[c] for c in result.ranking) + tuple(order[self.k :])
        return SamplerResult(ranking, tuple(scores), result.n_evals, result.n_rounds, result.stop_reason)


def _calls_of(scorer) -> CallLog:
    """A scorer's call record (a planted scorer without one records nothing)."""
    calls = getattr(scorer, "calls", None)
    return calls if isinstance(calls, CallLog) else CallLog()
