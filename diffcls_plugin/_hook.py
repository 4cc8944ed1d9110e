"""Interpreter-start hook, run by ``diffcls_plugin.pth``: patch CLIP_benchmark lazily.

Installs a meta-path finder that waits for the three ``clip_benchmark`` modules the plugin
patches and applies :mod:`diffcls_plugin.harness.patches` to each right after it is imported. Nothing
heavy is imported here (no torch): a process that never imports ``clip_benchmark`` pays for a
dictionary lookup per import. Set ``DIFFCLS_NO_HOOK=1`` to switch it off.
"""

from __future__ import annotations

import os
import sys

DISABLE_ENV = "DIFFCLS_NO_HOOK"
TARGETS = (
    "clip_benchmark.models",
    "clip_benchmark.metrics.zeroshot_classification",
    "clip_benchmark.cli",
)


def _apply(name: str, module) -> None:
    try:
        from diffcls_plugin.harness.patches import PATCHES

        PATCHES[name](module)
    except Exception as err:  # noqa: BLE001 - never break the harness itself
        import warnings

        warnings.warn(f"diffcls_plugin could not patch {name}: {err!r}", stacklevel=2)


class ClipBenchmarkFinder:
    """Finds nothing itself; wraps the real loader of the target modules to patch after import."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module
        importing = []

        def exec_then_patch(module):
            importing.append(True)
            try:
                exec_module(module)
            finally:
                importing.pop()
            _apply(fullname, module)

        loader.exec_module = exec_then_patch
        if fullname == "clip_benchmark.cli" and hasattr(loader, "get_code"):
            # `python -m clip_benchmark.cli` runs the module's code as __main__ through
            # loader.get_code, never through exec_module: hand runpy a shim that imports the real
            # (patched) module and runs its main, so that entry point is the plugin's too
            get_code = loader.get_code

            def code_for(name):
                return get_code(name) if importing else compile(_MAIN_SHIM, "<diffcls_plugin: clip_benchmark.cli>", "exec")

            loader.get_code = code_for
        return spec


_MAIN_SHIM = """
import importlib as _importlib
_cli = _importlib.import_module("clip_benchmark.cli")
globals().update({k: v for k, v in vars(_cli).items() if not k.startswith("__")})
if __name__ == "__main__":
    import sys as _sys
    _sys.exit(_cli.main())
"""


def install() -> None:
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return
    if any(isinstance(f, ClipBenchmarkFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, ClipBenchmarkFinder())
    for name in TARGETS:  # already imported before the hook ran: patch now
        if name in sys.modules:
            _apply(name, sys.modules[name])


install()
