"""Run the harness's own CLI in this process, with a config, a subset and extra result fields."""

from __future__ import annotations

import sys
from typing import Any

from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.data.subset import SubsetSpec
from diffcls_plugin.harness.patches import register
from diffcls_plugin.harness.session import RunRecord, session


def run_harness(
    argv: list[str], config: DiffclsConfig | None = None, subset: SubsetSpec | None = None, extra: dict[str, Any] | None = None, dry_run: bool = False
) -> list[RunRecord]:
    """Run ``clip_benchmark.cli.main`` in this process with ``argv``, a config and an optional subset;
    ``extra`` goes into the ``diffcls`` block of every result it writes (in the same single write).
    ``dry_run`` checks every run and prints its plan and cost, computing nothing.

    Returns:
        one record per harness run, in order.
    """
    register()
    from clip_benchmark import cli as harness_cli

    saved = sys.argv
    sys.argv = list(argv)
    try:
        with session(config, subset, extra, dry_run) as current:
            harness_cli.main()
            return list(current.records)
    finally:
        sys.argv = saved
