"""One registry helper for every extension point: models, tasks, selectors, inits, trainable
policies, losses, recipes, profiles. Name -> object, one error message naming the known choices
(lm-eval's `Registry`, STYLE.md item 16): facts about an entry live on the entry itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message names the known choices (one line)."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "selector", "task", ...: used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """`register(name, obj)`, or `@register(name)` as a decorator. A name is taken once."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry
        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: "
                                   f"{', '.join(self._entries) or '(none)'}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

