"""The samplers: pure functions over a scorer, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: its name, option dataclass and generator function."""

    name: str
    options_cls: type[SamplerOptions]
    fn: Callable[..., Sampler]


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")
for _spec in (
    SamplerSpec("baseline", BaselineOptions, baseline),
    SamplerSpec("adaptive", AdaptiveOptions, adaptive),
    SamplerSpec("hierarchical", HierarchicalOptions, hierarchical),
):
    SAMPLERS.add(_spec.name, _spec)

__all__ = [
    "AdaptiveOptions",
    "BaselineOptions",
    "BatchScorer",
    "DIRECTIONS",
    "Evaluations",
    "HierarchicalOptions",
    "Request",
    "SAMPLERS",
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
    "run_samplers",
    "schedule",
    "stage_timesteps",
]
