"""Reading human-written mappings (YAML or JSON) and writing JSON atomically.

Every result, reference and weights file the plugin writes goes through :func:`write_json_atomic`:
readers see the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from diffcls_plugin.errors import DiffclsError

MAX_BYTES = 1_000_000  # a config, reference or weights file is kilobytes; larger ones are refused before parsing
MAX_ALIASES = 32  # YAML aliases: a few shared sections are fine; a "billion laughs" nest of them is not


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses more than :data:`MAX_ALIASES` aliases (each may stand for a
    whole nest of others, and reporting the value would expand them all)."""
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_ALIASES:
                    raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name); write the values out")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def read_mapping(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """Read a YAML or JSON file (by its suffix) into a mapping, with errors that name the file.

    Args:
        path: the file; ``.json`` is read as JSON, anything else as YAML.
        what: how errors name the file (``config file``, ``reference file`` ...).

    Returns:
        the mapping; an empty file gives ``{}``.
    """
    path = Path(path)
    if not path.is_file():
        raise DiffclsError(f"{what} {str(path)!r} does not exist; check the path")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise DiffclsError(f"{what} {str(path)!r} is {size:,} bytes, more than a {what} needs ({MAX_BYTES:,} at most); check the path")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = _load_yaml(text)
    except Exception as err:  # noqa: BLE001 - any parse error is reported the same way
        raise DiffclsError(f"{what} {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    return {} if data is None else data


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = None) -> Path:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it over ``path``.

    Args:
        path: the file to write; its folder must exist.
        data: JSON-serialisable data.
        indent: ``None`` for one line, else pretty-printed with a final newline.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent)
            if indent is not None:
                f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
