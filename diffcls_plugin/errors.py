"""The one exception type the plugin raises for bad input."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffclsError(ValueError):
    """Bad input: the message names the input, what is wrong, and the fix."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_error(kind: str, name: str, choices: Iterable[str], fix: str = "") -> DiffclsError:
    """An error for an unknown name that lists the valid names and suggests the closest."""
    choices = sorted(choices)
    suggestion = closest(name, choices)
    hint = f" Did you mean {suggestion!r}?" if suggestion else ""
    tail = f" {fix}" if fix else ""
    return DiffclsError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(choices)}.{tail}")
