"""Leases of answered calls, given back when their caller goes idle.

A closed breaker's successful call is not reported: the caller's next ``acquire`` frees
its lease in the same round trip, so a healthy call costs one. A caller that makes no next
call (an idle pool process, a thread that ended) would leave its lease looking like a call
still in flight, and after ``slow_call_duration`` like a slow one: enough idle processes
would trip a healthy service's breaker. So a lease held by an idle caller is reported as a
success after ``slow_call_duration / 4`` by one daemon thread per process (started in the
process that first holds a lease, so a forked pool child starts its own).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from intent.breaker.store import Ticket

# Report(slot, ticket): gives the lease back (a success report); errors are the caller's.
Report = Callable[[str, Ticket], None]

MIN_IDLE = 0.05  # seconds: the shortest idle time a lease is kept for


@dataclass(eq=False)  # hashed by identity: the releaser keeps a weak set of them
class HeldLeases:
    """The unreported leases of one breaker in this process, by slot."""

    idle: float  # seconds a lease is kept before it is given back
    report: Report
    _held: dict[str, tuple[Ticket, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pid: int = field(default_factory=os.getpid)

    def hold(self, slot: str, ticket: Ticket) -> None:
        """``slot``'s call was answered; its lease waits for the slot's next call."""
        self._after_fork()
        with self._lock:
            self._held[slot] = (ticket, time.monotonic())
        _releaser().watch(self)

    def take(self, slot: str) -> None:
        """``slot`` calls again: its next acquire frees the lease (not given back here).
        Waits while the lease is being given back, so that report never frees the new one."""
        if self._held:
            self._after_fork()
            with self._lock:
                self._held.pop(slot, None)

    def release_idle(self, now: float | None = None) -> int:
        """Give back the leases idle for ``idle`` seconds; returns how many."""
        self._after_fork()
        now = time.monotonic() if now is None else now
        released = 0
        with self._lock:  # held while reporting: see take()
            for slot, (ticket, since) in list(self._held.items()):
                if now - since >= self.idle:
                    del self._held[slot]
                    try:
                        self.report(slot, ticket)
                    except Exception:  # noqa: S112 - the lease lapses by itself
                        continue
                    released += 1
        return released

    def __len__(self) -> int:
        return len(self._held)

    def _after_fork(self) -> None:
        # A forked child holds none of its parent's leases, and not its lock.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._held = {}
            self._lock = threading.Lock()


class _Releaser:
    """One daemon thread per process that gives back idle leases of every breaker."""

    def __init__(self) -> None:
        self._watched: weakref.WeakSet[HeldLeases] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def watch(self, leases: HeldLeases) -> None:
        if leases not in self._watched:
            with self._lock:
                self._watched.add(leases)
            self._wake.set()

    def run(self) -> None:
        while True:
            watched = list(self._watched)
            pending = [leases for leases in watched if len(leases)]
            if not pending:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for leases in pending:
                leases.release_idle()
            time.sleep(max(MIN_IDLE, min(leases.idle for leases in pending) / 2))


_state: tuple[int, _Releaser] | None = None
_state_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    global _state_lock
    _state_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)


def _releaser() -> _Releaser:
    global _state
    state = _state
    if state is not None and state[0] == os.getpid():
        return state[1]
    with _state_lock:
        if _state is None or _state[0] != os.getpid():
            releaser = _Releaser()
            thread = threading.Thread(target=releaser.run, name="breaker-idle-leases", daemon=True)
            thread.start()
            _state = (os.getpid(), releaser)
        return _state[1]
