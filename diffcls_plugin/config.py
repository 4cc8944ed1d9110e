"""Run options: one frozen dataclass, loaded from YAML/JSON or built in code, validated whole.

A config file holds the scoring and adapter options at the top level and one section per
sampler; every sampler section is validated, whichever sampler runs::

    loss: l1                 # l2 (default) | l1 | huber
    prompts: first           # first | ensemble | all
    dtype: auto              # auto | fp32 | fp16 | bf16
    image_size: null         # null = the checkpoint's native resolution
    unet_batch_size: 32
    allow_pickle: false
    compile: false
    baseline: {n_timesteps: 32, n_trials: 1}
    adaptive: {to_keep: [5, 1], n_samples: [50, 500], n_trials: 1}
    hierarchical: {n_timesteps: 32, n_noises: 1, beam_factor: 3, patience: null, direction: center-out}

With the unmodified ``clip_benchmark`` CLI, name the file in the ``DIFFCLS_CONFIG`` environment
variable; ``diffcls eval --config FILE --set KEY=VALUE`` takes the same file and keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from diffcls_plugin.errors import DiffclsError, closest
from diffcls_plugin.samplers import SAMPLERS, AdaptiveOptions, BaselineOptions, HierarchicalOptions, SamplerOptions

CONFIG_ENV = "DIFFCLS_CONFIG"
LOSSES = ("l2", "l1", "huber")
PROMPT_POLICIES = ("first", "ensemble", "all")
DTYPES = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DiffclsConfig:
    """Every option of a diffusion-classifier run except the sampler name and the checkpoint.

    Attributes:
        loss: error between the true and the predicted noise (or velocity): ``l2`` (mean squared,
            default), ``l1`` or ``huber``; mean over (C, H, W); lower is better.
        prompts: how several prompts per class are used: ``first`` (the class's first prompt,
            Li et al.), ``ensemble`` (mean of the prompts' text-encoder embeddings, one UNet
            evaluation per class) or ``all`` (score every prompt and average the errors; costs
            one UNet evaluation per prompt).
        dtype: compute precision; ``auto`` is fp16 on CUDA and fp32 on CPU.
        image_size: input resolution in pixels; ``None`` is the checkpoint's native resolution.
        unet_batch_size: UNet inputs per forward pass.
        allow_pickle: allow loading ``.bin``/``.ckpt`` pickle weights when no safetensors exist.
        compile: ``torch.compile`` the UNet (opt-in; pays off on long GPU runs).
        baseline, adaptive, hierarchical: the samplers' options.
    """

    loss: str = "l2"
    prompts: str = "first"
    dtype: str = "auto"
    image_size: int | None = None
    unet_batch_size: int = 32
    allow_pickle: bool = False
    compile: bool = False
    baseline: BaselineOptions = field(default_factory=BaselineOptions)
    adaptive: AdaptiveOptions = field(default_factory=AdaptiveOptions)
    hierarchical: HierarchicalOptions = field(default_factory=HierarchicalOptions)

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`DiffclsError` naming the first bad option."""
        for key, choices in (("loss", LOSSES), ("prompts", PROMPT_POLICIES), ("dtype", DTYPES)):
            value = getattr(self, key)
            if value not in choices:
                hint = closest(str(value), choices)
                did = f" Did you mean {hint!r}?" if hint else ""
                raise DiffclsError(f"{key} must be one of {', '.join(choices)}, got {value!r}.{did}")
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8
        ):
            raise DiffclsError(f"image_size must be null or an integer >= 8, got {self.image_size!r}")
        if isinstance(self.unet_batch_size, bool) or not isinstance(self.unet_batch_size, int) or self.unet_batch_size < 1:
            raise DiffclsError(f"unet_batch_size must be a positive integer, got {self.unet_batch_size!r}")
        for key in ("allow_pickle", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise DiffclsError(f"{key} must be true or false, got {getattr(self, key)!r}")
        for name in SAMPLERS:
            self.sampler_options(name).validate(num_train_timesteps)

    def sampler_options(self, sampler: str) -> SamplerOptions:
        SAMPLERS.get(sampler)
        return getattr(self, sampler)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, SamplerOptions) else value
        return out


def _coerce(value: Any, annotation: Any) -> Any:
    """Lists from YAML/JSON become tuples where the dataclass field is a tuple."""
    if isinstance(value, list) and "tuple" in str(annotation):
        return tuple(value)
    return value


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise DiffclsError(f"{where}{prefix.rstrip('.') or 'the config'} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            hint = closest(str(key), known)
            did = f" Did you mean {prefix + hint!r}?" if hint else ""
            section = f" of {prefix.rstrip('.')}" if prefix else ""
            raise DiffclsError(f"{where}unknown key {prefix + str(key)!r}.{did} Valid keys{section}: {', '.join(known)}.")
        hint_type = hints[key]
        if isinstance(hint_type, type) and dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value or {}, source, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint_type)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], source: str = "") -> DiffclsConfig:
    """Build and validate a config from a mapping; ``source`` names the file in errors."""
    config = _build(DiffclsConfig, data, source, "")
    try:
        config.validate()
    except DiffclsError as err:
        raise DiffclsError(f"{source}: {err}" if source else str(err)) from None
    return config


def read_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON file into a mapping, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise DiffclsError(f"config file {str(path)!r} does not exist; check the path")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error is reported the same way
        raise DiffclsError(f"config file {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    return {} if data is None else data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DiffclsConfig:
    """Load a config file (or the defaults) and apply ``KEY=VALUE`` overrides.

    Args:
        path: YAML or JSON file; ``None`` for the defaults.
        overrides: ``"hierarchical.beam_factor=4"``-style strings; values are parsed as YAML.
    """
    data = read_mapping(path) if path is not None else {}
    source = str(path) if path is not None else ""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DiffclsError(f"--set {item!r} must look like KEY=VALUE, e.g. hierarchical.beam_factor=4")
        import yaml

        value = yaml.safe_load(raw)
        target = data
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise DiffclsError(f"--set {item!r}: {parent!r} is not a section")
        target[leaf] = value
        source = source or "--set"
    return config_from_dict(data, source)


def config_from_env() -> DiffclsConfig:
    """The config named by ``$DIFFCLS_CONFIG``, or the defaults when it is unset."""
    path = os.environ.get(CONFIG_ENV)
    return load_config(path) if path else DiffclsConfig()
