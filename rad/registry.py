"""One registry helper for every extension point: models, tasks, selectors, inits, trainable
policies, losses, recipes, profiles. Name -> object, one error message naming the known choices
(as lm-eval's `Registry`): facts about an entry live on the entry itself.

A registry may name plugin modules (dotted names, as strings) that register into it, such as
the baselines' selectors and recipes: they are imported once, on the registry's first lookup,
so a bare import of the registry knows every entry, and the registry's own package never
imports its plugins' (lm-eval's lazy placeholder entries, the `rad` command table)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message names the known choices (one line)."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, plugins: Sequence[str] = ()):
        self.kind = kind  # "selector", "task", ...: used in error messages
        self._entries: dict[str, T] = {}
        self._plugins = tuple(plugins)  # modules still to import before the next lookup

    def register(self, name: str, obj: T | None = None):
        """`register(name, obj)`, or `@register(name)` as a decorator. A name is taken once."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry
        return add(obj) if obj is not None else add

    def _loaded(self) -> dict[str, T]:
        """The entries, once the plugins are imported. They are taken off the list first: a
        plugin that looks up this registry while it loads sees what is registered so far."""
        plugins, self._plugins = self._plugins, ()
        for i, module in enumerate(plugins):
            try:
                importlib.import_module(module)
            except BaseException:
                self._plugins = plugins[i:]  # the next lookup tries (and fails) again
                raise
        return self._entries

    def get(self, name: str) -> T:
        entries = self._loaded()
        try:
            return entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: "
                                   f"{', '.join(entries) or '(none)'}") from None

    def names(self) -> list[str]:
        return list(self._loaded())

    def items(self) -> list[tuple[str, T]]:
        return list(self._loaded().items())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())
