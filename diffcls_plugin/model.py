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
import math
import logging
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import torch
from torch import nn

from diffcls_plugin.config import DiffclsConfig, config_from_env
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.registry import RegistryView
from diffcls_plugin.samplers import SAMPLERS, SAMPLERS_BY_MODEL, SamplerResult, SamplerSpec, run_samplers
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


def image_seed(run_seed: int, pixels: torch.Tensor) -> int:
    """A 63-bit seed from the run seed and the image's content (quantised to 8 bits).

    Content, not loader position, so an image gets the same noise whatever the batch size, the
    number of loader workers, or the subset it is evaluated in.
    """
    quantised = ((pixels.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    digest = hashlib.blake2b(f"{run_seed}:".encode(), digest_size=8)
    digest.update(quantised.numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def noise_seed(seed: int, timestep: int, noise_idx: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{timestep}:{noise_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def make_noise(seed: int, timestep: int, noise_idx: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The image's fixed noise for ``(timestep, noise_idx)``: fp32, drawn on the CPU (device-independent)."""
    generator = torch.Generator().manual_seed(noise_seed(seed, timestep, noise_idx))
    return torch.randn(shape, generator=generator)


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
    ) -> None:
        super().__init__()
        self.adapter = adapter
        self.sampler = SAMPLERS.get(sampler)
        self.config = config or DiffclsConfig()
        self.config.validate(adapter.num_train_timesteps)
        self.options = self.config.sampler_options(sampler)
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
        self.reset_stats(n_images)

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
        return ImageBatchScorer(self, latents, seeds)

    def classify(self, images: torch.Tensor) -> list[SamplerResult]:
        """Run the sampler on each image of a batch, all images' rounds batched together."""
        start = time.perf_counter()
        evals_before = self.n_unet_evals
        scorer = self.scorer(images)
        samplers = [
            self.sampler.fn(self.n_classes, self.options, self.adapter.num_train_timesteps) for _ in range(len(images))
        ]
        results = run_samplers(samplers, scorer)
        elapsed = time.perf_counter() - start
        self.n_images += len(results)
        self.n_sampler_evals += sum(r.n_evals for r in results)
        self.seconds += elapsed
        for r in results:
            self.stop_reasons[r.stop_reason] = self.stop_reasons.get(r.stop_reason, 0) + 1
        self._update_progress(len(results), self.n_unet_evals - evals_before, elapsed)
        return results

    def halve_batch_size(self) -> None:
        """After an out-of-memory error: retry at half the UNet batch size, and keep that size."""
        if self.unet_batch_size == 1:
            raise torch.OutOfMemoryError("out of memory with a UNet batch of 1; use a smaller image_size or dtype")
        self.unet_batch_size //= 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.warning("diffcls: out of memory; UNet batch size halved to %d for the rest of the run", self.unet_batch_size)

    # ------------------------------------------------------------------ bookkeeping
    def reset_stats(self, n_images: int | None = None) -> None:
        self.n_images = 0
        self.n_unet_evals = 0
        self.n_sampler_evals = 0
        self.seconds = 0.0
        self.stop_reasons: dict[str, int] = {}
        self._expected_images = n_images
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _update_progress(self, n_images: int, n_evals: int, elapsed: float) -> None:
        if not self.progress:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._expected_images, desc=f"{self.model_name}", unit="img", leave=True)
        self._bar.update(n_images)
        self._bar.set_postfix(
            unet_evals_per_s=f"{self.n_unet_evals / max(self.seconds, 1e-9):.1f}",
            evals_per_img=f"{self.n_unet_evals / max(self.n_images, 1):.1f}",
        )

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
                "full": self.config.to_dict(),
            },
            "seed": self.seed,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "prediction_type": self.adapter.prediction_type,
            "num_train_timesteps": self.adapter.num_train_timesteps,
            "versions": package_versions(),
            "n_images": self.n_images,
            "n_classes": len(self.classnames or []),
            "prompts_per_class": [len(p) for p in self.prompts],
            "unet_evals_per_image": self.n_unet_evals / n,
            "sampler_evals_per_image": self.n_sampler_evals / n,
            "seconds_per_image": self.seconds / n,
            "stop_reasons": dict(sorted(self.stop_reasons.items())),
        }


class ImageBatchScorer:
    """A :class:`~diffcls_plugin.samplers.BatchScorer` over one batch of images.

    Expands each (image, class, timestep, noise) triple into one UNet input per prompt of the
    class, runs them in flat batches of ``unet_batch_size``, and averages a class's prompts.
    """

    def __init__(self, model: DiffusionClassifier, latents: torch.Tensor, seeds: list[int]) -> None:
        self.model = model
        self.latents = latents  # (B, C, h, w)
        self.seeds = seeds

    def __call__(self, image_idx, class_idx, timesteps, noise_idx) -> list[float]:
        model = self.model
        adapter = model.adapter
        rows = model._class_rows
        embeds = model._prompt_embeds
        # one UNet input per (triple, prompt row)
        owner: list[int] = []
        in_image: list[int] = []
        in_row: list[int] = []
        in_t: list[int] = []
        in_noise: list[tuple[int, int, int]] = []
        for k, (i, c, t, n) in enumerate(zip(image_idx, class_idx, timesteps, noise_idx)):
            for row in rows[c]:
                owner.append(k)
                in_image.append(i)
                in_row.append(row)
                in_t.append(t)
                in_noise.append((i, t, n))
        noises: dict[tuple[int, int, int], torch.Tensor] = {}
        for key in dict.fromkeys(in_noise):
            i, t, n = key
            noises[key] = make_noise(self.seeds[i], t, n, model.latent_shape)
        errors = torch.empty(len(owner), dtype=torch.float32)
        start = 0
        while start < len(owner):
            # equal chunks of at most unet_batch_size: no small last batch (e.g. 640 -> 3 x 214, not 256 + 256 + 128)
            remaining = len(owner) - start
            sl = slice(start, start + math.ceil(remaining / math.ceil(remaining / model.unet_batch_size)))
            idx = torch.tensor(in_image[sl])
            try:
                errors[sl] = adapter.errors(
                    self.latents[idx.to(self.latents.device)],
                    torch.stack([noises[key] for key in in_noise[sl]]),
                    torch.tensor(in_t[sl], dtype=torch.long),
                    embeds[torch.tensor(in_row[sl], device=embeds.device)],
                    model.config.loss,
                ).cpu()
            except torch.OutOfMemoryError:
                model.halve_batch_size()
                continue
            start = sl.stop
        model.n_unet_evals += len(owner)
        per_triple = torch.zeros(len(image_idx), dtype=torch.float64)
        per_triple.index_add_(0, torch.tensor(owner), errors.double())
        counts = torch.tensor([len(rows[c]) for c in class_idx], dtype=torch.float64)
        return (per_triple / counts).tolist()


def load_classifier(
    model_name: str,
    pretrained: str | Checkpoint | None = None,
    *,
    device: torch.device | str = "cpu",
    config: DiffclsConfig | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    progress: bool = True,
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

    Everything the user chose is validated before any weights load.
    """
    from diffcls_plugin.adapters.stable_diffusion import load_stable_diffusion

    sampler = MODELS.get(model_name)
    config = config if config is not None else config_from_env()
    config.validate()
    checkpoint = pretrained if isinstance(pretrained, Checkpoint) else resolve_checkpoint(pretrained or DEFAULT_CHECKPOINT)
    adapter = load_stable_diffusion(
        checkpoint,
        device=device,
        dtype=config.dtype,
        allow_pickle=config.allow_pickle,
        cache_dir=cache_dir,
        compile=config.compile,
    )
    return DiffusionClassifier(
        adapter, sampler, config, seed=seed, checkpoint=checkpoint, model_name=model_name, progress=progress
    )
