"""The samplers: pure functions over a scorer, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.registry import Registry
from diffcls_plugin.samplers.adaptive import AdaptiveOptions, adaptive, stage_timesteps
from diffcls_plugin.samplers.base import (
    BatchScorer,
    Evaluations,
    Request,
    Sampler,
    SamplerResult,
    Scorer,
    classify,
    li_timesteps,
    run_samplers,
)
from diffcls_plugin.samplers.baseline import BaselineOptions, baseline
from diffcls_plugin.samplers.hierarchical import DIRECTIONS, HierarchicalOptions, hierarchical, schedule
from diffcls_plugin.samplers.options import SamplerOptions
from diffcls_plugin.samplers.race import RaceOptions, race
from diffcls_plugin.samplers.ttest import TTestOptions, ttest

MODEL_PREFIX = "diffusion-"  # the harness routes model names with this prefix to the plugin


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: everything the plugin needs to configure, run and report it.

    Attributes:
        name: the sampler name; also its section in config files (``options_cls.section``).
        options_cls: its frozen :class:`SamplerOptions` dataclass; every field has a default.
        fn: the generator function ``fn(n_classes, options, num_train_timesteps) -> Sampler``.
        model_name: the harness model name (``--model``), starting with ``diffusion-``.
        summary: one line for help texts.
    """

    name: str
    options_cls: type[SamplerOptions]
    fn: Callable[..., Sampler]
    model_name: str
    summary: str


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")
SAMPLERS_BY_MODEL: Registry[SamplerSpec] = Registry("diffusion model")


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    """Register a sampler under its name and its model name (registration order is table order).

    Args:
        spec: the sampler; ``spec.name`` must equal ``spec.options_cls.section``.

    Returns:
        ``spec``.

    Raises:
        DiffclsError: a name that does not match its section or a model name without the prefix.
        KeyError: a name or model name that is already registered.
    """
    if spec.name != spec.options_cls.section:
        raise DiffclsError(
            f"sampler {spec.name!r} has options {spec.options_cls.__name__} with section "
            f"{spec.options_cls.section!r}; set {spec.options_cls.__name__}.section = {spec.name!r}"
        )
    if not spec.model_name.startswith(MODEL_PREFIX):
        raise DiffclsError(
            f"sampler {spec.name!r} has model name {spec.model_name!r}; the harness routes only names "
            f"starting with {MODEL_PREFIX!r} to the plugin, e.g. {MODEL_PREFIX + spec.name!r}"
        )
    if spec.model_name in SAMPLERS_BY_MODEL:
        raise KeyError(f"diffusion model {spec.model_name!r} is registered twice")
    SAMPLERS.add(spec.name, spec)
    SAMPLERS_BY_MODEL.add(spec.model_name, spec)
    return spec


def unregister_sampler(name: str) -> SamplerSpec:
    """Remove a registered sampler by name (for tests that register a temporary one).

    Args:
        name: the sampler name.

    Returns:
        the removed spec.
    """
    spec = SAMPLERS.remove(name)
    SAMPLERS_BY_MODEL.remove(spec.model_name)
    return spec


# The one registration list: a new sampler is its own module plus one entry here.
for _spec in (
    SamplerSpec("baseline", BaselineOptions, baseline, model_name="diffusion-baseline", summary="Li et al.: every class at the same evenly spaced timesteps"),
    SamplerSpec("adaptive", AdaptiveOptions, adaptive, model_name="diffusion-adaptive", summary="Li et al.: multi-stage elimination, fewer classes per stage"),
    SamplerSpec(
        "hierarchical",
        HierarchicalOptions,
        hierarchical,
        model_name="diffusion-hier",
        summary="Algorithm 1: a beam of classes that shrinks as timesteps are visited",
    ),
    SamplerSpec("ttest", TTestOptions, ttest, model_name="diffusion-ttest", summary="Clark & Jaini: drop classes a paired t-test puts behind the leader"),
    SamplerSpec(
        "race",
        RaceOptions,
        race,
        model_name="diffusion-race",
        summary="a race: drop classes confidently behind the leader on the full grid; spends by difficulty",
    ),
):
    register_sampler(_spec)

__all__ = [
    "AdaptiveOptions",
    "BaselineOptions",
    "BatchScorer",
    "DIRECTIONS",
    "Evaluations",
    "HierarchicalOptions",
    "MODEL_PREFIX",
    "RaceOptions",
    "TTestOptions",
    "Request",
    "SAMPLERS",
    "SAMPLERS_BY_MODEL",
    "Sampler",
    "SamplerOptions",
    "SamplerResult",
    "SamplerSpec",
    "Scorer",
    "adaptive",
    "baseline",
    "classify",
    "hierarchical",
    "li_timesteps",
    "register_sampler",
    "race",
    "run_samplers",
    "ttest",
    "schedule",
    "stage_timesteps",
    "unregister_sampler",
]
