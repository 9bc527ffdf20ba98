"""What a forked child must not inherit: the one at-fork helper.

Prefork workers fork after import. A child that used its parent's Redis socket would
interleave its replies with the parent's, and a lock another thread held at the fork stays
held in the child for ever (that thread does not exist there). Two tools, for the two cases:

- :class:`ForkLocal`: a value per process (the runtime, a registry, a background thread),
  built on first use and built again in a forked child, which never sees its parent's;
- :func:`after_fork_in_child`: ``renew(obj)`` runs in every forked child while ``obj``
  lives; :func:`fresh_lock_in_child` is its common case, a fresh lock for each live store.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Obj = TypeVar("Obj")

# Held weakly: a store that is gone needs no fresh lock. Keyed by id so objects that do not
# hash (dataclasses) can be watched; the finalizer drops the entry with its object.
_renewals: dict[int, tuple[weakref.ref[Any], list[Callable[[Any], None]]]] = {}


def after_fork_in_child(obj: Obj, renew: Callable[[Obj], None]) -> Obj:
    """Call ``renew(obj)`` in each forked child (right after the fork, before any other
    thread exists there), as long as ``obj`` lives. Returns ``obj``."""
    key = id(obj)
    entry = _renewals.get(key)
    if entry is None or entry[0]() is not obj:
        entry = (weakref.ref(obj, lambda _ref: _renewals.pop(key, None)), [])
        _renewals[key] = entry
    entry[1].append(renew)
    return obj


def _renew_in_child() -> None:
    for ref, renewals in list(_renewals.values()):
        obj = ref()
        if obj is not None:
            for renew in renewals:
                renew(obj)


os.register_at_fork(after_in_child=_renew_in_child)


def fresh_lock_in_child(obj: Obj, attribute: str = "_lock") -> Obj:
    """A new ``threading.Lock`` as ``obj.<attribute>`` in each forked child (the one a
    thread of the parent held at the fork would stay held there). Returns ``obj``."""
    return after_fork_in_child(obj, lambda o: setattr(o, attribute, threading.Lock()))


class ForkLocal(Generic[T]):
    """This process's ``factory()``: built once per process, on first :meth:`get` (by one
    thread), and again in a forked child. Each value is kept with the pid that built it, so
    a child never uses its parent's, whatever forked it."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._held: tuple[int, T] | None = None
        self._lock = threading.Lock()
        fresh_lock_in_child(self)

    def get(self, build: Callable[[], T] | None = None) -> T:
        """This process's value; if there is none yet, ``build()`` makes it (default: the
        factory; a caller that has the settings to build with passes its own)."""
        held = self._held  # one read: another thread may replace it meanwhile
        if held is not None and held[0] == os.getpid():
            return held[1]
        with self._lock:
            held = self._held
            if held is None or held[0] != os.getpid():
                held = (os.getpid(), (build or self._factory)())
                self._held = held
            return held[1]

    def peek(self) -> T | None:
        """This process's value if it was built (or set), else None; builds nothing."""
        held = self._held
        return held[1] if held is not None and held[0] == os.getpid() else None

    def built(self) -> bool:
        """Whether this process has a value (built or set), even a None."""
        held = self._held
        return held is not None and held[0] == os.getpid()

    def set(self, value: T) -> None:
        """This process's value from now on (in place of the factory's)."""
        self._held = (os.getpid(), value)

    def forget(self) -> T | None:
        """Drop the value: the next :meth:`get` builds a new one. Returns this process's
        value (for the caller to close), never a parent's (a child must not close its
        parent's sockets)."""
        with self._lock:
            value = self.peek()
            self._held = None
            return value
