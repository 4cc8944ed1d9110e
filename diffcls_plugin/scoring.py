"""The scoring engine: fixed per-image noise, and the batch scorer that turns a sampler's
(image, class, timestep, noise) triples into flat UNet batches.

It takes values (the adapter, latents, seeds, prompt embeddings, class rows, the loss and a
batch size), never the classifier, and counts its own UNet evaluations per image.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from diffcls_plugin.calls import CallLog, padded, split
from diffcls_plugin.errors import DiffclsError

logger = logging.getLogger(__name__)


def quantise(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> the 8-bit values they came from (uint8, on the CPU): what identifies an
    image's content for its noise seed and its resume-store key."""
    return ((pixels.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def image_seed(run_seed: int, pixels: torch.Tensor) -> int:
    """A 63-bit seed from the run seed and the image's content (quantised to 8 bits).

    Content, not loader position, so an image gets the same noise whatever the batch size, the
    number of loader workers, or the subset it is evaluated in.
    """
    digest = hashlib.blake2b(f"{run_seed}:".encode(), digest_size=8)
    digest.update(quantise(pixels).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def noise_seed(seed: int, timestep: int, noise_idx: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{timestep}:{noise_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def make_noise(seed: int, timestep: int, noise_idx: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The image's fixed noise for ``(timestep, noise_idx)``: fp32, drawn on the CPU (device-independent)."""
    generator = torch.Generator().manual_seed(noise_seed(seed, timestep, noise_idx))
    return torch.randn(shape, generator=generator)


class ImageBatchScorer:
    """A :class:`~diffcls_plugin.samplers.BatchScorer` over one batch of images.

    Expands each (image, class, timestep, noise) triple into one UNet input per prompt row of
    the class, runs them in flat batches of at most ``batch_size``, and averages a class's rows.

    Args:
        adapter: computes the errors of flat UNet batches (``adapter.errors``).
        latents: (B, C, h, w) the images' latents.
        seeds: per image, its noise seed.
        prompt_embeds: (P, L, D) the prompt embeddings.
        class_rows: per class, the rows of ``prompt_embeds`` it is scored with.
        loss: the error (``l2``, ``l1``, ``huber``).
        batch_size: UNet inputs per forward pass; halved (and kept) after an out-of-memory error.
        weights: ``None``, or :class:`~diffcls_plugin.weighting.TimestepWeights` multiplying each
            error at timestep ``t`` by ``weights.at(t)``.
        buckets: ``None`` (every pass runs at its own size), or the fixed pass sizes of a compiled
            denoiser (:func:`~diffcls_plugin.calls.buckets`): each pass is padded up to the next
            one with copies of its last input, whose errors are dropped.

    Attributes:
        unet_evals: per image, the UNet evaluations spent on it so far (padding excluded).
        batch_size: the batch size in use.
        calls: the :class:`~diffcls_plugin.calls.CallLog` of every forward pass, by round (one
            call of the scorer is one round).
    """

    def __init__(
        self,
        adapter,
        latents: torch.Tensor,
        seeds: list[int],
        prompt_embeds: torch.Tensor,
        class_rows: list[list[int]],
        loss: str,
        batch_size: int,
        weights=None,
        buckets: tuple[int, ...] | None = None,
    ) -> None:
        self.adapter = adapter
        self.latents = latents
        self.seeds = seeds
        self.embeds = prompt_embeds
        self.rows = class_rows
        self.loss = loss
        self.batch_size = batch_size
        self.weights = weights
        self.latent_shape = tuple(latents.shape[1:])
        self.unet_evals = [0] * len(latents)
        self.buckets = buckets
        self.calls = CallLog()
        self._round = 0

    def _halve_batch_size(self) -> None:
        if self.batch_size == 1:
            raise torch.OutOfMemoryError("out of memory with a UNet batch of 1; use a smaller image_size or dtype")
        self.batch_size //= 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.warning("diffcls: out of memory; UNet batch size halved to %d for the rest of the run", self.batch_size)

    def _sizes(self) -> tuple[int, ...] | None:
        """The buckets that fit the batch size in use (it halves after an out-of-memory error)."""
        if self.buckets is None:
            return None
        return tuple(b for b in self.buckets if b < self.batch_size) + (self.batch_size,)

    def _non_finite_cause(self) -> str:
        """Why the UNet gave a non-finite error, as far as can be told, and what to do."""
        unet = getattr(self.adapter, "unet", None)
        dtype = str(getattr(self.adapter, "dtype", "")).replace("torch.", "")
        if unet is not None and any(not torch.isfinite(p).all() for p in unet.parameters()):
            return "the UNet's weights contain NaN or inf values: the checkpoint is damaged; download or save it again"
        if not torch.isfinite(self.latents).all():
            return "the VAE gave non-finite latents for an image: check the VAE weights and the input images"
        if not torch.isfinite(self.embeds).all():
            return "the text encoder gave non-finite prompt embeddings: check the text encoder weights"
        if dtype == "float16":
            return "the UNet overflowed in fp16 (non-finite errors): set 'dtype: bf16' (or fp32)"
        return f"the UNet gave non-finite errors in {dtype} with finite weights and inputs; please report this with the checkpoint"

    def __call__(self, image_idx, class_idx, timesteps, noise_idx) -> list[float]:
        rows = self.rows
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
            self.unet_evals[i] += len(rows[c])
        noises: dict[tuple[int, int, int], torch.Tensor] = {}
        for key in dict.fromkeys(in_noise):
            i, t, n = key
            noises[key] = make_noise(self.seeds[i], t, n, self.latent_shape)
        # passes are queued without waiting for each other's errors: one copy back per round, so on
        # a GPU the next pass's inputs are prepared while the last one computes
        outs: list[torch.Tensor] = []
        start = 0
        while start < len(owner):
            size = split(len(owner) - start, self.batch_size)[0]  # equal passes: no small leftover
            run_size = padded(size, self._sizes())
            take = list(range(start, start + size)) + [start + size - 1] * (run_size - size)  # padding: copies of the last input
            idx = torch.tensor([in_image[k] for k in take])
            try:
                out = self.adapter.errors(
                    self.latents[idx.to(self.latents.device)],
                    torch.stack([noises[in_noise[k]] for k in take]),
                    torch.tensor([in_t[k] for k in take], dtype=torch.long),
                    self.embeds[torch.tensor([in_row[k] for k in take], device=self.embeds.device)],
                    self.loss,
                )
            except torch.OutOfMemoryError:
                self._halve_batch_size()
                continue
            outs.append(out[:size])
            self.calls.add(self._round, size, run_size)
            start += size
        self._round += 1
        errors = torch.cat(outs).float().cpu() if outs else torch.empty(0)
        if not torch.isfinite(errors).all():
            raise DiffclsError(self._non_finite_cause())
        per_triple = torch.zeros(len(image_idx), dtype=torch.float64)
        per_triple.index_add_(0, torch.tensor(owner), errors.double())
        counts = torch.tensor([len(rows[c]) for c in class_idx], dtype=torch.float64)
        if self.weights is not None:
            counts /= torch.tensor([self.weights.at(int(t)) for t in timesteps], dtype=torch.float64)
        return (per_triple / counts).tolist()
