"""A run's identity: one record of everything that determines an image's outcome besides the image.

The same record gives the resume store its run key (:meth:`RunIdentity.store_description`) and a
result its ``diffcls`` block's description of the run (:meth:`RunIdentity.result_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch

from diffcls_plugin.keys import checkpoint_fingerprint, code_fingerprint

VERSIONED_PACKAGES = ("diffcls-plugin", "torch", "diffusers", "transformers", "clip-benchmark", "open-clip-torch", "numpy")
# the versions an image's outcome depends on (the store's key); a result records them all
OUTCOME_PACKAGES = ("diffcls-plugin", "torch", "diffusers", "transformers")


def package_versions() -> dict[str, str | None]:
    """The installed version of each package a result records (``None`` when not installed)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass(frozen=True)
class RunIdentity:
    """What a classifier's outcomes depend on, besides each image.

    Attributes:
        checkpoint: where the weights came from (a :class:`~diffcls_plugin.zoo.Checkpoint`, or ``None``).
        family, prediction_type, num_train_timesteps, dtype, device: the adapter's.
        image_size: the input resolution.
        sampler: the sampler name; ``options`` its options.
        config: the run's :class:`~diffcls_plugin.config.DiffclsConfig`.
        prompts: every class's prompts (``[]`` before the classes are prepared).
        seed: the run seed.
        timestep_weights: the :class:`~diffcls_plugin.weighting.TimestepWeights` applied, or ``None``.
    """

    checkpoint: Any
    family: str
    prediction_type: str
    num_train_timesteps: int
    dtype: str
    device: str
    image_size: int
    sampler: str
    options: Any
    config: Any
    prompts: list[list[str]]
    seed: int
    timestep_weights: Any = None

    @classmethod
    def of(cls, adapter, *, checkpoint, image_size, sampler, options, config, prompts, seed, timestep_weights) -> RunIdentity:
        return cls(
            checkpoint=checkpoint,
            family=getattr(adapter, "family", "sd"),
            prediction_type=adapter.prediction_type,
            num_train_timesteps=adapter.num_train_timesteps,
            dtype=str(adapter.dtype).replace("torch.", ""),
            device=str(adapter.device),
            image_size=image_size,
            sampler=sampler,
            options=options,
            config=config,
            prompts=[list(p) for p in prompts],
            seed=seed,
            timestep_weights=timestep_weights,
        )

    def store_description(self) -> dict[str, Any]:
        """The resume store's description of the run (its SHA-256 is the run key)."""
        versions = package_versions()
        return {
            "format": 1,
            "code": code_fingerprint(),
            "versions": {k: versions[k] for k in OUTCOME_PACKAGES},
            "checkpoint": checkpoint_fingerprint(self.checkpoint),
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "dtype": self.dtype,
            "device_type": torch.device(self.device).type,
            "image_size": self.image_size,
            "sampler": self.sampler,
            "options": self.options.to_dict(),
            "loss": self.config.loss,
            "prompt_policy": self.config.prompts,
            "prompts": self.prompts,
            "seed": self.seed,
            "prefilter": None if self.config.prefilter is None else self.config.prefilter.to_dict(),
            "timestep_weights": None if self.timestep_weights is None else self.timestep_weights.digest,
        }

    def result_fields(self, unet_batch_size_used: int) -> dict[str, Any]:
        """The run's description in a result's ``diffcls`` block (the cost and counts come from elsewhere)."""
        return {
            "sampler": self.sampler,
            "config": {
                "sampler": self.options.to_dict(),
                "loss": self.config.loss,
                "prompts": self.config.prompts,
                "dtype": self.dtype,
                "device": self.device,
                "image_size": self.image_size,
                "unet_batch_size": self.config.unet_batch_size,
                "unet_batch_size_used": unet_batch_size_used,
                "allow_pickle": self.config.allow_pickle,
                "timestep_weights": None if self.timestep_weights is None else self.timestep_weights.describe(),
                "full": self.config.to_dict(),
            },
            "seed": self.seed,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "family": self.family,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "versions": package_versions(),
            "n_classes": len(self.prompts),
            "prompts_per_class": [len(p) for p in self.prompts],
        }
