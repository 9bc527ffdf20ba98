"""The store contract: a few atomic primitives over one breaker's shared state.

Each primitive is one atomic step on the store (one Lua script on Redis, one locked update
in memory) and answers with a :class:`Snapshot`, plus the :class:`Transition` when that step
moved the breaker, so exactly one caller fleet-wide learns that it performed a transition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum

from intent.breaker.config import CircuitConfig
from intent.errors import CircuitBreakerError


class StoreError(CircuitBreakerError):
    """The breaker's store failed."""


class NoSharedStore(StoreError):
    """A breaker was given no store and no Redis URL is set: its state would be this
    process's alone, and every other process would keep calling a failing service."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (connection refused, timeout): use the fallback."""


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    EXCLUDED = "excluded"  # an excluded error: neither a failure nor a success
    # A probe's answer (GET /health, a version check): it says nothing of the API the
    # breaker guards, so it counts for nothing, not even as the service answering.
    IGNORED = "ignored"
    # An answered call's lease given back by its idle caller (idle.py): what the caller's
    # next acquire would have done, no more: the service answered then, the lease ends.
    # Neither a success that clears pending failures nor a change to the counts.
    RELEASED = "released"


class TicketKind(StrEnum):
    CALL = "call"  # closed, no failures pending: only a failure (or exclusion) is reported
    PERMIT = "permit"  # closed, failures pending: the outcome is reported either way
    TRIAL = "trial"  # half-open trial: the outcome is reported either way
    BYPASS = "bypass"  # forced closed: nothing is counted or reported


class Denial(StrEnum):
    OPEN = "open"  # open until ``until``
    HALF_OPEN_FULL = "half-open-full"  # every trial slot is taken; the first lapses at ``until``
    THROTTLED = "throttled"  # failures pending and enough calls in flight to trip it
    FORCED_OPEN = "forced-open"  # an operator opened it; no known end
    PROBE_WAITS = "probe-waits"  # half-open: a probe never takes a trial's place
    BULKHEAD_FULL = "bulkhead-full"  # max_concurrent_calls calls in flight fleet-wide


class Action(StrEnum):
    """Manual moves: pybreaker's ``open()``/``half_open()``/``close()``, operators' forces."""

    OPEN = "open"
    HALF_OPEN = "half-open"
    CLOSE = "close"
    FORCE_OPEN = "force-open"
    FORCE_CLOSED = "force-closed"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change, reported only to the caller whose step performed it."""

    old_state: str
    new_state: str
    reason: str
    generation: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One breaker's state as the store saw it at ``now`` (store clock, epoch seconds).

    ``until`` is when an open breaker admits a trial call. Window counts are filled in by
    :meth:`BreakerStore.snapshot` (and by steps that computed them), else ``None``.
    ``trips``: consecutive trips with no successful recovery since (the open time grows
    with them); ``bulkhead``: the limit of calls in flight the breaker's processes last
    acquired with (0: none), ``None`` if none has yet.
    """

    state: str
    generation: int
    now: float
    until: float | None = None
    opened_at: float | None = None
    forced: str | None = None
    reason: str = ""
    suspect: bool = False
    failures: int | None = None
    calls: int | None = None
    in_flight: int | None = None
    trips: int = 0
    bulkhead: int | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted call: what its outcome report needs."""

    generation: int
    kind: TicketKind
    bucket: int
    origin: str  # the store that issued it (a fallback store routes the report by it)
    # set by the caller once the call took longer than slow_call_duration (the slow-call rate)
    slow: bool = False

    @property
    def reports_success(self) -> bool:
        return self.kind in (TicketKind.PERMIT, TicketKind.TRIAL)


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to ``acquire``: a ticket, or a denial with when to come back."""

    snapshot: Snapshot
    ticket: Ticket | None = None
    denial: Denial | None = None
    until: float | None = None
    transition: Transition | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """The answer to ``report`` and ``transition``. ``applied`` is False for a stale outcome
    (the call began under an older generation) or a store that ignored it."""

    snapshot: Snapshot
    applied: bool = True
    transition: Transition | None = None


class BreakerStore(ABC):
    """Shared breaker state. ``slot`` names one sequential caller (process and thread): its
    next ``acquire`` proves its previous call is over, which frees that call's lease."""

    origin: str

    @abstractmethod
    def acquire(
        self,
        name: str,
        slot: str,
        config: CircuitConfig,
        probe: bool = False,
        slow: Ticket | None = None,
    ) -> Admission:
        """Admit a call or refuse it; moves open to half-open once the break has passed.
        A ``probe`` is admitted only while closed (half-open: ``PROBE_WAITS``), and its
        success is reported as ``IGNORED``. ``slow``: the ticket of this slot's previous
        call when it finished slower than ``slow_call_duration`` and its success was not
        reported; it counts toward the slow-call rate in this same step (no round trip)."""

    @abstractmethod
    def report(
        self, name: str, slot: str, ticket: Ticket, outcome: Outcome, config: CircuitConfig
    ) -> Report:
        """Record a call's outcome; trips, closes or reopens the breaker when it should.
        A ``ticket.slow`` call counts toward the slow-call rate."""

    @abstractmethod
    def snapshot(self, name: str, config: CircuitConfig | None = None) -> Snapshot:
        """Read one breaker, with its window counts (read-only)."""

    @abstractmethod
    def transition(
        self, name: str, action: Action, reason: str, config: CircuitConfig | None = None
    ) -> Report:
        """Apply a manual move; every move starts a new generation."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every breaker this store has seen."""

    def close(self) -> None:  # noqa: B027  (optional hook: stores without resources keep it)
        """Release connections."""
