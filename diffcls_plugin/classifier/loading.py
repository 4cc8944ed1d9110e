"""Build a classifier from a harness model name and a checkpoint: the package's one entry point."""

from __future__ import annotations

import torch

from diffcls_plugin.classifier.model import DiffusionClassifier
from diffcls_plugin.config import DiffclsConfig, config_from_env
from diffcls_plugin.samplers import SAMPLERS_BY_MODEL
from diffcls_plugin.store import OutcomeStore, open_run_store
from diffcls_plugin.weighting import weights_for
from diffcls_plugin.zoo import DEFAULT_CHECKPOINT, Checkpoint, resolve_checkpoint, scheduler_length


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
            ``diffusion-hier`` ... (see :data:`diffcls_plugin.samplers.SAMPLERS_BY_MODEL`).
        pretrained: a zoo name, hub id or diffusers folder (default ``sd2-base``), or a resolved
            :class:`~diffcls_plugin.zoo.Checkpoint`.
        device: where to compute.
        config: the options; ``None`` reads ``$DIFFCLS_CONFIG`` (or the defaults).
        seed: the run seed.
        cache_dir: the hub cache folder.
        progress: show a progress bar.
        store: the resume store (see :class:`DiffusionClassifier`); ``None`` follows the config
            (and opens the store before the weights load; on a torchrun rank other than 0, none).

    Everything the user chose is validated before any weights load (a timestep weights file is
    read and checked for its schedule length: a local folder's from its scheduler config, a hub
    checkpoint's once its adapter has loaded).
    """
    from diffcls_plugin.adapters import load_adapter

    sampler = SAMPLERS_BY_MODEL.get(model_name).name
    config = config if config is not None else config_from_env()
    config.validate()
    checkpoint = pretrained if isinstance(pretrained, Checkpoint) else resolve_checkpoint(pretrained or DEFAULT_CHECKPOINT)
    # a missing or malformed weights file, or one for a local folder's other schedule length, fails before the weights load
    weights_for(config.timestep_weights, scheduler_length(checkpoint))
    # so does a cache folder that cannot hold the resume store (a damaged store file is moved aside)
    store = open_run_store(store, config.resume)
    adapter = load_adapter(
        checkpoint,
        device=device,
        dtype=config.dtype,
        allow_pickle=config.allow_pickle,
        cache_dir=cache_dir,
        compile=config.compile,
    )
    return DiffusionClassifier(adapter, sampler, config, seed=seed, checkpoint=checkpoint, model_name=model_name, progress=progress, store=store or False)
