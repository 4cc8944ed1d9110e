"""A harness dataset whose download fails: one :class:`DiffclsError` naming the dataset and the
command that downloads it, instead of the harness's traceback or a "cannot be built" that blames
the dataset name, and no empty folder left behind."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from diffcls_plugin.errors import DiffclsError

# the exception classes (or their bases) of a failed download: urllib, socket, http.client, requests, httpx, huggingface_hub
NETWORK_ERRORS = frozenset(
    ("URLError", "ConnectionError", "ConnectError", "TimeoutError", "TimeoutException", "NetworkError", "gaierror", "HTTPException")
    + ("RequestException", "OfflineModeIsEnabled", "LocalEntryNotFoundError")
)


def network_error(err: BaseException) -> str | None:
    """The first line of the network error in ``err`` or the errors it was raised from (a failed
    download), or ``None`` when it has none."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(cls.__name__ in NETWORK_ERRORS for cls in type(err).__mro__):
            lines = str(err).strip().splitlines()
            return lines[0] if lines else type(err).__name__
        err = err.__cause__ or err.__context__
    return None


def guard_download(build_dataset):
    """The harness's ``build_dataset``, whose failed download is one :class:`DiffclsError` naming
    the dataset and the command that downloads it, and which removes the folders it created on the
    way to ``root`` when a failure leaves them empty (torchvision creates the root first)."""

    @functools.wraps(build_dataset)
    def build(dataset_name, root="root", transform=None, split="test", *args, **kwargs):
        created, path = [], Path(str(root))
        while "://" not in str(root) and not path.exists() and path.parent != path:
            created.append(path)  # deepest first
            path = path.parent
        try:
            return build_dataset(dataset_name, root, transform, split, *args, **kwargs)
        except Exception as err:
            if created:  # empty folders only: those inside the root (deepest first), the root, the parents it needed
                for folder in [*(Path(d) for d, _, _ in os.walk(created[0], topdown=False)), *created[1:]]:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            reason = None if isinstance(err, DiffclsError) else network_error(err)
            if reason is None:
                raise
            fetch = f"build_dataset({dataset_name!r}, root={str(root)!r}, split={split!r}, download=True)"
            raise DiffclsError(
                f"--dataset {dataset_name} is not in --dataset_root {str(root)!r} and downloading it failed ({reason}); download it once with "
                f'network access (python -c "from clip_benchmark.datasets.builder import build_dataset; {fetch}") or point --dataset_root at a copy'
            ) from None

    return build
