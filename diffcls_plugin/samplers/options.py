"""Shared validation helpers for sampler option dataclasses."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from diffcls_plugin.errors import DiffclsError


class SamplerOptions:
    """Mixin for frozen option dataclasses: a section name and typed checks with clear errors."""

    section = ""

    def _fail(self, key: str, problem: str) -> DiffclsError:
        return DiffclsError(f"{self.section}.{key} {problem}")

    def _check_int(self, key: str, minimum: int, maximum: int | None = None) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self._fail(key, f"must be {bound}, got {value}")

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`DiffclsError` for inconsistent options (before any compute)."""
        raise NotImplementedError(f"{type(self).__name__} must define validate()")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
