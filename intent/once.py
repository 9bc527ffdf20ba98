"""Values built once per object, however many threads (or greenlets) ask for them at once.

``functools.cached_property`` builds under no lock since Python 3.12 (3.11 holds one lock
per property for every instance of the class): under ``-P threads`` or ``-P gevent`` two
tasks that first meet a lazily built member at the same moment would each build one, and
one of them would go on with a client, a rate limiter's in-memory fallback or a breaker
registry that nobody else sees. :class:`once_property` builds under the object's own
re-entrant lock (:func:`object_lock`), so a member built from another one (the service
clients from the rate limits) is fine, and once built it is a plain attribute read: the
value lands in the instance's ``__dict__``, which a non-data descriptor gives way to.

An object whose members are built this way is held once per process (``intent.forks``
``ForkLocal``): a forked child builds its own object and so its own lock, never waiting on
one a parent's thread held at the fork.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

_LOCK_ATTRIBUTE = "_once_lock"


def object_lock(instance: object) -> threading.RLock:
    """``instance``'s own re-entrant lock, made on first use (``dict.setdefault`` is atomic:
    two threads that race to make it end up with the same one)."""
    found: threading.RLock = instance.__dict__.setdefault(_LOCK_ATTRIBUTE, threading.RLock())
    return found


class once_property(Generic[T]):  # lower case, as the cached_property it replaces
    """A ``cached_property`` whose value is built by one thread: the others that ask meanwhile
    wait for it and get the same object."""

    def __init__(self, build: Callable[[Any], T]):
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> once_property[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        values = instance.__dict__
        try:
            return values[self.name]
        except KeyError:
            pass
        with object_lock(instance):
            if self.name not in values:  # not built by the thread this one waited for
                values[self.name] = self.build(instance)
            return values[self.name]
