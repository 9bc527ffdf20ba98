"""Operators' view of the breakers: list them with their window, reset, force open or closed.

Each action is one store step; it starts a new generation (outcomes of calls in flight no
longer count) and is logged with the breaker, old and new state, and the reason. Processes
that refuse locally until a known time notice a reset at that time at the latest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from intent.breaker.stores.base import Action, BreakerStore, Report, Snapshot
from intent.breaker.stores.fallback import shared_state

log = logging.getLogger("intent.breaker")


@dataclass(frozen=True)
class BreakerStatus:
    """One breaker as operators see it (times are epoch seconds on the store's clock).
    ``bulkhead``: the fleet-wide limit of calls in flight (0: none), beside ``in_flight``;
    ``trips``: consecutive trips with no recovery since (the open time grows with them)."""

    name: str
    state: str
    failures: int
    calls: int
    in_flight: int
    opened_at: float | None
    until: float | None
    generation: int
    forced: str | None
    reason: str
    now: float
    bulkhead: int = 0
    trips: int = 0

    @classmethod
    def of(cls, name: str, snapshot: Snapshot) -> BreakerStatus:
        return cls(
            name=name,
            state=snapshot.state,
            failures=snapshot.failures or 0,
            calls=snapshot.calls or 0,
            in_flight=snapshot.in_flight or 0,
            opened_at=snapshot.opened_at,
            until=snapshot.until,
            generation=snapshot.generation,
            forced=snapshot.forced,
            reason=snapshot.reason,
            now=snapshot.now,
            bulkhead=snapshot.bulkhead or 0,
            trips=snapshot.trips,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CircuitAdmin:
    """Operators' actions over one store. Given the breakers' store, it reads and moves the
    shared state itself (a fallback store's Redis): the fleet's state or an error, never
    this process's private view. ``on_transition(breaker, old, new)`` hears of each state
    change an action makes (the metrics count it: intent.metrics.record_transition)."""

    def __init__(
        self,
        store: BreakerStore,
        on_transition: Callable[[str, str, str], None] | None = None,
    ):
        self.store = shared_state(store)
        self.on_transition = on_transition

    def names(self) -> list[str]:
        return self.store.names()

    def status(self, name: str) -> BreakerStatus:
        return BreakerStatus.of(name, self.store.snapshot(name))

    def list(self) -> list[BreakerStatus]:
        """Every breaker the store has seen, by name."""
        return [self.status(name) for name in self.names()]

    def reset(self, name: str, reason: str = "reset by operator") -> BreakerStatus:
        """Closed, with a clean window, and no longer forced."""
        return self._act(name, Action.RESET, reason)

    def force_open(self, name: str, reason: str) -> BreakerStatus:
        """Open until reset: every call is refused, no trials."""
        return self._act(name, Action.FORCE_OPEN, f"forced open: {reason}")

    def force_closed(self, name: str, reason: str) -> BreakerStatus:
        """Disabled until reset: every call goes through, nothing is counted."""
        return self._act(name, Action.FORCE_CLOSED, f"forced closed: {reason}")

    def _act(self, name: str, action: Action, reason: str) -> BreakerStatus:
        report: Report = self.store.transition(name, action, reason)
        transition = report.transition
        old = transition.old_state if transition else report.snapshot.state
        log.warning(
            "circuit breaker %s: %s -> %s (%s)",
            name,
            old,
            report.snapshot.state,
            reason,
            extra={
                "breaker": name,
                "old_state": old,
                "new_state": report.snapshot.state,
                "reason": reason,
                "generation": report.snapshot.generation,
            },
        )
        changed = transition is not None and transition.old_state != transition.new_state
        if changed and transition is not None and self.on_transition is not None:
            self.on_transition(name, transition.old_state, transition.new_state)
        return self.status(name)
