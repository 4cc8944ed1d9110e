"""The CLIP_benchmark integration: the only code that imports ``clip_benchmark``.

CLIP_benchmark has no plugin hook, so :mod:`.patches` patches three of its modules. The rest
is split by job: :mod:`.session` (a call's runs and records), :mod:`.preflight` (checks before
anything loads), :mod:`.datasets` (the harness's datasets, subsets, local webdatasets),
:mod:`.downloads` (a failed dataset download named in one line),
:mod:`.names` (the harness's names and path formulas) and :mod:`.run` (the harness's CLI in this
process).
"""

from __future__ import annotations

from diffcls_plugin.harness.patches import PATCHES, register
from diffcls_plugin.harness.preflight import validate_cell
from diffcls_plugin.harness.run import run_harness
from diffcls_plugin.harness.session import RunRecord, session

__all__ = ["PATCHES", "RunRecord", "register", "run_harness", "session", "validate_cell"]
