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
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import torch
from torch import nn

from diffcls_plugin import distributed
from diffcls_plugin.config import DiffclsConfig, config_from_env
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.registry import RegistryView
from diffcls_plugin.samplers import SAMPLERS, SAMPLERS_BY_MODEL, SamplerResult, SamplerSpec, run_samplers
from diffcls_plugin.scoring import ImageBatchScorer, image_seed, make_noise, noise_seed  # noqa: F401 - re-exported
from diffcls_plugin.store import Outcome, OutcomeStore, checkpoint_fingerprint, code_fingerprint, image_key, resume_enabled, run_key
from diffcls_plugin.zoo import DEFAULT_CHECKPOINT, Checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)


def _sampler_name(spec: SamplerSpec) -> str:
    return spec.name


# harness model name -> sampler name, live over the sampler registrations
MODELS: RegistryView[SamplerSpec, str] = RegistryView(SAMPLERS_BY_MODEL, _sampler_name)

VERSIONED_PACKAGES = ("diffcls-plugin", "torch", "diffusers", "transformers", "clip-benchmark", "open-clip-torch", "numpy")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def class_prompts(classnames: Sequence[str], templates: Sequence[str] | dict[str, Sequence[str]]) -> list[list[str]]:
    """The prompts of each class exactly as the harness builds them.

    ``templates`` is a list of ``"... {c} ..."`` strings, or a dict from class name to its own
    prompts (CuPL), possibly of unequal lengths.
    """
    prompts = []
    for name in classnames:
        if isinstance(templates, dict):
            if name not in templates:
                raise DiffclsError(f"the per-class templates have no prompts for class {name!r}; add them to the template file")
            texts = list(templates[name])
        elif isinstance(templates, (list, tuple)):
            texts = [template.format(c=name) for template in templates]
        else:
            raise DiffclsError(f"templates must be a list or a dict, got {type(templates).__name__}")
        if not texts:
            raise DiffclsError(f"class {name!r} has no prompts; give at least one template")
        prompts.append(texts)
    return prompts


