"""The harness runs of one call: what goes in (a config, a subset, extra result fields) and what
comes out (one :class:`RunRecord` per run).

The harness calls back into the plugin (its loader, its dataset builder) without our arguments,
so the session of the current call is found through a context variable, never module globals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.data.subset import SubsetSpec
from diffcls_plugin.zoo import Checkpoint

if TYPE_CHECKING:
    from diffcls_plugin.classifier import DiffusionClassifier


@dataclass
class RunRecord:
    """What one harness run did, handed back to the caller (see :func:`run_harness`).

    Attributes:
        model, dataset: the run's harness names.
        output: its result file (diffusion runs).
        n_images: images in the dataset it evaluated (``None`` when unknown).
        n_images_expected: images in a local webdataset (or subset) before corrupt ones were skipped.
        subset: the subset's description, when the run evaluated one.
    """

    model: str
    dataset: str
    output: str | None = None
    n_images: int | None = None
    n_images_expected: int | None = None
    subset: dict[str, Any] | None = None


@dataclass
class RunContext:
    """What the patched ``run`` resolved for one (model, dataset) run of a diffusion model."""

    config: DiffclsConfig
    seed: int
    checkpoint: Checkpoint
    output: str
    model: DiffusionClassifier | None = None  # once the harness has loaded it


@dataclass
class Session:
    """The harness runs of one call: a config instead of ``$DIFFCLS_CONFIG``, a subset, fields
    added to every result, and the records of the runs so far."""

    config: DiffclsConfig | None = None
    subset: SubsetSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # added to every result's diffcls block
    records: list[RunRecord] = field(default_factory=list)
    record: RunRecord | None = None  # the run in progress
    active: RunContext | None = None  # ... when it is a diffusion model's
    dry_run: bool = False  # check every run and print its plan and cost, run none


_SESSION: ContextVar[Session | None] = ContextVar("diffcls_session", default=None)


@contextlib.contextmanager
def session(
    config: DiffclsConfig | None = None, subset: SubsetSpec | None = None, extra: dict[str, Any] | None = None, dry_run: bool = False
) -> Iterator[Session]:
    """Run harness evaluations in this context with ``config`` (instead of ``$DIFFCLS_CONFIG``) and
    on a stratified ``subset`` of every dataset (see :mod:`subset`); yields the session, whose
    ``records`` fill as runs finish. ``dry_run`` checks every run and prints its cost, running none."""
    if subset is not None:
        subset.validate()
    token = _SESSION.set(Session(config, subset, dict(extra or {}), dry_run=dry_run))
    try:
        yield _SESSION.get()
    finally:
        _SESSION.reset(token)


def current_session() -> Session | None:
    """The session of the harness call in progress (``None`` outside one)."""
    return _SESSION.get()
