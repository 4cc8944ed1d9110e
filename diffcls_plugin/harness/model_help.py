"""``clip_benchmark eval --help`` names the diffusion models: the ``--model`` help is extended.

The harness builds its parser and parses ``sys.argv`` in one function, ``get_parser_args``, so
``--help`` prints (and exits) before any later patch could edit the parser. The wrapper hands
that function, for the duration of the call, an ``argparse`` whose ``ArgumentParser`` extends the
help of any ``--model`` argument as it is added (subparsers are built with the same class).
Nothing else about parsing changes.
"""

from __future__ import annotations

import argparse
import functools
from types import ModuleType

from diffcls_plugin.samplers import SAMPLERS_BY_MODEL

MODEL_OPTION = "--model"


def model_help(original: str | None) -> str:
    """The harness's ``--model`` help followed by every registered diffusion model name."""
    names = ", ".join(SAMPLERS_BY_MODEL.names())
    head = (original or "Model architecture").rstrip(". ")
    return f"{head}, or a diffusion classifier of diffcls_plugin (no --model_type needed; --pretrained picks its checkpoint): {names}"


class ParserWithDiffusionModels(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--model`` arguments list the diffusion models in their help."""

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if MODEL_OPTION in args and action.help is not argparse.SUPPRESS:
            action.help = model_help(action.help)
        return action


class _Argparse:
    """``argparse`` with :class:`ParserWithDiffusionModels` as its ``ArgumentParser``."""

    ArgumentParser = ParserWithDiffusionModels

    def __getattr__(self, name: str):
        return getattr(argparse, name)


def with_diffusion_models_help(module: ModuleType) -> None:
    """Wrap ``module.get_parser_args`` (``clip_benchmark.cli``'s) so its ``--model`` help names the diffusion models."""
    if not hasattr(module, "argparse") or not callable(getattr(module, "get_parser_args", None)):
        return  # a harness built differently: its help stays as it is
    original = module.get_parser_args

    @functools.wraps(original)
    def get_parser_args(*args, **kwargs):
        real = module.argparse
        module.argparse = _Argparse()  # the name get_parser_args looks up, only while it runs
        try:
            return original(*args, **kwargs)
        finally:
            module.argparse = real

    module.get_parser_args = get_parser_args
