"""Per-image outcomes in an embedded SQLite database, so an interrupted run resumes where it stopped.

Each image's outcome (its ranking, scores, evaluations, rounds, stop reason, UNet evaluations and
seconds as spent) is committed the moment its sampler finishes, keyed by

- the *run key*: a SHA-256 of everything that determines an outcome besides the image (the
  checkpoint's fingerprint, the sampler and its options, the loss, the exact prompts, the seed,
  dtype, device type, image size, timestep count, the versions of torch, diffusers and
  transformers, and a hash of this package's code; see :func:`diffcls_plugin.keys.run_key`), and
- the *image key*: a SHA-256 of the image's pixels as the model sees them (quantised to 8 bits,
  with their shape).

Rerunning the same command after SIGINT or SIGKILL therefore reuses every finished image and
computes only the missing ones, and its metrics equal those of an uninterrupted run. The database
is ``$DIFFCLS_CACHE/outcomes.sqlite`` (default ``~/.cache/diffcls_plugin``) in WAL mode, so several
runs on one host can read and write it at once; every write is one short transaction with a busy
timeout. Set ``resume: false`` in the config, or ``DIFFCLS_RESUME=0`` in the environment, to
neither read nor write it.

It degrades, never crashes (SQLite's "How To Corrupt An SQLite Database File" lists the ways):

- a file that fails ``PRAGMA quick_check`` when the store opens (a torn header, a damaged page) is
  moved aside to ``outcomes.sqlite.damaged-<time>`` with a warning, and a fresh store is started;
- a read or write that fails mid-run (a full disk) switches the store off with one warning, and the
  run finishes without it;
- under ``torchrun`` only rank 0 opens the file (:func:`open_run_store`): it reads the stored
  outcomes of every rank's images and commits every rank's new ones after the gather;
- on a network filesystem (NFS, Lustre, GPFS ...: :func:`network_filesystem`), where WAL's
  shared-memory index cannot work, the store uses a rollback journal; keep ``$DIFFCLS_CACHE`` on
  node-local disk where file locks are unreliable.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


SCHEMA = """
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
# filesystems where SQLite's WAL index (shared memory) cannot work and locks may not hold
NETWORK_FILESYSTEMS = frozenset(
    "nfs nfs4 cifs smb smb2 smb3 smbfs lustre gpfs beegfs ceph cephfs glusterfs fuse.glusterfs fuse.sshfs fuse.s3fs "
    "fuse.gcsfuse fuse.juicefs fuse.cephfs 9p afs ncpfs panfs pvfs2 orangefs wekafs".split()
)
MOUNTS = "/proc/self/mounts"


def network_filesystem(folder: str | os.PathLike, mounts: str = MOUNTS) -> str | None:
    """The type of the network filesystem holding ``folder`` (``nfs4``, ``lustre`` ...), or ``None``
    for a local one or where the mount table cannot be read (not Linux)."""
    try:
        with open(mounts) as f:
            table = [line.split() for line in f]
    except OSError:
        return None
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent  # the folder is created later: its nearest existing parent decides
    target = str(path.resolve())
    best, kind = "", None
    for fields in table:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def move_aside(path: Path) -> Path:
    """Rename a damaged store file (and its WAL) to ``<name>.damaged-<time>``, never deleting it."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    shm = path.with_name(path.name + "-shm")
    if shm.exists():
        shm.unlink()  # the WAL index is rebuilt from the WAL
    return target


@dataclass(frozen=True)
class Outcome:
    """One image's stored outcome: the sampler's result and what it cost when it was computed."""

    result: SamplerResult
    n_unet_evals: int
    seconds: float


class OutcomeStore:
    """The SQLite store of per-image outcomes (WAL mode on local disks; safe for concurrent processes).

    Args:
        path: the database file; its folder is created. Default ``$DIFFCLS_CACHE/outcomes.sqlite``.
        timeout: seconds a writer waits for another's lock before failing.
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 120.0) -> None:
        self.path = Path(path) if path is not None else cache_dir() / FILENAME
        self.timeout = timeout
        self.failed: str | None = None  # the first error of a read or write mid-run; the store is then off
        self.moved_aside: Path | None = None  # where a damaged file went when this store opened
        self.filesystem = network_filesystem(self.path.parent)
        blocker = next((folder for folder in (self.path.parent, *self.path.parent.parents) if folder.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise DiffclsError(
                f"cannot open the resume store {str(self.path)!r}: {str(blocker)!r} is a file, not a folder; point $DIFFCLS_CACHE "
                "at a writable local folder, or switch the store off with DIFFCLS_RESUME=0 (or 'resume: false')"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            damage = self._connect()
            if damage is not None:
                self._db.close()
                self.moved_aside = move_aside(self.path)
                print(
                    f"diffcls: WARNING: the resume store {str(self.path)!r} is damaged ({damage}); moved it to "
                    f"{str(self.moved_aside)!r} and started a fresh store (finished images will be computed again)",
                    file=sys.stderr,
                )
                damage = self._connect()
                if damage is not None:
                    raise sqlite3.DatabaseError(damage)
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

    def _connect(self) -> str | None:
        """Open the file and create the tables; the damage found (``None`` when the file is sound).

        SQLite's WAL mode needs every process on one host (its index is shared memory), so on a
        network filesystem the store uses a rollback journal instead; under torchrun only rank 0
        opens it (see :func:`open_run_store`)."""
        self._db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = "DELETE" if self.filesystem else "WAL"
            self.journal_mode = self._db.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0]
            # an existing file is checked before it is used: a torn header or a damaged page
            check = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):
                raise  # locked, read-only, out of space: not damage
            return str(err)
        if check != [("ok",)]:
            return "; ".join(str(row[0]) for row in check[:3])
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: survives a killed process
        self._db.executescript(SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return None

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


def open_run_store(store: OutcomeStore | bool | None, config_resume: bool = True) -> OutcomeStore | None:
    """The store a run uses: ``store`` itself when one is given, none when it is ``False`` or
    switched off (:func:`resume_enabled`), and none on a torchrun rank other than 0: rank 0 reads
    the stored outcomes for every rank and commits every rank's new ones, so exactly one process
    of a run touches the file. Opened before any weights load, so a cache problem costs nothing."""
    if isinstance(store, OutcomeStore):
        return store
    if store is False or (store is None and not resume_enabled(config_resume)):
        return None
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        return None
    return OutcomeStore()


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
