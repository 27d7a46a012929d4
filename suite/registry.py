"""A name -> object registry whose entries may be imported on first use (``"package.module:attr"``).

The suite's methods, architectures, tasks and analyses are registered this way, so importing a registry imports
none of them, and a broken one breaks only its own lookup. Plugins (``--plugin``, entry points) go through the same
``register``; a different object under a taken name is an error.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator


class PluginError(ValueError):
    """A plugin that cannot be loaded or registered; the message names it."""


@dataclass(frozen=True)
class Lazy:
    """An entry imported on first use: ``load()`` returns the object. ``origin`` names a plugin's declaration
    (an entry point) for errors; the suite's own entries have none and fail like any import."""

    load: Callable[[], Any]
    origin: str = ""

    @classmethod
    def target(cls, target: str) -> Lazy:
        """``"package.module:attr"``."""
        module, _, attr = target.partition(":")
        return cls(lambda: getattr(importlib.import_module(module), attr))


class Registry(MutableMapping):
    """Names -> objects of one kind (``what``: "method", "architecture", "task", "analysis"); ``check(name, obj)``
    raises ValueError for an object that cannot be registered under ``name``. Iterating and ``in`` import nothing."""

    def __init__(self, what: str, builtins: dict[str, str], check: Callable[[str, Any], None]):
        self.what, self._check = what, check
        self._entries: dict[str, Any] = {name: Lazy.target(target) for name, target in builtins.items()}

    def __getitem__(self, name: str) -> Any:
        entry = self._entries[name]
        if isinstance(entry, Lazy):
            entry = self._entries[name] = self._resolve(name, entry)
        return entry

    def _resolve(self, name: str, entry: Any) -> Any:
        if isinstance(entry, Lazy):
            try:
                entry = entry.load()
            except Exception as err:  # a broken third-party package must name itself, not break the suite
                if not entry.origin:
                    raise
                raise PluginError(f"{entry.origin} failed to load: {err}") from None
        try:
            self._check(name, entry)
        except ValueError as err:
            raise PluginError(str(err)) from None
        return entry

    def register(self, name: str, entry: Any) -> Any:
        """Add ``entry`` (an object or a ``Lazy``) under ``name``; registering the same object again is a no-op."""
        if name in self._entries:
            known, new = self[name], self._resolve(name, entry)
            if known is not new:
                raise PluginError(f"a {self.what} named {name!r} is already registered")
            return known
        if not isinstance(entry, Lazy):
            self._resolve(name, entry)
        self._entries[name] = entry
        return entry

    def known(self, name: str) -> str:
        """``name`` if it is registered (importing nothing: a manifest is checked this way), else a ValueError
        naming the registered ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self._entries))}")
        return name

    def loaded(self) -> dict[str, Any]:
        """The entries imported so far (nothing is imported to answer)."""
        return {name: e for name, e in self._entries.items() if not isinstance(e, Lazy)}

    def __setitem__(self, name: str, entry: Any) -> None:
        self.register(name, entry)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


class EntryPoints:
    """Every entry point of ``group``, registered through ``register(name, Lazy)`` on the first call only: installed
    plugins are found without importing them."""

    def __init__(self, group: str, register: Callable[[str, Any], Any]):
        self.group, self.register, self.loaded = group, register, False

    def __call__(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        for ep in entry_points(group=self.group):
            self.register(ep.name, Lazy(ep.load, f"entry point {ep.name} = {ep.value} ({self.group})"))