class PromptTokenizer:
    """The harness's ``tokenizer(texts)``: remembers each text and returns ``(n, 1)`` text ids."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._texts: list[str] = []

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids = []
        for text in texts:
            if text not in self._ids:
                self._ids[text] = len(self._texts)
                self._texts.append(text)
            ids.append(self._ids[text])
        return torch.tensor(ids, dtype=torch.long).unsqueeze(1)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self._texts[i] for i in ids.reshape(-1).tolist()]


class DiffusionClassifier(nn.Module):
    """A Stable Diffusion zero-shot classifier with a CLIP-like interface.

    Args:
        adapter: a :class:`~diffcls_plugin.adapters.DiffusionAdapter`.
        sampler: a registered sampler name (``baseline``, ``adaptive``, ``hierarchical`` ...).
        config: every other option.
        seed: the run seed; each image's noise comes from it and the image's content.
        checkpoint: where the weights came from (recorded in results).
        model_name: the harness model name (recorded in results).
        progress: show a progress bar with images done and UNet evaluations per second.
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
        self.timestep_weights = None  # TimestepWeights when the config names a weights file
        if self.config.timestep_weights is not None:
            from diffcls_plugin.weighting import is_scheme, load_weights, scheme_weights

            value = self.config.timestep_weights
            self.timestep_weights = scheme_weights(value, adapter) if is_scheme(value) else load_weights(value)
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
        self._bar = None
        self._store_arg = store
        self.prefilter = None  # a ClipPrefilter when the config asks for one
        self.store: OutcomeStore | None = None
        self.run_key: str | None = None
        self.reset_stats()

    # ----------------------------------------------------------------- classes and prompts
    def prepare(self, classnames: Sequence[str], templates, n_images: int | None = None) -> None:
        """Fix the classes and embed their prompts once (before the first image).

        Args:
            classnames: the dataset's class names, in label order.
            templates: list templates (``"a photo of a {c}."``) or a dict class -> prompts.
            n_images: the dataset size, for the progress bar (optional).
        """
        if not classnames:
            raise DiffclsError("the dataset has no classes; diffusion classifiers need class names")
        prompts = class_prompts(classnames, templates)
        policy = self.config.prompts
        counts = [len(p) for p in prompts]
        if policy == "first":
            texts = [p[0] for p in prompts]
            rows = [[c] for c in range(len(prompts))]
            if max(counts) > 1:
                logger.warning(
                    "diffcls: scoring each class with its first prompt only (%r, ...), as Li et al.; "
                    "%d prompts per class are available: set 'prompts: ensemble' or 'prompts: all' to use them",
                    texts[0],
                    max(counts),
                )
            embeds = self.adapter.encode_prompts(texts)
        elif policy == "ensemble":
            flat = [t for p in prompts for t in p]
            all_embeds = self.adapter.encode_prompts(flat)
            chunks = torch.split(all_embeds, counts)
            embeds = torch.stack([chunk.mean(dim=0) for chunk in chunks])  # (C, L, D)
            rows = [[c] for c in range(len(prompts))]
        else:  # "all": every prompt scored, errors averaged per class
            flat = [t for p in prompts for t in p]
            embeds = self.adapter.encode_prompts(flat)
            starts = [sum(counts[:c]) for c in range(len(counts))]
            rows = [list(range(s, s + n)) for s, n in zip(starts, counts)]
            if max(counts) > 1:
                logger.warning(
                    "diffcls: 'prompts: all' scores every prompt: %.1f UNet evaluations per sampler evaluation",
                    sum(counts) / len(counts),
                )
        self.classnames = list(classnames)
        self.prompts = prompts
        self._prompt_embeds = embeds
        self._class_rows = rows
        self._next_text_class = 0
        if self.config.prefilter is not None:
            from diffcls_plugin.prefilter import ClipPrefilter

            if self.prefilter is None or self.prefilter.options != self.config.prefilter:
                self.prefilter = ClipPrefilter(self.config.prefilter, device=self.adapter.device)
            self.prefilter.prepare(prompts)
        self._open_store()
        self.reset_stats(n_images)

    def run_description(self) -> dict[str, Any]:
        """Everything that determines an image's outcome besides the image (the store's run key)."""
        return {
            "format": 1,
            "code": code_fingerprint(),
            "versions": {k: v for k, v in package_versions().items() if k in ("diffcls-plugin", "torch", "diffusers", "transformers")},
            "checkpoint": checkpoint_fingerprint(self.checkpoint),
            "prediction_type": self.adapter.prediction_type,
            "num_train_timesteps": self.adapter.num_train_timesteps,
            "dtype": str(self.adapter.dtype).replace("torch.", ""),
            "device_type": torch.device(self.adapter.device).type,
            "image_size": self.image_size,
            "sampler": self.sampler.name,
            "options": self.options.to_dict(),
            "loss": self.config.loss,
            "prompt_policy": self.config.prompts,
            "prompts": self.prompts,
            "seed": self.seed,
            "prefilter": None if self.config.prefilter is None else self.config.prefilter.to_dict(),
            "timestep_weights": None if self.timestep_weights is None else self.timestep_weights.digest,
        }

    def _open_store(self) -> None:
        if self._store_arg is False or (self._store_arg is None and not resume_enabled(self.config.resume)):
            self.store, self.run_key = None, None
            return
        if self.store is None:
            self.store = self._store_arg if isinstance(self._store_arg, OutcomeStore) else OutcomeStore()
        description = self.run_description()
        self.run_key = run_key(description)
        self.store.register_run(self.run_key, description)

    @property
    def n_classes(self) -> int:
        if self.classnames is None:
            raise DiffclsError(
                "the classifier has no classes yet: call model.prepare(classnames, templates) first "
                "(inside clip_benchmark, diffcls_plugin.register() does it)"
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
            raise DiffclsError(
                f"images must be (B, 3, {self.image_size}, {self.image_size}) tensors from model.transform, "
                f"got {tuple(images.shape)}"
            )
        seeds = [image_seed(self.seed, image) for image in images]
        latents = self.adapter.encode_images(images)  # (B, C, h, w) fp32, once per image
        return ImageBatchScorer(
            self.adapter, latents, seeds, self._prompt_embeds, self._class_rows, self.config.loss, self.unet_batch_size,
            weights=self.timestep_weights,
        )

    def classify(self, images: torch.Tensor) -> list[SamplerResult]:
        """Run the sampler on each image of a batch, all images' rounds batched together.

        Images already in the store (same run, same pixels) are not recomputed; every other
        image is committed to it the moment its sampler finishes. Under ``torchrun`` the batch's
        images are split over the ranks and every rank returns every image's result (see
        :mod:`diffcls_plugin.distributed`).
        """
        start = time.perf_counter()
        rank, world_size = distributed.world()
        if world_size == 1:
            results, outcomes, n_computed, evals_computed = self._classify_here(images)
            shares = [len(images)]
        else:
            mine = distributed.my_share(len(images), rank, world_size)
            local = self._classify_here(images[mine]) if mine else ([], [], 0, 0)
            digest = hashlib.sha256(images.detach().float().cpu().numpy().tobytes()).hexdigest()
            parts = distributed.gather((digest, mine, *local))
            if len({part[0] for part in parts}) > 1:
                raise DiffclsError(
                    "the torchrun ranks loaded different batches, so their images cannot be shared out; "
                    "give every rank the same data and loader settings (and do not pass the harness's --distributed)"
                )
            results, outcomes = [None] * len(images), [None] * len(images)
            for _, positions, part_results, part_outcomes, _, _ in parts:
                for b, result, outcome in zip(positions, part_results, part_outcomes):
                    results[b], outcomes[b] = result, outcome
            n_computed = sum(part[4] for part in parts)
            evals_computed = sum(part[5] for part in parts)
            shares = [len(part[1]) for part in parts]
        # the cost of the results, as originally spent (stored images included) ...
        self.n_images += len(images)
        self.n_unet_evals += sum(o.n_unet_evals for o in outcomes)
        self.n_sampler_evals += sum(r.n_evals for r in results)
        self.seconds += sum(o.seconds for o in outcomes)
        for r in results:
            self.stop_reasons[r.stop_reason] = self.stop_reasons.get(r.stop_reason, 0) + 1
        # ... and what was computed this time (by every rank)
        self.n_images_computed += n_computed
        self.n_unet_evals_computed += evals_computed
        self.seconds_computed += time.perf_counter() - start
        self.images_per_rank = [a + b for a, b in zip(self.images_per_rank, shares)] if len(self.images_per_rank) == len(shares) else shares
        self._update_progress(len(images))
        return results  # type: ignore[return-value]

    def _classify_here(self, images: torch.Tensor) -> tuple[list[SamplerResult], list[Outcome], int, int]:
        """This process's images: (results, outcomes, images computed, UNet evaluations computed)."""
        n_classes = self.n_classes
        keys = [image_key(image) for image in images] if self.store is not None else None
        stored = self.store.get_many(self.run_key, keys) if keys is not None else {}
        results: list[SamplerResult | None] = [None] * len(images)
        outcomes: list[Outcome | None] = [None] * len(images)
        for b, key in enumerate(keys or []):
            if key in stored:
                outcomes[b] = stored[key]
                results[b] = stored[key].result
        todo = [b for b in range(len(images)) if results[b] is None]
        if not todo:
            return results, outcomes, 0, 0  # type: ignore[return-value]
        encode_start = time.perf_counter()
        pixels = images[todo] if len(todo) < len(images) else images
        scorer = self.scorer(pixels)
        orders = self.prefilter.order(pixels) if self.prefilter is not None else None  # per image, every class in CLIP's order
        encode_share = (time.perf_counter() - encode_start) / len(todo)
        k = min(self.config.prefilter.top_k, n_classes) if orders is not None else n_classes
        batch_score = scorer if orders is None else (
            lambda image_idx, class_idx, timesteps, noise_idx: scorer(
                image_idx, [orders[i][c] for i, c in zip(image_idx, class_idx)], timesteps, noise_idx
            )
        )

        def finished(i: int, result: SamplerResult, seconds: float) -> None:
            b = todo[i]
            if orders is not None:  # the sampler ranked CLIP's top k (local indices): map back, then CLIP's rest
                order = orders[i]
                scores = [math.nan] * n_classes
                for local, score in enumerate(result.scores):
                    scores[order[local]] = score
                ranking = tuple(order[c] for c in result.ranking) + tuple(order[k:])
                result = SamplerResult(ranking, tuple(scores), result.n_evals, result.n_rounds, result.stop_reason)
            outcome = Outcome(result, scorer.unet_evals[i], seconds + encode_share)
            results[b], outcomes[b] = result, outcome
            if self.store is not None:
                self.store.put(self.run_key, keys[b], outcome)

        samplers = [self.sampler.fn(k, self.options, self.adapter.num_train_timesteps) for _ in todo]
        run_samplers(samplers, batch_score, on_finish=finished)
        self.unet_batch_size = scorer.batch_size  # halved for the rest of the run after an out-of-memory error
        return results, outcomes, len(todo), sum(scorer.unet_evals)  # type: ignore[return-value]

    # ------------------------------------------------------------------ bookkeeping
    def reset_stats(self, n_images: int | None = None) -> None:
        self.n_images = 0
        self.n_unet_evals = 0
        self.n_sampler_evals = 0
        self.seconds = 0.0
        self.n_images_computed = 0
        self.n_unet_evals_computed = 0
        self.seconds_computed = 0.0
        self.images_per_rank: list[int] = []
        self.stop_reasons: dict[str, int] = {}
        self._expected_images = n_images
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _update_progress(self, n_images: int) -> None:
        if not self.progress or distributed.world()[0] != 0:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._expected_images, desc=f"{self.model_name}", unit="img", leave=True)
        self._bar.update(n_images)
        postfix = {
            "unet_evals_per_s": f"{self.n_unet_evals_computed / max(self.seconds_computed, 1e-9):.1f}",
            "evals_per_img": f"{self.n_unet_evals / max(self.n_images, 1):.1f}",
        }
        if self.store is not None:
            postfix["from_store"] = self.n_images - self.n_images_computed
        self._bar.set_postfix(postfix)

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def result_block(self) -> dict[str, Any]:
        """The ``diffcls`` block of a harness result JSON."""
        n = max(self.n_images, 1)
        return {
            "sampler": self.sampler.name,
            "model": self.model_name,
            "config": {
                "sampler": self.options.to_dict(),
                "loss": self.config.loss,
                "prompts": self.config.prompts,
                "dtype": str(self.adapter.dtype).replace("torch.", ""),
                "device": str(self.adapter.device),
                "image_size": self.image_size,
                "unet_batch_size": self.config.unet_batch_size,
                "unet_batch_size_used": self.unet_batch_size,
                "allow_pickle": self.config.allow_pickle,
                "timestep_weights": None if self.timestep_weights is None else self.timestep_weights.describe(),
                "full": self.config.to_dict(),
            },
            "seed": self.seed,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "family": getattr(self.adapter, "family", "sd"),
            "prediction_type": self.adapter.prediction_type,
            "num_train_timesteps": self.adapter.num_train_timesteps,
            "versions": package_versions(),
            "n_images": self.n_images,
            "n_classes": len(self.classnames or []),
            "prompts_per_class": [len(p) for p in self.prompts],
            # the cost of the result, as each image's outcome was originally computed
            "unet_evals_per_image": self.n_unet_evals / n,
            "sampler_evals_per_image": self.n_sampler_evals / n,
            "seconds_per_image": self.seconds / n,
            "stop_reasons": dict(sorted(self.stop_reasons.items())),
            # what this process computed (the rest came from the resume store)
            "computed": {
                "n_images": self.n_images_computed,
                "n_images_from_store": self.n_images - self.n_images_computed,
                "unet_evals": self.n_unet_evals_computed,
                "seconds": self.seconds_computed,
            },
            "store": None if self.store is None else {"run_key": self.run_key, "file": self.store.path.name},
            "distributed": {"world_size": max(1, len(self.images_per_rank)), "images_per_rank": list(self.images_per_rank) or [0]},
            "prefilter": None if self.prefilter is None else {
                **self.config.prefilter.to_dict(),
                "clip_images": self.prefilter.n_images,
                "clip_seconds_per_image": self.prefilter.seconds / max(self.prefilter.n_images, 1),
            },
        }


