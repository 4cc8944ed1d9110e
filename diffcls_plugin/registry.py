"""A small name -> factory registry (timm's ``@register_model``, lm-eval's error message)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from diffcls_plugin.errors import unknown_name_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps kebab-case names to objects; unknown names raise an error that lists what exists."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def remove(self, name: str) -> T:
        """Unregister ``name`` (tests that register a temporary entry) and return its object."""
        try:
            return self._entries.pop(name)
        except KeyError:
            raise unknown_name_error(self.kind, name, self._entries) from None

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._entries) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)
