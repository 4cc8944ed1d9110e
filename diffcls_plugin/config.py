"""Run options: one frozen dataclass, loaded from YAML/JSON or built in code, validated whole.

A config file holds the scoring and adapter options at the top level and one section per
registered sampler (see :data:`diffcls_plugin.samplers.SAMPLERS`); every sampler section is
validated, whichever sampler runs::

    loss: l1                 # l2 (default) | l1 | huber
    prompts: first           # first | ensemble | all
    dtype: auto              # auto | fp32 | fp16 | bf16
    image_size: null         # null = the checkpoint's native resolution
    unet_batch_size: 32
    allow_pickle: false
    compile: false           # true: torch.compile the denoiser (fixed pass sizes) | graphs: also CUDA graphs
    resume: true             # reuse finished images from $DIFFCLS_CACHE/outcomes.sqlite
    on_corrupt: skip         # a corrupt image in a webdataset shard: skip (named, counted) | stop
    prefilter: null          # or {model: RN50, pretrained: openai, top_k: 20}: CLIP keeps each image's top_k classes
    timestep_weights: null   # or a file from `diffcls fit-weights` (each error at t times w(t)); SD3: sigma_sqrt | cosmap
    tuned: null              # written by `diffcls tune`: how this file was chosen (a record, not an option)
    baseline: {n_timesteps: 32, n_trials: 1}
    adaptive: {to_keep: [5, 1], n_samples: [50, 500], n_trials: 1}
    hierarchical: {n_timesteps: 32, n_noises: 1, beam_factor: 1.1, min_beam: 3, patience: null, direction: center-out}
    ttest: {p: 0.05, min_samples: 8, max_samples: 32, timesteps: grid}
    race: {alpha: 0.05, min_slots: 4, variance: pooled, correction: none}

A section may start from a named preset of its sampler (``PRESETS`` of its options class); its
other keys override the preset's values: ``hierarchical: {preset: paper, beam_factor: 3}``.

With the unmodified ``clip_benchmark`` CLI, name the file in the ``DIFFCLS_CONFIG`` environment
variable; ``diffcls eval --config FILE --set KEY=VALUE`` takes the same file and keys.
"""

from __future__ import annotations

import functools
import json
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from diffcls_plugin.errors import DiffclsError, did_you_mean, short
from diffcls_plugin.jsonio import read_mapping
from diffcls_plugin.prefilter import PrefilterOptions
from diffcls_plugin.samplers import SAMPLERS, SAMPLERS_BY_MODEL, SamplerOptions

CONFIG_ENV = "DIFFCLS_CONFIG"
LOSSES = ("l2", "l1", "huber")
PROMPT_POLICIES = ("first", "ensemble", "all")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ON_CORRUPT = ("skip", "stop")


class SamplerSections(Mapping[str, SamplerOptions]):
    """An immutable, hashable mapping from sampler name to its options (registration order)."""

    def __init__(self, sections: Mapping[str, SamplerOptions]) -> None:
        self._sections = dict(sections)

    def __getitem__(self, name: str) -> SamplerOptions:
        return self._sections[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)

    def __len__(self) -> int:
        return len(self._sections)

    def __hash__(self) -> int:
        return hash(frozenset(self._sections.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._sections!r})"


def _sections(given: Mapping[str, SamplerOptions]) -> SamplerSections:
    """Every registered sampler's options: ``given`` ones, the defaults for the rest."""
    for name, options in given.items():
        spec = SAMPLERS.get(name)
        if not isinstance(options, spec.options_cls):
            raise DiffclsError(
                f"the {name} options must be a {spec.options_cls.__name__}, got {type(options).__name__}; build them with {spec.options_cls.__name__}(...)"
            )
    out = {name: given[name] if name in given else SAMPLERS.get(name).options_cls() for name in SAMPLERS}
    out.update(given)  # keep sections of samplers unregistered since
    return SamplerSections(out)


