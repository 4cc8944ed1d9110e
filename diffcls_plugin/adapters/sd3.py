"""Stable Diffusion 3 / 3.5: an MMDiT transformer trained by flow matching (rectified flow).

As diffusers' ``StableDiffusion3Pipeline`` and its training scripts define it:

- prompts are encoded by the pipeline's own ``encode_prompt``: the two CLIP encoders'
  penultimate states concatenated and padded to the T5 width, followed by the T5 tokens (zeros
  when T5 is dropped, as diffusers allows: ``text_encoder_3`` absent from the folder, or
  ``load_t5=False``), and the two CLIP pooled embeddings concatenated (``pooled_projections``);
- the forward process is ``x_t = (1 - sigma) x_0 + sigma * noise`` and the network predicts the
  velocity ``noise - x_0``, which is the error's target;
- latents are ``(mean - shift_factor) * scaling_factor`` of the 16-channel VAE;
- the samplers' integer timestep ``t`` in ``[0, T)`` (T = ``num_train_timesteps``, 1000) is the
  scheduler's training grid read from clean to noisy: ``sigma(t)`` is the flow-matching
  scheduler's sigma for training timestep ``t + 1`` (with its ``shift``), and the transformer
  sees ``sigma(t) * T``, as in training. So small ``t`` is nearly clean and large ``t`` nearly
  pure noise, as for the DDPM models: Li et al.'s grid, the hierarchical directions and the race
  mean the same thing here (the shift makes the grid denser in sigma near the noisy end, as
  SD3's own sampling and training do).

:meth:`encode_prompts` packs the pooled embedding as one extra token row, zero-padded to the
sequence width, so the classifier handles one tensor per prompt.
"""

from __future__ import annotations

import torch

from diffcls_plugin.adapters.compiled import compile_denoiser
from diffcls_plugin.adapters.stable_diffusion import _to, error, preprocess
from diffcls_plugin.errors import DiffclsError


