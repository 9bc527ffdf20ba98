"""Leases of answered calls, given back when their caller goes idle.

A closed breaker's successful call is not reported: the caller's next ``acquire`` frees
its lease in the same round trip, so a healthy call costs one. A caller that makes no next
call (an idle pool process, a thread that ended) would leave its lease looking like a call
still in flight, and after ``slow_call_duration`` like a slow one: enough idle processes
would trip a healthy service's breaker. So a lease held by an idle caller is given back
(``Outcome.RELEASED``: the service answered then, the lease ends, nothing else) after
``slow_call_duration / 4`` by one daemon thread per process, started in the process that
first holds a lease, so a forked pool child starts its own.

A give-back never overlaps its slot's next acquire (which would free the new lease): the
acquire waits for a give-back of its own slot in progress, and the thread skips a slot
that has called again. One that fails (the store unreachable) is tried again until the
lease would have lapsed by itself.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from intent.breaker.stores.base import StoreError, Ticket
from intent.forks import ForkLocal, after_fork_in_child

# GiveBack(name, slot, ticket): the lease of ``slot``'s answered call ends.
GiveBack = Callable[[str, str, Ticket], None]

MIN_IDLE = 0.05  # seconds: the shortest idle time a lease is kept for


@dataclass(frozen=True, slots=True)
class _Held:
    name: str  # the breaker's name when the call was made
    ticket: Ticket
    since: float  # monotonic: when the call was answered


@dataclass(eq=False)  # hashed by identity: the releaser keeps a weak set of them
class HeldLeases:
    """The unreported leases of one breaker in this process, by slot."""

    idle: float  # seconds a lease is kept before it is given back
    lapse: float  # seconds after which the store drops the lease by itself
    give_back: GiveBack
    _held: dict[str, _Held] = field(default_factory=dict)
    _releasing: set[str] = field(default_factory=set)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def hold(self, name: str, slot: str, ticket: Ticket) -> None:
        """``slot``'s call was answered; its lease waits for the slot's next call."""
        with self._cond:
            self._held[slot] = _Held(name, ticket, time.monotonic())
        _releaser().watch(self)

    def take(self, slot: str) -> Ticket | None:
        """``slot`` calls again: its acquire frees the lease, not a give-back. Waits while
        a give-back of this slot is on its way, so that it never frees the new lease.
        Returns the held call's ticket (its acquire reports a slow one), if still held."""
        with self._cond:
            held = self._held.pop(slot, None)
            while slot in self._releasing:
                self._cond.wait()
        return held.ticket if held is not None else None

    def release_idle(self, now: float | None = None) -> int:
        """Give back the leases idle for ``idle`` seconds; returns how many."""
        now = time.monotonic() if now is None else now
        with self._cond:
            due = {s: h for s, h in self._held.items() if now - h.since >= self.idle}
            for slot in due:
                del self._held[slot]
            self._releasing.update(due)
        released, retry = 0, {}
        try:
            for slot, held in due.items():
                try:
                    self.give_back(held.name, slot, held.ticket)
                    released += 1
                except StoreError:
                    if now - held.since < self.lapse:
                        retry[slot] = held  # the store is away: again on the next round
        finally:
            with self._cond:
                for slot, held in retry.items():
                    self._held.setdefault(slot, held)  # unless the slot called again
                self._releasing.difference_update(due)
                self._cond.notify_all()
        return released

    def __len__(self) -> int:
        return len(self._held)

    def __post_init__(self) -> None:
        after_fork_in_child(self, HeldLeases._forked)

    def _forked(self) -> None:
        # A forked child holds none of its parent's leases, nor its condition's lock.
        self._held, self._releasing = {}, set()
        self._cond = threading.Condition()


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
        if not self._wake.is_set():
            self._wake.set()  # the thread may be waiting for a first lease

    def run(self) -> None:
        while True:
            with self._lock:
                pending = [leases for leases in self._watched if len(leases)]
            if not pending:
                self._wake.wait()
                self._wake.clear()
                continue
            for leases in pending:
                leases.release_idle()
            time.sleep(max(MIN_IDLE, min(leases.idle for leases in pending) / 2))


def _start_releaser() -> _Releaser:
    releaser = _Releaser()
    threading.Thread(target=releaser.run, name="breaker-idle-leases", daemon=True).start()
    return releaser


# One per process: a forked child starts its own thread (its parent's did not survive).
_releasers: ForkLocal[_Releaser] = ForkLocal(_start_releaser)


def _releaser() -> _Releaser:
    return _releasers.get()
