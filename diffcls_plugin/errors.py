"""The one exception type the plugin raises for bad input, and the one "did you mean" builder."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


class DiffclsError(ValueError):
    """Bad input: the message names the input, what is wrong, and the fix."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """``" Did you mean 'x'?"`` for the choice closest to ``name`` (``prefix`` put before it), or ``""``."""
    hint = closest(name, choices)
    return f" Did you mean {prefix + hint!r}?" if hint else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str], fix: str = "") -> DiffclsError:
    """An error for an unknown name that lists the valid names and suggests the closest."""
    choices = sorted(choices)
    tail = f" {fix}" if fix else ""
    return DiffclsError(f"unknown {kind} {name!r}.{did_you_mean(name, choices)} Valid: {', '.join(choices)}.{tail}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 80, 80


def short(value: object) -> str:
    """A user's value for an error message: ``repr``, cut to a few items per level and three levels
    (a YAML alias nest under a key would otherwise expand into megabytes)."""
    return _SHORT.repr(value)
