"""Stable Diffusion XL: two CLIP text encoders, pooled text embeddings and size conditioning.

As diffusers' ``StableDiffusionXLPipeline`` builds them:

- the prompt embedding is the concatenation (last axis) of the penultimate hidden states of
  ``text_encoder`` (CLIP ViT-L) and ``text_encoder_2`` (OpenCLIP bigG), ``(P, 77, 768 + 1280)``;
- the pooled embedding is ``text_encoder_2``'s projected output, ``(P, 1280)``, passed to the UNet
  as ``added_cond_kwargs["text_embeds"]``;
- ``added_cond_kwargs["time_ids"]`` is ``(original_size, crops_coords_top_left, target_size)`` =
  ``(S, S, 0, 0, S, S)`` for an image of side ``S`` that was neither cropped nor resized;
- the native resolution is ``unet.config.sample_size`` x the VAE factor (1024 px), and latents are
  scaled by the SDXL VAE's ``scaling_factor`` (0.13025).

So that the classifier and its scorer handle one tensor per prompt (indexing, prompt ensembles),
:meth:`encode_prompts` packs the pooled embedding as one extra token row, zero-padded to the
hidden width: ``(P, 77 + 1, 2048)``; :meth:`predict` unpacks it.
"""

from __future__ import annotations

import torch

from diffcls_plugin.adapters.stable_diffusion import StableDiffusionAdapter, _to


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """UNet + VAE + two CLIP text encoders + noise schedule of one SDXL checkpoint.

    Args:
        unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler: the
            diffusers/transformers components (``text_encoder_2`` a ``CLIPTextModelWithProjection``).
        device, dtype, compile: as :class:`StableDiffusionAdapter`.
    """

    family = "sdxl"

    def __init__(self, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler, device="cpu", dtype=torch.float32, compile=False) -> None:
        super().__init__(unet, vae, text_encoder, tokenizer, scheduler, device=device, dtype=dtype, compile=compile)
        self.text_encoder_2 = _to(text_encoder_2, self.device, dtype)
        self.tokenizer_2 = tokenizer_2
        self.pooled_dim = int(text_encoder_2.config.projection_dim)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> ``(P, L + 1, D1 + D2)``: both encoders' penultimate hidden states, then the
        pooled embedding as a last row (zero-padded)."""
        hidden, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
            states, pools = [], []
            for chunk in torch.split(ids, batch_size):
                out = encoder(chunk.to(self.device), output_hidden_states=True)
                states.append(out.hidden_states[-2])
                if encoder is self.text_encoder_2:
                    pools.append(out.text_embeds)
            hidden.append(torch.cat(states))
            if pools:
                pooled = torch.cat(pools)
        embeds = torch.cat(hidden, dim=-1)  # (P, L, D1 + D2)
        row = torch.zeros(embeds.shape[0], 1, embeds.shape[-1], dtype=embeds.dtype, device=embeds.device)
        row[:, 0, : pooled.shape[-1]] = pooled
        return torch.cat([embeds, row], dim=1)

    def time_ids(self, side: int, n: int) -> torch.Tensor:
        """``(n, 6)`` size conditioning: original size, crop top-left (0, 0), target size."""
        return torch.tensor([[side, side, 0, 0, side, side]], dtype=self.dtype, device=self.device).repeat(n, 1)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The UNet's output: ``prompt_embeds`` rows of :meth:`encode_prompts` unpacked into hidden
        states and the pooled embedding, with the size ids of the latents' side."""
        hidden, pooled = prompt_embeds[:, :-1], prompt_embeds[:, -1, : self.pooled_dim]
        side = noisy.shape[-1] * self.vae_scale_factor
        cond = {"text_embeds": pooled, "time_ids": self.time_ids(side, len(noisy))}
        return self.unet(noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=cond).sample


def load_sdxl(checkpoint, *, device="cpu", dtype="auto", allow_pickle=False, cache_dir=None, compile=False) -> StableDiffusionXLAdapter:
    """Load an SDXL checkpoint's components (safetensors only unless ``allow_pickle``)."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from diffcls_plugin.adapters.stable_diffusion import load_components

    parts = load_components(
        checkpoint,
        device=device,
        dtype=dtype,
        allow_pickle=allow_pickle,
        cache_dir=cache_dir,
        extra={"text_encoder_2": CLIPTextModelWithProjection, "tokenizer_2": CLIPTokenizer},
    )
    return StableDiffusionXLAdapter(
        parts["unet"],
        parts["vae"],
        parts["text_encoder"],
        parts["text_encoder_2"],
        parts["tokenizer"],
        parts["tokenizer_2"],
        parts["scheduler"],
        device=device,
        dtype=parts["torch_dtype"],
        compile=compile,
    )
