"""Image sharding over ``torch.distributed``: one long run spread over several GPUs or nodes.

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank runs the same harness command and loads the
same batches; rank 0 looks the batch up in the resume store and broadcasts what is stored, the
classifier splits the other images over the ranks (the ``i``-th of them to rank
``i % world_size``), each rank scores its own, and every rank's outcomes are gathered, so that
every rank hands the harness the same logits and the metrics equal a one-process run's. Rank 0
alone opens the store (and commits every rank's outcomes) and writes the result file. The process group uses NCCL when the run is on CUDA and gloo on the CPU.

    torchrun --nproc_per_node 8 $(which clip_benchmark) eval --model diffusion-hier --dataset cifar10 ...
"""

from __future__ import annotations

import os
from typing import Any

from diffcls_plugin.errors import DiffclsError


def env_world_size() -> int:
    """``$WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DiffclsError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(use_cuda: bool) -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE > 1``), once per process.

    Args:
        use_cuda: whether this run computes on CUDA (NCCL, one GPU per local rank) or not (gloo).

    Returns:
        (rank, world size); (0, 1) when not launched by torchrun.
    """
    if env_world_size() <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise DiffclsError("WORLD_SIZE > 1 but this torch has no torch.distributed; run one process")
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise DiffclsError(
                f"WORLD_SIZE={env_world_size()} but {', '.join(missing)} unset; launch with torchrun (or srun with the torchrun rendezvous, see the README)"
            )
        if use_cuda:
            if local_rank() >= torch.cuda.device_count():
                raise DiffclsError(
                    f"LOCAL_RANK {local_rank()} but this node has {torch.cuda.device_count()} GPUs; use at most one process per GPU (--nproc_per_node)"
                )
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world()


def my_share(n_images: int, rank: int, world_size: int) -> list[int]:
    """The positions of a batch this rank scores: every ``world_size``-th from ``rank``."""
    return list(range(rank, n_images, world_size))


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
