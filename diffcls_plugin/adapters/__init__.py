"""Diffusion-family adapters: the only place model libraries are imported.

An adapter turns pixels into latents, prompts into embeddings, and (latents, noise, timestep,
prompt) into a per-input error. The classifier (``diffcls_plugin.model``) and the samplers know
nothing else about the model.
"""

from __future__ import annotations

from typing import Protocol

import torch


class DiffusionAdapter(Protocol):
    device: torch.device
    dtype: torch.dtype
    num_train_timesteps: int
    prediction_type: str
    native_image_size: int

    def latent_shape(self, image_size: int) -> tuple[int, int, int]: ...

    def transform(self, image_size: int): ...

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor: ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def errors(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        loss: str,
    ) -> torch.Tensor: ...
