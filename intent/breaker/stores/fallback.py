"""Redis first, process memory while Redis is unreachable: breakers keep working through an
outage, the log says so once per interval, and the shared state resumes when Redis answers."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from intent.breaker.config import CircuitConfig
from intent.breaker.stores.base import (
    Action,
    Admission,
    BreakerStore,
    Outcome,
    Report,
    Snapshot,
    StoreUnavailable,
    Ticket,
)
from intent.breaker.stores.memory import MemoryStore
from intent.forks import after_fork_in_child
from intent.settings import CIRCUIT_FALLBACK_LOG_INTERVAL, CIRCUIT_REDIS_PROBE_INTERVAL

log = logging.getLogger("intent.breaker")

T = TypeVar("T")


class FallbackStore(BreakerStore):
    """``primary`` (Redis) while it answers; ``fallback`` (memory, same rules) while it does
    not. Down, Redis is tried again once per ``probe_interval`` (by one caller), not on every
    call; the outage is logged at most once per ``warn_interval``."""

    def __init__(
        self,
        primary: BreakerStore,
        fallback: BreakerStore | None = None,
        *,
        probe_interval: float = CIRCUIT_REDIS_PROBE_INTERVAL,
        warn_interval: float = CIRCUIT_FALLBACK_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.primary = primary
        self.fallback = fallback or MemoryStore()
        self.origin = primary.origin
        self.probe_interval = probe_interval
        self.warn_interval = warn_interval
        self._clock = clock
        self._degraded = False
        self._next_probe = 0.0
        self._last_warning = -math.inf
        self._lock = threading.Lock()
        # A lock another thread held at a fork stays held in the child: a fresh one there.
        after_fork_in_child(self, _fresh_lock)

    @property
    def degraded(self) -> bool:
        """True while breakers run on the fallback."""
        return self._degraded

    # -- the contract ----------------------------------------------------------------
    def acquire(
        self,
        name: str,
        slot: str,
        config: CircuitConfig,
        probe: bool = False,
        slow: Ticket | None = None,
    ) -> Admission:
        return self._run(lambda store: store.acquire(name, slot, config, probe, slow))

    def report(
        self, name: str, slot: str, ticket: Ticket, outcome: Outcome, config: CircuitConfig
    ) -> Report:
        if ticket.origin == self.fallback.origin:
            return self.fallback.report(name, slot, ticket, outcome, config)
        if outcome is Outcome.RELEASED:
            # A lease given back means something to the store that issued it alone: while
            # Redis is away the caller keeps it and tries again (idle.py).
            if not self._primary_due():
                raise StoreUnavailable("the breaker's shared store is unreachable")
            try:
                report = self.primary.report(name, slot, ticket, outcome, config)
            except StoreUnavailable as exc:
                self._went_down(exc)
                raise
            if self._degraded:
                self._came_back()
            return report
        # A ticket Redis issued goes back to Redis; if Redis has gone meanwhile, the fallback
        # takes the outcome as a foreign one (a failure still counts there).
        return self._run(lambda store: store.report(name, slot, ticket, outcome, config))

    def snapshot(self, name: str, config: CircuitConfig | None = None) -> Snapshot:
        return self._run(lambda store: store.snapshot(name, config))

    def transition(
        self, name: str, action: Action, reason: str, config: CircuitConfig | None = None
    ) -> Report:
        return self._run(lambda store: store.transition(name, action, reason, config))

    def names(self) -> list[str]:
        return self._run(lambda store: store.names())

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()

    # -- switching -------------------------------------------------------------------
    def _run(self, operation: Callable[[BreakerStore], T]) -> T:
        if self._primary_due():
            try:
                result = operation(self.primary)
            except StoreUnavailable as exc:
                self._went_down(exc)
            else:
                if self._degraded:
                    self._came_back()
                return result
        return operation(self.fallback)

    def _primary_due(self) -> bool:
        if not self._degraded:
            return True
        with self._lock:
            now = self._clock()
            if now < self._next_probe:
                return False
            self._next_probe = now + self.probe_interval  # this caller probes; others wait
            return True

    def _went_down(self, exc: StoreUnavailable) -> None:
        with self._lock:
            now = self._clock()
            if not self._degraded:
                self._degraded = True
                self._next_probe = now + self.probe_interval
            if now - self._last_warning < self.warn_interval:
                return
            self._last_warning = now
        log.warning(
            "circuit breaker store unreachable (%s); breakers run on in-process state and "
            "retry it every %g s",
            exc,
            self.probe_interval,
        )

    def _came_back(self) -> None:
        with self._lock:
            if not self._degraded:
                return
            self._degraded = False
        log.info("circuit breaker store reachable again; breakers use the shared state")


def shared_state(store: BreakerStore) -> BreakerStore:
    """The store holding the fleet's state: a fallback store's primary (never this process's
    private memory, which would answer for the fleet while Redis is away), else the store."""
    return store.primary if isinstance(store, FallbackStore) else store


def _fresh_lock(store: FallbackStore) -> None:
    store._lock = threading.Lock()