def load_classifier(
    model_name: str,
    pretrained: str | Checkpoint | None = None,
    *,
    device: torch.device | str = "cpu",
    config: DiffclsConfig | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    progress: bool = True,
    store: OutcomeStore | bool | None = None,
) -> DiffusionClassifier:
    """Build a classifier by harness model name (``diffusion-hier`` ...) and ``--pretrained`` value.

    Args:
        model_name: a registered model name: ``diffusion-baseline``, ``diffusion-adaptive``,
            ``diffusion-hier`` ... (see :data:`MODELS`).
        pretrained: a zoo name, hub id or diffusers folder (default ``sd2-base``), or a resolved
            :class:`~diffcls_plugin.zoo.Checkpoint`.
        device: where to compute.
        config: the options; ``None`` reads ``$DIFFCLS_CONFIG`` (or the defaults).
        seed: the run seed.
        cache_dir: the hub cache folder.
        progress: show a progress bar.
        store: the resume store (see :class:`DiffusionClassifier`); ``None`` follows the config.

    Everything the user chose is validated before any weights load.
    """
    from diffcls_plugin.adapters import load_adapter

    sampler = MODELS.get(model_name)
    config = config if config is not None else config_from_env()
    config.validate()
    checkpoint = pretrained if isinstance(pretrained, Checkpoint) else resolve_checkpoint(pretrained or DEFAULT_CHECKPOINT)
    adapter = load_adapter(
        checkpoint,
        device=device,
        dtype=config.dtype,
        allow_pickle=config.allow_pickle,
        cache_dir=cache_dir,
        compile=config.compile,
    )
    return DiffusionClassifier(
        adapter, sampler, config, seed=seed, checkpoint=checkpoint, model_name=model_name, progress=progress, store=store
    )
