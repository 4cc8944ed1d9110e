"""What identifies a stored outcome: the image key, the run key and the fingerprints behind it.

- the *image key*: a SHA-256 of an image's pixels as the model sees them (quantised to 8 bits, with
  their shape);
- the *run key*: a SHA-256 of everything that determines an outcome besides the image (the
  checkpoint's fingerprint, the sampler and its options, the loss, the exact prompts, the seed,
  dtype, device type, image size, timestep count, the versions of torch, diffusers and
  transformers, and a hash of this package's code);
- the *error-rows key* of ``diffcls tune`` and ``fit-weights``, which hashes only the code that
  computes an error (:data:`ERROR_CODE`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any


def image_key(pixels) -> str:
    """SHA-256 of one image's pixels (``(3, H, W)`` in [-1, 1]) quantised to 8 bits, with its shape."""
    from diffcls_plugin.scoring import quantise

    quantised = quantise(pixels)
    digest = hashlib.sha256(repr(tuple(quantised.shape)).encode())
    digest.update(quantised.numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of this package's Python sources: any change to the code (a sampler's logic, the
    scorer) invalidates stored outcomes, even when the version number stays the same."""
    root = Path(__file__).resolve().parent
    return _sources_digest(root, sorted(root.rglob("*.py")))


def _sources_digest(root: Path, paths) -> str:
    """SHA-256 of source files: each one's path relative to ``root`` and its bytes."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# the code an error row depends on: the scorer (noise, loss, timesteps), the adapters (encoding,
# noising, the UNet call) and the prompts; samplers, workflows and the CLI do not change an error
ERROR_CODE = ("scoring.py", "adapters", "classifier/prompts.py")


@lru_cache(maxsize=1)
def error_code_fingerprint() -> str:
    """SHA-256 of the sources an error row depends on (:data:`ERROR_CODE`): editing a sampler or
    a workflow, or a new version number, keeps stored error tables; editing the scorer drops them."""
    root = Path(__file__).resolve().parent
    paths = []
    for part in ERROR_CODE:
        paths += sorted((root / part).rglob("*.py")) if (root / part).is_dir() else [root / part]
    return _sources_digest(root, paths)


def error_rows_key(description: Mapping[str, Any], timesteps) -> str:
    """The store key of a run's error rows (every class at each of ``timesteps``, one noise): the
    run's description without its sampler and with :func:`error_code_fingerprint` for the code,
    so a tune resumes across edits that cannot change an error."""
    versions = {k: v for k, v in dict(description.get("versions", {})).items() if k != "diffcls-plugin"}
    rest = {k: v for k, v in description.items() if k not in ("code", "versions", "sampler", "options", "timestep_weights", "prefilter")}
    return run_key({**rest, "kind": "error-rows", "code": error_code_fingerprint(), "versions": versions, "timesteps": [int(t) for t in timesteps]})


def run_key(description: Mapping[str, Any]) -> str:
    """SHA-256 of a run's description (canonical JSON: sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model")


def folder_fingerprint(folder: str | os.PathLike) -> list[list[Any]]:
    """What identifies a checkpoint folder's contents without reading gigabytes: every weight,
    config and tokenizer file's relative path, size and modification time (in nanoseconds).
    Hub snapshots link to blobs named by their content hash, so for them the blob's name is used
    instead of the time. Rewriting a file changes the fingerprint (the store then recomputes)."""
    root = Path(folder)
    out = []
    for path in sorted(root.rglob("*")):
        if not path.name.endswith(_WEIGHT_SUFFIXES) or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        stat = path.stat()  # follows links
        target = path.resolve()
        marker = target.name if path.is_symlink() and target.parent.name == "blobs" else stat.st_mtime_ns
        out.append([path.relative_to(root).as_posix(), stat.st_size, marker])
    return out


def checkpoint_fingerprint(checkpoint) -> dict[str, Any]:
    """A :class:`~diffcls_plugin.zoo.Checkpoint`'s identity: its folder's file fingerprint, or for a
    hub id the commit of the cached snapshot (with the snapshot's file fingerprint)."""
    if checkpoint is None:
        return {"checkpoint": None}
    if checkpoint.is_local:
        return {"folder_files": folder_fingerprint(checkpoint.source)}
    out: dict[str, Any] = {"id": checkpoint.source, "revision": checkpoint.revision}
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(checkpoint.source, revision=checkpoint.revision, local_files_only=True))
        out.update(commit=folder.name, folder_files=folder_fingerprint(folder))
    except Exception:  # noqa: BLE001 - not in the hub cache (e.g. a custom cache_dir): id and revision only
        pass
    return out
