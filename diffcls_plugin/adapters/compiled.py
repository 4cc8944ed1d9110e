"""The compiled denoiser (``compile: true`` or ``compile: graphs``) and the GPU's best dtype.

``torch.compile`` with static shapes builds one graph per input shape. The scorer pads every
forward pass to a few fixed sizes (:func:`diffcls_plugin.calls.buckets`), so a run compiles at
most one graph per bucket and never recompiles as a pruning sampler's rounds shrink;
``graphs`` adds CUDA graphs (``mode="reduce-overhead"``), which need those fixed shapes.
"""

from __future__ import annotations

import os

import torch

COMPILE_MODES = (False, True, "graphs")


def compile_denoiser(module: torch.nn.Module, mode: bool | str, n_shapes: int = 16, backend=None) -> torch.nn.Module:
    """``module`` compiled for ``mode`` (``False``: unchanged; ``True``: inductor; ``"graphs"``:
    inductor with CUDA graphs on a GPU), allowing ``n_shapes`` graphs before dynamo falls back.

    ``backend`` (default: ``$DIFFCLS_COMPILE_BACKEND``, else ``inductor``) is torch.compile's;
    another one (``aot_eager``) checks the tracing without inductor's minutes of code generation.
    """
    if not mode:
        return module
    backend = backend or os.environ.get("DIFFCLS_COMPILE_BACKEND") or "inductor"
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; set whichever exists
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), n_shapes))
    if backend != "inductor":
        return torch.compile(module, dynamic=False, backend=backend)  # modes are inductor's
    return torch.compile(module, dynamic=False, mode="reduce-overhead" if mode == "graphs" else None)


def best_dtype(device: torch.device | str) -> torch.dtype:
    """``dtype: auto``: bf16 on a GPU that computes it natively (Ampere and newer: its range
    cannot overflow as fp16 can, at fp16's speed), fp16 on older GPUs (Li et al.), fp32 on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16