class StableDiffusion3Adapter:
    """MMDiT transformer + 16-channel VAE + CLIP-L, CLIP-G (and optionally T5) + flow-matching schedule."""

    family = "sd3"
    prediction_type = "flow"

    def __init__(
        self,
        transformer,
        vae,
        text_encoder,
        text_encoder_2,
        text_encoder_3,
        tokenizer,
        tokenizer_2,
        tokenizer_3,
        scheduler,
        device="cpu",
        dtype=torch.float32,
        compile=False,
        max_sequence_length: int = 256,
    ) -> None:
        from diffusers import StableDiffusion3Pipeline

        self.device = torch.device(device)
        self.dtype = dtype
        self.transformer = _to(transformer, self.device, dtype)
        self.unet = self.transformer  # the denoiser, under the name the scorer's checks use
        self.vae = _to(vae, self.device, dtype)
        encoders = [_to(e, self.device, dtype) if e is not None else None for e in (text_encoder, text_encoder_2, text_encoder_3)]
        self.transformer = compile_denoiser(self.transformer, compile)
        self.scheduler = scheduler
        # the pipeline object only encodes prompts here (its encode_prompt is the reference)
        self._pipe = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            text_encoder=encoders[0],
            tokenizer=tokenizer,
            text_encoder_2=encoders[1],
            tokenizer_2=tokenizer_2,
            text_encoder_3=encoders[2],
            tokenizer_3=tokenizer_3,
        )
        self.max_sequence_length = max_sequence_length
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.sigmas = scheduler.sigmas.flip(0).float()  # (T,) ascending: sigma(t) for t = 0 .. T-1
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.native_image_size = int(transformer.config.sample_size) * self.vae_scale_factor
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.pooled_dim = int(transformer.config.pooled_projection_dim)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        factor = self.vae_scale_factor * int(self.transformer.config.patch_size)
        if image_size % factor:
            raise DiffclsError(f"image_size {image_size} must be a multiple of the VAE factor x patch size, {factor}")
        side = image_size // self.vae_scale_factor
        return (int(self.transformer.config.in_channels), side, side)

    def transform(self, image_size: int):
        return preprocess(image_size)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Prompts -> ``(P, L + 1, D)``: the pipeline's prompt embeddings, then the pooled row."""
        rows = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            embeds, _, pooled, _ = self._pipe.encode_prompt(
                prompt=chunk,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
            if pooled.shape[-1] > embeds.shape[-1]:
                raise DiffclsError(f"pooled width {pooled.shape[-1]} exceeds the sequence width {embeds.shape[-1]}")
            row = torch.zeros(embeds.shape[0], 1, embeds.shape[-1], dtype=embeds.dtype, device=embeds.device)
            row[:, 0, : pooled.shape[-1]] = pooled
            rows.append(torch.cat([embeds, row], dim=1))
        return torch.cat(rows)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [-1, 1] -> (B, 16, h, w) fp32 latents: (mean - shift) x scale."""
        posterior = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return ((posterior.mean - self.shift_factor) * self.scaling_factor).float()

    def sigma(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(K,) integer timesteps -> (K,) fp32 sigmas of the flow-matching training grid."""
        return self.sigmas.to(timesteps.device)[timesteps]

    @torch.no_grad()
    def errors(self, latents, noise, timesteps, prompt_embeds, loss: str = "l2") -> torch.Tensor:
        """One transformer batch of errors against the velocity ``noise - x_0`` (K,)."""
        timesteps = timesteps.to(self.device)
        latents, noise = latents.to(self.device), noise.to(self.device)
        sigma = self.sigma(timesteps).view(-1, 1, 1, 1)
        noisy = ((1 - sigma) * latents + sigma * noise).to(self.dtype)
        prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        hidden, pooled = prompt_embeds[:, :-1], prompt_embeds[:, -1, : self.pooled_dim]
        pred = self.transformer(
            hidden_states=noisy, encoder_hidden_states=hidden, pooled_projections=pooled, timestep=(sigma.view(-1) * self.num_train_timesteps).to(self.dtype)
        ).sample
        return error(pred.float(), (noise - latents).float(), loss)


def load_sd3(checkpoint, *, device="cpu", dtype="auto", allow_pickle=False, cache_dir=None, compile=False) -> StableDiffusion3Adapter:
    """Load an SD3 / SD3.5 checkpoint's components; T5 only when the folder has it."""
    import importlib.util
    from pathlib import Path

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from diffcls_plugin.adapters.stable_diffusion import resolve_dtype

    torch_dtype = resolve_dtype(dtype, device)
    common = dict(revision=checkpoint.revision, cache_dir=cache_dir)
    weights = dict(common, use_safetensors=None if allow_pickle else True)
    big = dict(weights, torch_dtype=torch_dtype, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    has_t5 = (Path(checkpoint.source) / "text_encoder_3").is_dir() if checkpoint.is_local else True
    try:
        transformer = SD3Transformer2DModel.from_pretrained(checkpoint.source, subfolder="transformer", **big)
        vae = AutoencoderKL.from_pretrained(checkpoint.source, subfolder="vae", **big)
        encoders = [CLIPTextModelWithProjection.from_pretrained(checkpoint.source, subfolder=f, **weights) for f in ("text_encoder", "text_encoder_2")]
        tokenizers = [CLIPTokenizer.from_pretrained(checkpoint.source, subfolder=f, **common) for f in ("tokenizer", "tokenizer_2")]
        t5 = T5EncoderModel.from_pretrained(checkpoint.source, subfolder="text_encoder_3", **big) if has_t5 else None
        t5_tokenizer = T5TokenizerFast.from_pretrained(checkpoint.source, subfolder="tokenizer_3", **common) if has_t5 else None
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(checkpoint.source, subfolder="scheduler", **common)
    except (OSError, ValueError) as err:
        where = "folder" if checkpoint.is_local else "hub id"
        raise DiffclsError(f"could not load SD3 {where} {checkpoint.source!r}: {err}; check the folder or download it first") from err
    return StableDiffusion3Adapter(transformer, vae, *encoders, t5, *tokenizers, t5_tokenizer, scheduler, device=device, dtype=torch_dtype, compile=compile)
