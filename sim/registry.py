"""Registries that map the names used in scenario files to classes.

A name is written once, in the ``register`` decorator on the class; registering it twice raises.
Unknown names raise ``UnknownNameError`` suggesting the closest registered names. Third-party
packages add entries through entry points, group ``simlb.<kind>`` by default (strategies:
``simlb.strategies``, e.g. ``[project.entry-points."simlb.strategies"] mine =
"mypkg.strategies:Mine"``). An entry point naming a module imports it, which runs its
decorators; one naming a class registers it under the entry point's name unless it registered
itself. Scenario files never name import paths.

>>> things = Registry("thing")
>>> @things.register("alpha")
... class Alpha: ...
>>> things.get("alpha") is Alpha
True
>>> things.get("alpah")
Traceback (most recent call last):
...
sim.errors.UnknownNameError: unknown thing 'alpah'; did you mean 'alpha'? (known: alpha)
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from sim.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> class map for one kind of pluggable component."""

    def __init__(self, kind: str, entry_point_groups: tuple[str, ...] | None = None) -> None:
        self.kind = kind
        #: entry-point groups read (once, at the first lookup of a name not registered)
        self.entry_point_groups = entry_point_groups or (f"simlb.{kind}",)
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator registering ``cls`` under ``name``; a duplicate name raises."""

        def decorator(cls: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered by {self._entries[name]!r}"
                )
            self._entries[name] = cls
            with contextlib.suppress(AttributeError, TypeError):
                cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> T:
        """Return the class registered as ``name``; raise ``UnknownNameError`` otherwise."""
        if name not in self._entries:
            self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._load_entry_points()
        return name in self._entries

    def _unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'{hint} (known: {', '.join(known)})"

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for group in self.entry_point_groups:
            for ep in entry_points(group=group):
                try:
                    loaded = ep.load()
                except Exception as exc:  # a broken plugin: say which one
                    raise ImportError(f"entry point '{ep.name}' = '{ep.value}' of group "
                                      f"'{group}' failed to load: {exc}") from exc
                if isinstance(loaded, type) and loaded not in self._entries.values():
                    self.register(ep.name)(loaded)  # type: ignore[arg-type]