@dataclass(frozen=True)
class TunedRecord:
    """The ``tuned:`` block ``diffcls tune`` writes: how a config file was chosen, on which data.

    Not an option: no sampler reads it; the pre-run checks warn when a run evaluates the split it
    was tuned on, or runs another model than the one it was tuned for.

    Attributes:
        model: the harness ``--model`` name the file was tuned for (e.g. ``diffusion-race``).
        dataset, split: where it was tuned (``None`` when not recorded).
        record: the whole block as canonical JSON (:meth:`to_dict` gives it back).
    """

    model: str
    dataset: str | None = None
    split: str | None = None
    record: str = "{}"

    @classmethod
    def from_mapping(cls, data: Any, source: str = "") -> TunedRecord | None:
        """The record of a config file's ``tuned:`` block (``None`` for ``null``).

        Raises:
            DiffclsError: a block that is not a mapping, or whose ``model`` is not a diffusion model name.
        """
        if data is None:
            return None
        data = _mapping(data, source, "tuned")
        models = SAMPLERS_BY_MODEL.names()
        model = data.get("model")
        if model not in models:
            raise DiffclsError(f"{_where(source)}tuned.model must name the diffusion model the file was tuned for ({', '.join(models)}), got {short(model)}")
        dataset, split = data.get("dataset"), data.get("split")
        return cls(model, None if dataset is None else str(dataset), None if split is None else str(split), json.dumps(data, sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.record)


@dataclass(frozen=True)
class DiffclsConfig:
    """Every option of a diffusion-classifier run except the sampler name and the checkpoint.

    Build it in code with keywords, one per option and one per sampler section::

        DiffclsConfig(loss="l1", hierarchical=HierarchicalOptions(beam_factor=2))

    (``dataclasses.replace(config, hierarchical=...)`` works the same way.) A sampler's options
    read as ``config.<sampler name>`` or ``config.sampler_options(name)``.

    Attributes:
        loss: error between the true and the predicted noise (or velocity): ``l2`` (mean squared,
            default), ``l1`` or ``huber``; mean over (C, H, W); lower is better.
        prompts: how several prompts per class are used: ``first`` (the class's first prompt,
            Li et al.), ``ensemble`` (mean of the prompts' text-encoder embeddings, one UNet
            evaluation per class) or ``all`` (score every prompt and average the errors; costs
            one UNet evaluation per prompt).
        dtype: compute precision; ``auto`` is bf16 on Ampere and newer GPUs, fp16 on older ones
            and fp32 on a CPU.
        image_size: input resolution in pixels; ``None`` is the checkpoint's native resolution.
        unet_batch_size: UNet inputs per forward pass.
        allow_pickle: allow loading ``.bin``/``.ckpt`` pickle weights when no safetensors exist.
        compile: ``true``: ``torch.compile`` the denoiser, its forward passes padded to a few
            fixed sizes (:func:`~diffcls_plugin.calls.buckets`: the multiples of an eighth of
            ``unet_batch_size`` and the powers of two below it) so it compiles once per size
            and never again as a pruning sampler's rounds shrink; ``graphs``: the same with
            CUDA graphs (a GPU); ``false`` (default): eager. Opt-in: compiling takes a minute or
            more per size and pays off on long GPU runs; rankings and counts are the same.
        resume: commit each image's outcome to the store of :mod:`diffcls_plugin.store` as it
            finishes and reuse finished images when the same run is repeated (e.g. after an
            interruption); ``false`` neither reads nor writes it (so does ``DIFFCLS_RESUME=0``).
        on_corrupt: what a corrupt image in a local webdataset does: ``skip`` (named with its
            shard and key on stderr, counted in the result as ``n_images_skipped``) or ``stop``
            (the run stops with an error naming it).
        prefilter: ``None``, or the CLIP-prefiltered hybrid's options
            (:class:`~diffcls_plugin.prefilter.PrefilterOptions`): an open_clip model keeps each
            image's ``top_k`` classes and the sampler decides among them.
        timestep_weights: ``None`` (uniform, Li et al.), the path of a weights file written by
            ``diffcls fit-weights`` (:mod:`diffcls_plugin.weighting`, Jeong et al. 2025), or for
            flow-matching models one of SD3's loss weightings ``sigma_sqrt`` and ``cosmap``:
            every error at timestep ``t`` is multiplied by ``w(t)`` before any sampler sees it.
        tuned: ``None``, or the :class:`TunedRecord` of a file ``diffcls tune`` wrote (not an option).
        samplers: every registered sampler's options by sampler name (``baseline``,
            ``adaptive``, ``hierarchical`` ...); samplers not given get their defaults.
    """

    loss: str = "l2"
    prompts: str = "first"
    dtype: str = "auto"
    image_size: int | None = None
    unet_batch_size: int = 32
    allow_pickle: bool = False
    compile: bool | str = False
    resume: bool = True
    on_corrupt: str = "skip"
    prefilter: PrefilterOptions | None = None
    timestep_weights: str | None = None
    tuned: TunedRecord | None = None
    samplers: SamplerSections = field(default_factory=lambda: _sections({}))

    def __getattr__(self, name: str) -> SamplerOptions:
        """``config.hierarchical`` and the like: the options of a registered sampler."""
        if name.startswith("_") or name == "samplers" or name not in SAMPLERS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.sampler_options(name)

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`DiffclsError` naming the first bad option."""
        for key, choices in (("loss", LOSSES), ("prompts", PROMPT_POLICIES), ("dtype", DTYPES), ("on_corrupt", ON_CORRUPT)):
            value = getattr(self, key)
            if value not in choices:
                raise DiffclsError(
                    f"{key} must be one of {', '.join(choices)}, got {short(value)}.{did_you_mean(value, choices) if isinstance(value, str) else ''}"
                )
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8):
            raise DiffclsError(f"image_size must be null or an integer >= 8, got {short(self.image_size)}")

        if isinstance(self.unet_batch_size, bool) or not isinstance(self.unet_batch_size, int) or self.unet_batch_size < 1:
            raise DiffclsError(f"unet_batch_size must be a positive integer, got {short(self.unet_batch_size)}")
        if not (isinstance(self.compile, bool) or self.compile == "graphs"):
            raise DiffclsError(f"compile must be true, false or graphs, got {short(self.compile)}")
        for key in ("allow_pickle", "resume"):
            if not isinstance(getattr(self, key), bool):
                raise DiffclsError(f"{key} must be true or false, got {short(getattr(self, key))}")
        if self.prefilter is not None:
            if not isinstance(self.prefilter, PrefilterOptions):
                raise DiffclsError(f"prefilter must be PrefilterOptions or null, got {self.prefilter!r}")
            self.prefilter.validate()
        if self.tuned is not None and not isinstance(self.tuned, TunedRecord):
            raise DiffclsError(f"tuned must be a TunedRecord or null, got {self.tuned!r}")
        if self.timestep_weights is not None and not isinstance(self.timestep_weights, (str, os.PathLike)):
            raise DiffclsError(f"timestep_weights must be null, a scheme or the path of a weights file, got {short(self.timestep_weights)}")
        for name in SAMPLERS:
            options = self.sampler_options(name)
            options.check_preset()
            options.validate(num_train_timesteps)

    def sampler_options(self, sampler: str) -> SamplerOptions:
        """The options of a registered sampler (its defaults if it registered after this config).

        Args:
            sampler: the sampler name, e.g. ``hierarchical``.

        Raises:
            DiffclsError: an unknown sampler name, with a "did you mean" hint.
        """
        spec = SAMPLERS.get(sampler)
        return self.samplers[sampler] if sampler in self.samplers else spec.options_cls()

    def to_dict(self) -> dict[str, Any]:
        """The options as a config file holds them: top-level keys, then one section per sampler."""
        out: dict[str, Any] = {key: getattr(self, key) for key in _SCALAR_KEYS}
        if self.prefilter is not None:
            out["prefilter"] = self.prefilter.to_dict()
        if self.tuned is not None:
            out["tuned"] = self.tuned.to_dict()
        for name, options in self.samplers.items():
            out[name] = options.to_dict()
        return out


_SCALAR_KEYS = tuple(f.name for f in fields(DiffclsConfig) if f.name != "samplers")


def _taking_sections(init):
    """The dataclass's own ``__init__``, also taking one keyword per registered sampler
    (``hierarchical=HierarchicalOptions(...)``), which override ``samplers``; an unknown keyword
    raises :class:`DiffclsError` with a "did you mean" hint."""

    @functools.wraps(init)
    def __init__(self, *args, samplers: Mapping[str, SamplerOptions] | None = None, **kwargs: Any) -> None:
        sections = {name: kwargs.pop(name) for name in list(kwargs) if name in SAMPLERS}
        unknown = [name for name in kwargs if name not in _SCALAR_KEYS]
        if unknown:
            valid = [*_SCALAR_KEYS, *SAMPLERS.names()]
            raise DiffclsError(f"DiffclsConfig got the unknown option {unknown[0]!r}.{did_you_mean(unknown[0], valid)} Valid: {', '.join(valid)}.")
        init(self, *args, samplers=_sections({**(samplers or {}), **sections}), **kwargs)

    return __init__


DiffclsConfig.__init__ = _taking_sections(DiffclsConfig.__init__)


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def _unknown_key(key: Any, known: typing.Iterable[str], source: str, prefix: str) -> DiffclsError:
    known = list(known)
    did = did_you_mean(str(key), known, prefix)
    section = f" of {prefix.rstrip('.')}" if prefix else ""
    return DiffclsError(f"{_where(source)}unknown key {prefix + str(key)!r}.{did} Valid keys{section}: {', '.join(known)}.")


def _mapping(data: Any, source: str, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DiffclsError(f"{_where(source)}{what} must be a mapping of keys to values, got {short(data)}")
    return data


def _coerce(value: Any, annotation: Any) -> Any:
    """Lists from YAML/JSON become tuples where the dataclass field is a tuple."""
    if isinstance(value, list) and "tuple" in str(annotation):
        return tuple(value)
    return value


def build_sampler_options(cls: type[SamplerOptions], data: Any, source: str = "") -> SamplerOptions:
    """Build one sampler's options from its config section, starting from its ``preset`` if named.

    Args:
        cls: the sampler's options class (its ``section`` names the section in errors).
        data: the section: option keys, and optionally ``preset: NAME``; its other keys
            override the preset's values.
        source: the file (or other origin) named in errors.

    Returns:
        the options, with ``preset`` set to the preset's name (or ``None``).

    Raises:
        DiffclsError: naming the source and the key, for unknown keys or presets.
    """
    prefix = f"{cls.section}."
    data = _mapping(data if data is not None else {}, source, cls.section)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    for key in data:
        if key not in known:
            raise cls.removed_option_error(key, source) or _unknown_key(key, known, source, prefix)
    values: dict[str, Any] = {}
    preset = data.get("preset")
    if preset is not None:
        try:
            values = cls.preset_values(preset)
        except DiffclsError as err:
            raise DiffclsError(f"{_where(source)}{err}") from None
        bad = [key for key in values if key not in known or key == "preset"]
        if bad:
            raise DiffclsError(
                f"{cls.__name__}.PRESETS[{preset!r}] sets {bad[0]!r}, which is not an option of {cls.section}; "
                f"fix the preset (valid keys: {', '.join(k for k in known if k != 'preset')})"
            )
    values.update(data)
    return cls(**{key: _coerce(value, hints[key]) for key, value in values.items()})


def _build_config(data: Any, source: str) -> DiffclsConfig:
    data = _mapping(data, source, "the config")
    known = [*_SCALAR_KEYS, *SAMPLERS.names()]
    for key in data:
        if key not in known:
            raise _unknown_key(key, known, source, "")
    hints = typing.get_type_hints(DiffclsConfig)
    scalars = {key: _coerce(data[key], hints[key]) for key in _SCALAR_KEYS if key in data and key not in ("prefilter", "tuned")}
    scalars["prefilter"] = PrefilterOptions.from_mapping(data.get("prefilter"), source)
    scalars["tuned"] = TunedRecord.from_mapping(data.get("tuned"), source)
    sections = {name: build_sampler_options(SAMPLERS.get(name).options_cls, data[name], source) for name in SAMPLERS if name in data}
    return DiffclsConfig(**scalars, samplers=sections)


def config_from_dict(data: dict[str, Any], source: str = "") -> DiffclsConfig:
    """Build and validate a config from a mapping; ``source`` names the file in errors."""
    config = _build_config(data, source)
    try:
        config.validate()
    except DiffclsError as err:
        raise DiffclsError(f"{source}: {err}" if source else str(err)) from None
    return config


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
