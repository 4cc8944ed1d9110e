"""Diffusion-family adapters: the only place model libraries are imported.

An adapter turns pixels into latents, prompts into embeddings, and (latents, noise, timestep,
prompt) into a per-input error. The classifier (``diffcls_plugin.classifier``) and the samplers know
nothing else about the model.
"""

from __future__ import annotations

import contextlib
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


from diffcls_plugin.zoo import PIPELINE_FAMILIES, SUPPORTED, check_hub_checkpoint  # noqa: E402 - pure data and the hub check


def pipeline_class(checkpoint, cache_dir: str | None = None) -> str | None:
    """``_class_name`` of the checkpoint's ``model_index.json`` (a local folder's, or the hub's,
    fetched or read from the cache); ``None`` when it cannot be read."""
    import json
    from pathlib import Path

    try:
        if checkpoint.is_local:
            path = Path(checkpoint.source) / "model_index.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(checkpoint.source, "model_index.json", revision=checkpoint.revision, cache_dir=cache_dir))
        return json.loads(path.read_text()).get("_class_name")
    except Exception:  # noqa: BLE001 - no model_index.json (an old folder), offline and not cached ...
        return None


def family_of(checkpoint, cache_dir: str | None = None) -> str:
    """The adapter family of a checkpoint: from its pipeline class, else its zoo entry, else ``sd``.

    Raises:
        DiffclsError: a pipeline class of an unsupported family (Flux, DiT, ...), naming the supported ones.
    """
    from diffcls_plugin.errors import DiffclsError

    name = pipeline_class(checkpoint, cache_dir)
    if name is None:
        return getattr(checkpoint, "family", None) or "sd"
    if not isinstance(name, str):
        raise DiffclsError(f"--pretrained {checkpoint.name!r}: model_index.json's _class_name must be a pipeline class name, got {name!r}; fix the file")
    if name not in PIPELINE_FAMILIES:
        raise DiffclsError(f"--pretrained {checkpoint.name!r} is a {name} checkpoint; diffusion classifiers support {SUPPORTED}")
    return PIPELINE_FAMILIES[name]


def load_adapter(checkpoint, **kwargs) -> DiffusionAdapter:
    """Load the adapter of the checkpoint's family (see :func:`family_of`); a hub checkpoint that is
    not cached while the hub cannot be reached is named at once (:func:`check_hub_checkpoint`)."""
    check_hub_checkpoint(checkpoint, kwargs.get("cache_dir"))
    family = family_of(checkpoint, kwargs.get("cache_dir"))
    with quiet_loading():
        if family == "sdxl":
            from diffcls_plugin.adapters.sdxl import load_sdxl

            return load_sdxl(checkpoint, **kwargs)
        if family == "sd3":
            from diffcls_plugin.adapters.sd3 import load_sd3

            return load_sd3(checkpoint, **kwargs)
        from diffcls_plugin.adapters.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(checkpoint, **kwargs)


@contextlib.contextmanager
def quiet_loading():
    """diffusers' and transformers' loading bars (``Loading weights: 36/36``, one per component)
    off inside the block; huggingface_hub's download bars stay (a first download takes minutes)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    set_hook = getattr(transformers_logging, "set_tqdm_hook", None)  # transformers >= 5; its disable_progress_bar() would stop the hub's too
    previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True})) if set_hook else None
    try:
        yield
    finally:
        if diffusers_bars:
            diffusers_logging.enable_progress_bar()
        if set_hook:
            set_hook(previous)


def scheme_weights(value: str, adapter):
    """The weights of a built-in ``timestep_weights`` scheme over every training timestep of
    ``adapter``: ``uniform`` gives ``None``; ``sigma_sqrt`` and ``cosmap`` are SD3's training loss
    weightings (Esser et al. 2024) as diffusers' ``compute_loss_weighting_for_sd3`` computes them,
    for flow-matching adapters only.

    Returns:
        a :class:`~diffcls_plugin.weighting.TimestepWeights` normalised to mean 1, or ``None``.
    """
    from diffcls_plugin.weighting import TimestepWeights, check_scheme_family

    if value == "uniform":
        return None
    check_scheme_family(value, getattr(adapter, "family", "sd"))
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    steps = torch.arange(adapter.num_train_timesteps)
    sigmas = adapter.sigma(steps).double().clamp_min(1e-6)  # sigma_sqrt is 1 / sigma^2
    weights = compute_loss_weighting_for_sd3(value, sigmas).double()
    return TimestepWeights.normalised(
        steps.tolist(), weights.tolist(), adapter.num_train_timesteps, {"scheme": value, "source": "diffusers.training_utils.compute_loss_weighting_for_sd3"}
    )
