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
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import Sampler, SamplerResult, run_samplers
from diffcls_plugin.store import Outcome, OutcomeStore, image_key


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
    """

    results: list[SamplerResult] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    n_computed: int = 0
    unet_evals_computed: int = 0
    unet_batch_size: int | None = None


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
            return BatchReport(part.results, part.outcomes, part.n_computed, part.unet_evals_computed, [len(images)], part.unet_batch_size)
        mine = distributed.my_share(len(images), rank, world_size)
        local = self.classify_here(images[mine]) if mine else BatchOutcome()
        digest = hashlib.sha256(images.detach().float().cpu().numpy().tobytes()).hexdigest()
        shares: list[Share] = distributed.gather(Share(digest, mine, local))
        if len({share.digest for share in shares}) > 1:
            raise DiffclsError(
                "the torchrun ranks loaded different batches, so their images cannot be shared out; "
                "give every rank the same data and loader settings (and do not pass the harness's --distributed)"
            )
        results, outcomes = [None] * len(images), [None] * len(images)
        for share in shares:
            for b, result, outcome in zip(share.positions, share.part.results, share.part.outcomes):
                results[b], outcomes[b] = result, outcome
        return BatchReport(
            results,
            outcomes,  # type: ignore[arg-type]
            n_computed=sum(share.part.n_computed for share in shares),
            unet_evals_computed=sum(share.part.unet_evals_computed for share in shares),
            shares=[len(share.positions) for share in shares],
            unet_batch_size=local.unet_batch_size,
        )

    def classify_here(self, images) -> BatchOutcome:
        """This process's images: stored ones looked up, the rest computed and committed one by one."""
        keys = [image_key(image) for image in images] if self.store is not None else None
        stored = self.store.get_many(self.run_key, keys) if keys is not None else {}
        results: list[SamplerResult | None] = [None] * len(images)
        outcomes: list[Outcome | None] = [None] * len(images)
        for b, key in enumerate(keys or []):
            if key in stored:
                outcomes[b], results[b] = stored[key], stored[key].result
        todo = [b for b in range(len(images)) if results[b] is None]
        if not todo:
            return BatchOutcome(results, outcomes)  # type: ignore[arg-type]
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

        def finished(i: int, result: SamplerResult, seconds: float) -> None:
            b = todo[i]
            if orders is not None:
                result = self._in_class_order(result, orders[i])
            outcome = Outcome(result, scorer.unet_evals[i], seconds + encode_share)
            results[b], outcomes[b] = result, outcome
            if self.store is not None:
                self.store.put(self.run_key, keys[b], outcome)

        run_samplers([self.make_sampler(self.k) for _ in todo], batch_score, on_finish=finished)
        return BatchOutcome(results, outcomes, len(todo), sum(scorer.unet_evals), scorer.batch_size)  # type: ignore[arg-type]

    def _in_class_order(self, result: SamplerResult, order: list[int]) -> SamplerResult:
        """A result over the prefilter's top k (local indices) -> over every class: the sampler's
        ranking first, then the prefilter's order of the rest; unscored classes score NaN."""
        scores = [math.nan] * self.n_classes
        for local, score in enumerate(result.scores):
            scores[order[local]] = score
        ranking = tuple(order[c] for c in result.ranking) + tuple(order[self.k :])
        return SamplerResult(ranking, tuple(scores), result.n_evals, result.n_rounds, result.stop_reason)
