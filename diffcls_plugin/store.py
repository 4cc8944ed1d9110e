"""Per-image outcomes in an embedded SQLite database, so an interrupted run resumes where it stopped.

Each image's outcome (its ranking, scores, evaluations, rounds, stop reason, UNet evaluations and
seconds as spent) is committed the moment its sampler finishes, keyed by

- the *run key*: a SHA-256 of everything that determines an outcome besides the image (the
  checkpoint's fingerprint, the sampler and its options, the loss, the exact prompts, the seed,
  dtype, device type, image size, timestep count, the versions of torch, diffusers and
  transformers, and a hash of this package's code; see :func:`run_key`), and
- the *image key*: a SHA-256 of the image's pixels as the model sees them (quantised to 8 bits,
  with their shape).

Rerunning the same command after SIGINT or SIGKILL therefore reuses every finished image and
computes only the missing ones, and its metrics equal those of an uninterrupted run. The database
is ``$DIFFCLS_CACHE/outcomes.sqlite`` (default ``~/.cache/diffcls_plugin``) in WAL mode, so several
processes (several runs, or the ranks of one ``torchrun``) can read and write it at once; every
write is one short transaction with a busy timeout. Set ``resume: false`` in the config, or
``DIFFCLS_RESUME=0`` in the environment, to neither read nor write it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import SamplerResult

RESUME_ENV = "DIFFCLS_RESUME"
CACHE_ENV = "DIFFCLS_CACHE"
FILENAME = "outcomes.sqlite"
SCHEMA_VERSION = 1
_OFF = {"0", "off", "false", "no"}


def cache_dir() -> Path:
    """``$DIFFCLS_CACHE``, else ``~/.cache/diffcls_plugin``."""
    base = os.environ.get(CACHE_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "diffcls_plugin"


def resume_enabled(config_resume: bool = True) -> bool:
    """The store is used unless the config says ``resume: false`` or ``$DIFFCLS_RESUME`` is 0/off."""
    return bool(config_resume) and os.environ.get(RESUME_ENV, "1").strip().lower() not in _OFF


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


@dataclass(frozen=True)
class Outcome:
    """One image's stored outcome: the sampler's result and what it cost when it was computed."""

    result: SamplerResult
    n_unet_evals: int
    seconds: float


class OutcomeStore:
    """The SQLite store of per-image outcomes (WAL mode; safe for concurrent processes).

    Args:
        path: the database file; its folder is created. Default ``$DIFFCLS_CACHE/outcomes.sqlite``.
        timeout: seconds a writer waits for another's lock before failing.
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 120.0) -> None:
        self.path = Path(path) if path is not None else cache_dir() / FILENAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: survives a killed process
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS runs (run TEXT PRIMARY KEY, description TEXT NOT NULL, created REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS outcomes (
                    run TEXT NOT NULL, image TEXT NOT NULL,
                    ranking TEXT NOT NULL, scores TEXT NOT NULL,
                    n_evals INTEGER NOT NULL, n_rounds INTEGER NOT NULL, stop_reason TEXT NOT NULL,
                    n_unet_evals INTEGER NOT NULL, seconds REAL NOT NULL, written REAL NOT NULL,
                    PRIMARY KEY (run, image)
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS error_rows (
                    run TEXT NOT NULL, image TEXT NOT NULL,
                    n_classes INTEGER NOT NULL, n_timesteps INTEGER NOT NULL, errors BLOB NOT NULL, written REAL NOT NULL,
                    PRIMARY KEY (run, image)
                ) WITHOUT ROWID;
                """
            )
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            version = int(self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        except (sqlite3.Error, OSError) as err:
            raise DiffclsError(
                f"cannot open the resume store {str(self.path)!r}: {err}; point $DIFFCLS_CACHE at a writable "
                "local folder, or switch the store off with DIFFCLS_RESUME=0 (or 'resume: false')"
            ) from None
        if version != SCHEMA_VERSION:
            raise DiffclsError(
                f"the resume store {str(self.path)!r} has schema version {version}, this diffcls-plugin writes "
                f"{SCHEMA_VERSION}; move it away or point $DIFFCLS_CACHE elsewhere"
            )
        self.journal_mode = mode
        self.failed: str | None = None  # the first error of a read or write mid-run; the store is then off

    def _fail(self, err: Exception) -> None:
        """A read or write failed mid-run (a corrupt page, a full disk): say so once and go on without the store."""
        if self.failed is None:
            self.failed = f"{type(err).__name__}: {err}"
            print(
                f"diffcls: WARNING: the resume store {str(self.path)!r} failed ({self.failed}); the run goes on without it "
                "(images finished from now on are not kept for a resume). Free disk space, or move the file away to start a fresh store",
                file=sys.stderr,
            )

    def close(self) -> None:
        self._db.close()

    def register_run(self, key: str, description: Mapping[str, Any]) -> None:
        """Record what a run key stands for (for people inspecting the store)."""
        self._db.execute(
            "INSERT OR IGNORE INTO runs VALUES (?, ?, ?)",
            (key, json.dumps(description, sort_keys=True), time.time()),
        )

    def get_many(self, run: str, images: Iterable[str]) -> dict[str, Outcome]:
        """The stored outcomes of ``images`` under ``run`` (missing images are absent; none once the store failed)."""
        if self.failed is not None:
            return {}
        try:
            return self._get_many(run, images)
        except sqlite3.Error as err:
            self._fail(err)
            return {}

    def _get_many(self, run: str, images: Iterable[str]) -> dict[str, Outcome]:
        images = list(dict.fromkeys(images))
        out: dict[str, Outcome] = {}
        for start in range(0, len(images), 500):  # SQLite's bound-parameter limit
            chunk = images[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT image, ranking, scores, n_evals, n_rounds, stop_reason, n_unet_evals, seconds FROM outcomes WHERE run = ? AND image IN ({marks})",
                (run, *chunk),
            ).fetchall()
            for image, ranking, scores, n_evals, n_rounds, stop_reason, n_unet_evals, seconds in rows:
                result = SamplerResult(
                    tuple(json.loads(ranking)),
                    tuple(math.nan if s is None else float(s) for s in json.loads(scores)),
                    int(n_evals),
                    int(n_rounds),
                    stop_reason,
                )
                out[image] = Outcome(result, int(n_unet_evals), float(seconds))
        return out

    def put(self, run: str, image: str, outcome: Outcome) -> None:
        """Commit one image's outcome (one transaction; the first writer of a key wins; nothing once the store failed)."""
        if self.failed is not None:
            return
        try:
            self._put(run, image, outcome)
        except sqlite3.Error as err:
            self._fail(err)

    def _put(self, run: str, image: str, outcome: Outcome) -> None:
        r = outcome.result
        scores = [None if math.isnan(s) else s for s in r.scores]
        self._db.execute(
            "INSERT OR IGNORE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run,
                image,
                json.dumps(list(r.ranking)),
                json.dumps(scores),
                r.n_evals,
                r.n_rounds,
                r.stop_reason,
                outcome.n_unet_evals,
                outcome.seconds,
                time.time(),
            ),
        )

    def get_errors(self, run: str, images: Iterable[str]) -> dict[str, Any]:
        """The stored error rows of ``images`` under ``run``: ``{image: (n_classes, n_timesteps) float64 tensor}``
        (``diffcls tune`` and ``diffcls fit-weights``: every class at every timestep of the grid; missing images are absent)."""
        if self.failed is not None:
            return {}
        try:
            return self._get_errors(run, images)
        except sqlite3.Error as err:
            self._fail(err)
            return {}

    def _get_errors(self, run: str, images: Iterable[str]) -> dict[str, Any]:
        import torch

        images = list(dict.fromkeys(images))
        out: dict[str, Any] = {}
        for start in range(0, len(images), 500):
            chunk = images[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT image, n_classes, n_timesteps, errors FROM error_rows WHERE run = ? AND image IN ({marks})",
                (run, *chunk),
            ).fetchall()
            for image, n_classes, n_timesteps, blob in rows:
                if len(blob) != 8 * n_classes * n_timesteps:
                    continue  # a torn row: recomputed
                out[image] = torch.frombuffer(bytearray(blob), dtype=torch.float64).reshape(n_classes, n_timesteps)
        return out

    def put_errors(self, run: str, image: str, errors) -> None:
        """Commit one image's error row: (n_classes, n_timesteps) errors (one transaction; the first writer wins)."""
        import torch

        errors = torch.as_tensor(errors, dtype=torch.float64).contiguous()
        if errors.ndim != 2:
            raise DiffclsError(f"an error row is (n_classes, n_timesteps), got shape {tuple(errors.shape)}")
        if self.failed is not None:
            return
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO error_rows VALUES (?, ?, ?, ?, ?, ?)",
                (run, image, int(errors.shape[0]), int(errors.shape[1]), errors.numpy().tobytes(), time.time()),
            )
        except sqlite3.Error as err:
            self._fail(err)

    def count(self, run: str | None = None) -> int:
        """Stored outcomes (of one run, or all)."""
        if run is None:
            return int(self._db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM outcomes WHERE run = ?", (run,)).fetchone()[0])


def committed(path: str | os.PathLike) -> int:
    """Outcomes committed to the store file at ``path`` so far, read from outside the writing
    process (0 while the file or its table does not exist yet); for watching a run."""
    path = Path(path)
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=30)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        db.close()
