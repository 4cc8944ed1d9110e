"""The diffusion classifier as a CLIP-like model the harness can drive unchanged.

CLIP_benchmark computes ``100 * normalize(encode_image(x)) @ classifier`` where the classifier
stacks the normalised mean of ``encode_text(tokenizer(prompts))`` per class. Here:

- ``tokenizer(texts)`` registers the prompts and returns their ids;
- ``encode_text`` returns the one-hot vector of the class whose prompts it receives, so the
  harness's classifier is the identity;
- ``encode_image`` runs the sampler on each image and returns, per class, ``C - position`` in
  the sampler's ranking (best class ``C``, worst ``1``): the harness's logits then rank the
  classes exactly as the sampler did, with no ties (autocast is switched off for these models
  by :mod:`diffcls_plugin.harness`).

All class prompts must be known before the first image: :meth:`DiffusionClassifier.prepare`
takes the harness's classnames and templates (list templates or CuPL-style per-class dicts).
The work per batch is :class:`~diffcls_plugin.classifier.engine.ClassifyEngine`'s; this class
wires it (prompts, weights, the store and the prefilter) and keeps the harness's interface.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from diffcls_plugin.calls import buckets
from diffcls_plugin.classifier.engine import ClassifyEngine
from diffcls_plugin.classifier.progress import ProgressBar
from diffcls_plugin.classifier.prompts import PromptTokenizer, class_prompts, embed_classes
from diffcls_plugin.classifier.provenance import RunIdentity
from diffcls_plugin.classifier.stats import RunStats
from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.keys import run_key
from diffcls_plugin.samplers import SAMPLERS, SamplerResult
from diffcls_plugin.scoring import ImageBatchScorer, image_seed
from diffcls_plugin.store import OutcomeStore, open_run_store
from diffcls_plugin.weighting import is_scheme, weights_for
from diffcls_plugin.zoo import Checkpoint


class DiffusionClassifier(nn.Module):
    """A Stable Diffusion zero-shot classifier with a CLIP-like interface.

    Args:
        adapter: a :class:`~diffcls_plugin.adapters.DiffusionAdapter`.
        sampler: a registered sampler name (``baseline``, ``adaptive``, ``hierarchical`` ...).
        config: every other option.
        seed: the run seed; each image's noise comes from it and the image's content.
        checkpoint: where the weights came from (recorded in results).
        model_name: the harness model name (recorded in results).
        progress: show the run's progress on rank 0 (images done of the total, UNet evaluations per
            second, images from the store, ETA): a tqdm bar when stderr is a terminal, else a log
            line per batch at most once a minute (:mod:`~diffcls_plugin.classifier.progress`).
        store: where finished images are committed and looked up (see :mod:`diffcls_plugin.store`);
            ``None`` opens ``$DIFFCLS_CACHE/outcomes.sqlite`` when the config's ``resume`` is on
            (and ``$DIFFCLS_RESUME`` is not 0), ``False`` uses no store.
    """

    def __init__(
        self,
        adapter,
        sampler: str,
        config: DiffclsConfig | None = None,
        *,
        seed: int = 0,
        checkpoint: Checkpoint | None = None,
        model_name: str | None = None,
        progress: bool = True,
        store: OutcomeStore | bool | None = None,
    ) -> None:
        super().__init__()
        self.adapter = adapter
        self.sampler = SAMPLERS.get(sampler)
        self.config = config or DiffclsConfig()
        self.config.validate(adapter.num_train_timesteps)
        self.options = self.config.sampler_options(sampler)
        value = self.config.timestep_weights  # TimestepWeights, or None for uniform
        if is_scheme(value):
            from diffcls_plugin.adapters import scheme_weights

            self.timestep_weights = scheme_weights(value, adapter)
        else:
            self.timestep_weights = weights_for(value, adapter.num_train_timesteps)
        self.seed = int(seed)
        self.checkpoint = checkpoint
        self.model_name = model_name or sampler
        self.progress = progress
        self.image_size = self.config.image_size or adapter.native_image_size
        self.latent_shape = adapter.latent_shape(self.image_size)
        self.transform = adapter.transform(self.image_size)
        self.tokenizer = PromptTokenizer()
        self.unet_batch_size = self.config.unet_batch_size  # halved for the rest of the run on out-of-memory
        self.classnames: list[str] | None = None
        self.prompts: list[list[str]] = []
        self._prompt_embeds: torch.Tensor | None = None  # (P, L, D)
        self._class_rows: list[list[int]] = []  # class -> rows of _prompt_embeds it is scored with
        self._next_text_class = 0
        self._store_arg = store
        self.prefilter = None  # a ClipPrefilter when the config asks for one
        self.store: OutcomeStore | None = None
        self.run_key: str | None = None
        self.engine: ClassifyEngine | None = None
        self.stats = RunStats()
        self._bar = ProgressBar(self.model_name, None, enabled=False)

    # ----------------------------------------------------------------- classes and prompts
    def prepare(self, classnames: Sequence[str], templates, n_images: int | None = None) -> None:
        """Fix the classes and embed their prompts once (before the first image).

        Args:
            classnames: the dataset's class names, in label order.
            templates: list templates (``"a photo of a {c}."``) or a dict class -> prompts.
            n_images: the images the run will classify (the dataset or subset size): the progress
                total and its ETA (optional).
        """
        if len(classnames) < 2:
            raise DiffclsError(f"the dataset has {len(classnames)} classes; a diffusion classifier ranks at least two class names")
        conditions = embed_classes(self.adapter, class_prompts(classnames, templates), self.config.prompts)
        self.classnames = list(classnames)
        self.prompts, self._prompt_embeds, self._class_rows = conditions.prompts, conditions.embeds, conditions.rows
        self._next_text_class = 0
        if self.config.prefilter is not None:
            from diffcls_plugin.prefilter import ClipPrefilter

            if self.prefilter is None or self.prefilter.options != self.config.prefilter:
                self.prefilter = ClipPrefilter(self.config.prefilter, device=self.adapter.device)
            self.prefilter.prepare(self.prompts)
        self._open_store()
        self.engine = ClassifyEngine(
            len(self.classnames),
            self.scorer,
            lambda k: self.sampler.fn(k, self.options, self.adapter.num_train_timesteps),
            store=self.store,
            run_key=self.run_key,
            prefilter=self.prefilter,
            top_k=None if self.config.prefilter is None else self.config.prefilter.top_k,
        )
        self.reset_stats(n_images)

    def identity(self) -> RunIdentity:
        """The run's identity: what the store key and the result block both describe."""
        return RunIdentity.of(
            self.adapter,
            checkpoint=self.checkpoint,
            image_size=self.image_size,
            sampler=self.sampler.name,
            options=self.options,
            config=self.config,
            prompts=self.prompts,
            seed=self.seed,
            timestep_weights=self.timestep_weights,
        )

    def run_description(self) -> dict[str, Any]:
        """Everything that determines an image's outcome besides the image (the store's run key)."""
        return self.identity().store_description()

    def _open_store(self) -> None:
        if self.store is None:
            self.store = open_run_store(self._store_arg, self.config.resume)
        if self.store is None:
            self.run_key = None
            return
        description = self.run_description()
        self.run_key = run_key(description)
        self.store.register_run(self.run_key, description)

    @property
    def n_classes(self) -> int:
        if self.classnames is None:
            raise DiffclsError(
                "the classifier has no classes yet: call model.prepare(classnames, templates) first (inside clip_benchmark, diffcls_plugin.register() does it)"
            )
        return len(self.classnames)

    def encode_text(self, text_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The prompts of one class (in the harness's class order) -> their one-hot class vectors.

        Returns:
            (n_texts, C) float32 one-hot rows.
        """
        n_classes = self.n_classes
        texts = self.tokenizer.decode(text_ids)
        class_idx = self._next_text_class % n_classes
        if texts != self.prompts[class_idx]:
            matches = [c for c, p in enumerate(self.prompts) if p == texts]
            if not matches:
                raise DiffclsError(
                    f"encode_text got prompts {texts[:2]}... that belong to no prepared class; "
                    "call model.prepare() with the same classnames and templates the harness uses"
                )
            class_idx = matches[0]
        self._next_text_class = class_idx + 1
        out = torch.zeros(len(texts), n_classes, device=text_ids.device)
        out[:, class_idx] = 1.0
        return out

    # ----------------------------------------------------------------------- images
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Classify a batch; return per-class scores that rank classes as the sampler did.

        Args:
            images: (B, 3, H, W) pixels in [-1, 1] from :attr:`transform`.

        Returns:
            (B, C) float32: ``C - position`` of each class in the image's ranking (higher is better).
        """
        results = self.classify(images)
        n_classes = self.n_classes
        features = torch.empty(len(results), n_classes, dtype=torch.float32)
        for b, result in enumerate(results):
            features[b, list(result.ranking)] = torch.arange(n_classes, 0, -1, dtype=torch.float32)
        return features.to(images.device)

    def scorer(self, images: torch.Tensor) -> ImageBatchScorer:
        """A batch scorer over ``images``: their latents and noise seeds computed once.

        Args:
            images: (B, 3, H, W) pixels in [-1, 1] from :attr:`transform`.
        """
        self.n_classes  # noqa: B018 - the classes must be prepared
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise DiffclsError(f"images must be (B, 3, {self.image_size}, {self.image_size}) tensors from model.transform, got {tuple(images.shape)}")
        seeds = [image_seed(self.seed, image) for image in images]
        latents = self.adapter.encode_images(images)  # (B, C, h, w) fp32, once per image
        return ImageBatchScorer(
            self.adapter,
            latents,
            seeds,
            self._prompt_embeds,
            self._class_rows,
            self.config.loss,
            self.unet_batch_size,
            weights=self.timestep_weights,
            buckets=buckets(self.unet_batch_size) if self.config.compile else None,  # fixed shapes for a compiled denoiser
        )

    def classify(self, images: torch.Tensor) -> list[SamplerResult]:
        """Run the sampler on each image of a batch, all images' rounds batched together.

        Images already in the store (same run, same pixels) are not recomputed; every other
        image is committed to it the moment its sampler finishes. Under ``torchrun`` the batch's
        images are split over the ranks and every rank returns every image's result.
        """
        self.n_classes  # noqa: B018 - the classes must be prepared
        start = time.perf_counter()
        report = self.engine.classify(images)
        if report.unet_batch_size is not None:
            self.unet_batch_size = report.unet_batch_size  # halved for the rest of the run after an out-of-memory error
        self.stats.add(report.results, report.outcomes, report.n_computed, report.unet_evals_computed, time.perf_counter() - start, report.shares, report.calls)
        self._bar.update(len(images), self.stats, with_store=self.store is not None)
        return report.results

    # ------------------------------------------------------------------ bookkeeping
    @property
    def n_images(self) -> int:
        """Images classified since the classes were prepared."""
        return self.stats.n_images

    @property
    def n_unet_evals(self) -> int:
        """UNet evaluations their outcomes cost, as originally spent."""
        return self.stats.n_unet_evals

    def reset_stats(self, n_images: int | None = None) -> None:
        self.stats = RunStats()
        self._bar.close()
        self._bar = ProgressBar(self.model_name, n_images, enabled=self.progress)

    def close_progress(self) -> None:
        self._bar.close()

    def result_block(self) -> dict[str, Any]:
        """The ``diffcls`` block of a harness result JSON."""
        return {
            **self.identity().result_fields(self.unet_batch_size),
            "model": self.model_name,
            **self.stats.cost_block(),
            "store": None if self.store is None else {"run_key": self.run_key, "file": self.store.path.name},
            "prefilter": None
            if self.prefilter is None
            else {
                **self.config.prefilter.to_dict(),
                "clip_images": self.prefilter.n_images,
                "clip_seconds_per_image": self.prefilter.seconds / max(self.prefilter.n_images, 1),
            },
        }
