"""Shared validation helpers for sampler option dataclasses, and named presets of options."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

from diffcls_plugin.errors import DiffclsError, short, unknown_name_error


class Removed(NamedTuple):
    """An option a sampler no longer has.

    Attributes:
        default: its former default: the value at which the sampler behaved as it does now (a
            reference that recorded it at this value still matches; ``diffcls check``).
        instead: what to use instead, for the error that names it.
    """

    default: Any
    instead: str


@dataclass(frozen=True)
class SamplerOptions:
    """Base of frozen option dataclasses: a section name, presets and typed checks with clear errors.

    Subclasses are ``@dataclass(frozen=True)`` and set ``section`` (the sampler's name, which is
    also its section in config files) and optionally ``PRESETS``: named bundles of option values
    that a config section starts from with ``preset: NAME``, and ``REMOVED``: the options the
    sampler once had, each with its former default (an option stays only while a shipped default
    or preset uses it or the suite has measured it; the rest go, and are listed here so that older
    configs get a clear error and older references still match).

    Attributes:
        preset: the preset the options started from (recorded in results); ``None`` for none.
            Keyword-only, so subclasses' positional fields are unchanged.
    """

    section: ClassVar[str] = ""
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    REMOVED: ClassVar[dict[str, Removed]] = {}

    preset: str | None = field(default=None, kw_only=True)

    def _fail(self, key: str, problem: str) -> DiffclsError:
        return DiffclsError(f"{self.section}.{key} {problem}")

    def _check_int(self, key: str, minimum: int, maximum: int | None = None) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {short(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self._fail(key, f"must be {bound}, got {value}")

    @classmethod
    def preset_values(cls, name: Any) -> dict[str, Any]:
        """The option values of the preset ``name``.

        Args:
            name: a key of ``PRESETS``.

        Returns:
            a fresh dict of option values (without ``preset``).

        Raises:
            DiffclsError: for an unknown name, listing the valid ones with a "did you mean" hint.
        """
        if not cls.PRESETS:
            raise DiffclsError(f"{cls.section}.preset {name!r}: {cls.section} has no presets; remove {cls.section}.preset")
        if not isinstance(name, str) or name not in cls.PRESETS:
            raise unknown_name_error(f"{cls.section} preset", str(name), cls.PRESETS, f"Set {cls.section}.preset to one of them or remove it.")
        return dict(cls.PRESETS[name])

    @classmethod
    def removed_option_error(cls, key: Any, source: str = "") -> DiffclsError | None:
        """The error for a config that sets ``key``, an option this sampler no longer has.

        Args:
            key: a key of the sampler's config section.
            source: the file (or other origin) named in the error.

        Returns:
            the error to raise, or ``None`` when ``key`` was never removed (then it is an
            ordinary unknown key).
        """
        removed = cls.REMOVED.get(key) if isinstance(key, str) else None
        if removed is None:
            return None
        where = f"{source}: " if source else ""
        return DiffclsError(
            f"{where}{cls.section}.{key} was removed: {cls.section} now always runs as it did at "
            f"{cls.section}.{key}: {_yaml(removed.default)}, its former default. Delete {cls.section}.{key} "
            f"from the config; {removed.instead}."
        )

    def check_preset(self) -> None:
        """Raise :class:`DiffclsError` when ``preset`` names no preset of this sampler."""
        if self.preset is not None:
            type(self).preset_values(self.preset)

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`DiffclsError` for inconsistent options (before any compute)."""
        raise NotImplementedError(f"{type(self).__name__} must define validate()")

    def to_dict(self) -> dict[str, Any]:
        """Every option (``preset`` included) as plain JSON/YAML values; tuples become lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _yaml(value: Any) -> str:
    return "null" if value is None else str(value)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
