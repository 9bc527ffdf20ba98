"""The pool this process runs tasks in, and the running step's time limit where the pool
does not enforce Celery's.

Celery's soft and hard time limits hold on the prefork pool alone: its pool process gets
a signal at the soft limit (``SoftTimeLimitExceeded`` raised wherever the task is) and is
killed at the hard one. The threads pool ignores both (a thread cannot be interrupted);
the gevent pool applies the hard limit only, as a ``gevent.Timeout`` that fails the task.

So the step's own time limit travels with it here: the task layer opens
:func:`step_time_limit` around each step's body (``tasks/pools.time_limited``, in
``tasks/pipeline.py`` and ``tasks/batch.py``; its recovery runs outside), and every downstream call
made inside asks :func:`remaining` for what is left: its connect and read timeouts are cut
to it (``intent.clients``), a drill's injected latency too, and a call that would start
with nothing left, or whose cut timeout is what ended it, raises
:class:`~intent.errors.TimeLimitReached`: the step then ends as a prefork pool process ends
it at its soft limit, with the same error and the same recovery (a retry). The limit is a
``ContextVar``: each thread, and each greenlet, has its own. A read timeout holds per
socket read, so an answer trickling in a byte at a time would outlast it: a call still
running when the step's time is up has its socket shut (``intent.httpcut``).

:func:`declare` records the pool (the worker does, at start): a process whose tasks share
it (threads, gevent) sizes its per-process resources, such as the HTTP connection pools,
by its concurrency.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from intent.errors import TimeLimitReached

# Pools whose tasks run side by side in one process.
SHARED_PROCESS_POOLS = frozenset({"threads", "gevent", "eventlet"})


@dataclass(frozen=True)
class Pool:
    """A worker's pool: its kind (``prefork``, ``threads``, ``gevent``, ``solo``...) and
    concurrency."""

    kind: str = "prefork"
    concurrency: int = 1

    @property
    def tasks_per_process(self) -> int:
        """How many tasks one process of this pool runs at the same time."""
        return self.concurrency if self.kind in SHARED_PROCESS_POOLS else 1

    @property
    def enforces_soft_time_limit(self) -> bool:
        """Whether the pool itself interrupts a task at its soft time limit."""
        return self.kind == "prefork"


_pool = Pool()


def declare(kind: str, concurrency: int) -> Pool:
    """This process runs its tasks in ``kind`` with ``concurrency`` (the worker says so at
    start; a prefork child inherits it). Returns the pool."""
    global _pool
    _pool = Pool(kind, max(1, int(concurrency)))
    return _pool


def current() -> Pool:
    """This process's pool as declared (prefork, one task, when nobody said)."""
    return _pool


# -- the running step's time limit ---------------------------------------------------------

# (monotonic end, seconds of the limit) of the step this thread or greenlet runs.
_limit: ContextVar[tuple[float, float] | None] = ContextVar("intent_step_limit", default=None)


@contextlib.contextmanager
def step_time_limit(seconds: float | None) -> Iterator[None]:
    """Inside, the running step must end within ``seconds`` (None or 0: no limit)."""
    if not seconds or seconds <= 0:
        yield
        return
    token = _limit.set((time.monotonic() + seconds, float(seconds)))
    try:
        yield
    finally:
        _limit.reset(token)


def remaining() -> float | None:
    """Seconds the running step has left (None: no limit; never below 0)."""
    limit = _limit.get()
    if limit is None:
        return None
    return max(0.0, limit[0] - time.monotonic())


def check(what: str) -> None:
    """Raise :class:`TimeLimitReached` if the running step has no time left for ``what``."""
    limit = _limit.get()
    if limit is not None and time.monotonic() >= limit[0]:
        raise TimeLimitReached(what, limit[1])


def reached(what: str) -> TimeLimitReached:
    """The error of a step whose time limit ended ``what``."""
    limit = _limit.get()
    return TimeLimitReached(what, limit[1] if limit is not None else 0.0)


def capped(timeout: float) -> tuple[float, bool]:
    """``timeout`` cut to the running step's time left: (seconds, whether the cut binds)."""
    left = remaining()
    if left is None or left >= timeout:
        return timeout, False
    return left, True


def sleep(seconds: float, what: str) -> None:
    """Sleep ``seconds``, or until the step's time is up, then raise :class:`TimeLimitReached`."""
    wait, binds = capped(seconds)
    if wait > 0:
        time.sleep(wait)
    if binds:
        raise reached(what)
