"""The circuit breaker with pybreaker's public API, over a shared store.

Closed and healthy, a call costs one store round trip (``acquire``, before the call; a success
is not reported). An open breaker refuses locally, with no round trip, until the time it
knows trials start. Nothing is locked across the guarded call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, Protocol, TypeVar

from intent import tracing
from intent.breaker.config import CircuitConfig, CircuitContext
from intent.breaker.idle import MIN_IDLE, HeldLeases
from intent.breaker.policy import CLOSED, HALF_OPEN, OPEN, is_slow_call
from intent.breaker.registry import default_store
from intent.breaker.stores.base import (
    Action,
    BreakerStore,
    Denial,
    Outcome,
    Report,
    Snapshot,
    StoreError,
    Ticket,
    TicketKind,
    Transition,
)
from intent.errors import (
    BulkheadFullError,
    CircuitBreakerError,
    CircuitOpenError,
    ProbeWaits,
    ServiceRequestError,
    ValidationError,
)
from intent.forks import ForkLocal

log = logging.getLogger("intent.breaker")

P = ParamSpec("P")
T = TypeVar("T")

ExcludeRule = type[BaseException] | Callable[[BaseException], bool]

# Permanent errors say nothing about the service's health: the guide's "excluded outcomes".
PERMANENT_ERRORS: tuple[ExcludeRule, ...] = (ValidationError, ServiceRequestError)

# While throttled, a call polls for the verdict of the calls in flight: first soon (a dead
# service fails fast), then less often.
THROTTLE_POLL_FIRST = 0.005
THROTTLE_POLL_MAX = 0.05


class CircuitState:
    """A state as listeners receive it: like pybreaker's state objects, it has a ``name``
    ('closed', 'open', 'half-open')."""

    __slots__ = ("generation", "name", "reason")

    def __init__(self, name: str, generation: int = 0, reason: str = ""):
        self.name = name
        self.generation = generation
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CircuitState):
            return self.name == other.name
        return self.name == other if isinstance(other, str) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"CircuitState({self.name!r}, generation={self.generation})"


class Listener(Protocol):
    """What a listener provides: pybreaker's ``CircuitBreakerListener`` fits."""

    def before_call(self, cb: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...

    def failure(self, cb: Any, exc: BaseException) -> None: ...

    def success(self, cb: Any) -> None: ...

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None: ...


class CircuitBreakerListener:
    """Base class for listeners, with pybreaker's callbacks (each does nothing here)."""

    def before_call(
        self, cb: CircuitBreaker, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """Called before the breaker calls ``func``."""

    def failure(self, cb: CircuitBreaker, exc: BaseException) -> None:
        """Called when a guarded call failed (excluded errors are not failures)."""

    def success(self, cb: CircuitBreaker) -> None:
        """Called when a guarded call succeeded."""

    def state_change(
        self, cb: CircuitBreaker, old_state: CircuitState | None, new_state: CircuitState
    ) -> None:
        """Called in the one process whose store step performed the transition."""


class TransitionListener(CircuitBreakerListener):
    """Hands each state change to ``on_transition(breaker, old, new)`` (state names), as
    :class:`~intent.breaker.view.CircuitAdmin` does for operators' actions: an observer
    such as the metrics plugs in a callable, and the breaker imports nothing of it."""

    def __init__(self, on_transition: Callable[[str, str, str], None]):
        self.on_transition = on_transition

    def state_change(
        self, cb: CircuitBreaker, old_state: CircuitState | None, new_state: CircuitState
    ) -> None:
        old, new = str(old_state), str(new_state)
        if old != new:
            self.on_transition(cb.name, old, new)


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A refusal this process repeats without asking the store, while the store's clock
    (estimated from ``store_now`` seen at ``seen_at`` on the local monotonic clock) is
    before ``refuse_until``. ``until`` is what the error reports."""

    refuse_until: float
    until: float | None
    store_now: float
    seen_at: float


class CircuitBreaker:
    """A circuit breaker shared by every process that uses the same store and name.

    ``CircuitBreaker("context-service", CircuitConfig(...))`` as in the guide; pybreaker's
    ``fail_max``, ``reset_timeout`` and ``success_threshold`` keywords override the config.
    Without ``store``, the process-wide store from settings is used (Redis with an in-memory
    fallback, or memory alone when no Redis URL is set).
    """

    def __init__(
        self,
        name: str,
        config: CircuitConfig | None = None,
        *,
        store: BreakerStore | None = None,
        exclude: Iterable[ExcludeRule] | None = None,
        listeners: Sequence[Listener] | None = None,
        fail_max: int | None = None,
        reset_timeout: float | None = None,
        success_threshold: int | None = None,
        throw_new_error_on_trip: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        config = config or CircuitConfig()
        overrides: dict[str, Any] = {}
        if fail_max is not None:
            overrides["failure_threshold"] = fail_max
        if reset_timeout is not None:
            overrides["recovery_timeout"] = reset_timeout
        if success_threshold is not None:
            overrides["success_threshold"] = success_threshold
        self.config = replace(config, **overrides) if overrides else config
        self._name = name
        self._store = store
        # Given no store: the process's settings-built one, asked again in a forked child.
        self._process_store: ForkLocal[BreakerStore] = ForkLocal(default_store)
        self._excluded: list[ExcludeRule] = list(PERMANENT_ERRORS if exclude is None else exclude)
        self._listeners: tuple[Listener, ...] = tuple(listeners or ())
        # pybreaker raises its own error from the call that trips the breaker; here the call's
        # own error is raised by default (it is a real downstream failure, and the task layer
        # retries it as one); the next call meets the open breaker.
        self.throw_new_error_on_trip = throw_new_error_on_trip
        self._clock = clock
        self._sleep = sleep
        self._instance = uuid.uuid4().hex[:12]
        self._refusal: _Refusal | None = None
        self._lock = threading.Lock()  # guards listener and exclusion edits only
        # Answered calls' leases, given back if their caller makes no next call (idle.py).
        # Under a bulkhead a held lease takes a slot of the fleet's limit: given back soon.
        idle = self.config.slow_call_duration / 4
        if self.config.max_concurrent_calls:
            idle = MIN_IDLE
        self._held = HeldLeases(
            idle=max(MIN_IDLE, idle),
            lapse=self.config.half_open_timeout,
            give_back=self._give_back,
        )

    # -- identity and configuration (pybreaker's names) ---------------------------------
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._name = name
        self._refusal = None

    @property
    def store(self) -> BreakerStore:
        if self._store is not None:
            return self._store
        return self._process_store.get()

    @property
    def fail_max(self) -> int:
        return self.config.failure_threshold

    @fail_max.setter
    def fail_max(self, number: int) -> None:
        self.config = replace(self.config, failure_threshold=number)

    @property
    def reset_timeout(self) -> float:
        return self.config.recovery_timeout

    @reset_timeout.setter
    def reset_timeout(self, timeout: float) -> None:
        self.config = replace(self.config, recovery_timeout=timeout)

    @property
    def success_threshold(self) -> int:
        return self.config.success_threshold

    @success_threshold.setter
    def success_threshold(self, threshold: int) -> None:
        self.config = replace(self.config, success_threshold=threshold)

    # -- state (each read is one store round trip) --------------------------------------
    def snapshot(self) -> Snapshot:
        """The shared state with the window's counts."""
        return self.store.snapshot(self.name, self.config)

    @property
    def current_state(self) -> str:
        """'closed', 'open' or 'half-open', as the store holds it."""
        return self.snapshot().state

    @property
    def state(self) -> CircuitState:
        snapshot = self.snapshot()
        return CircuitState(snapshot.state, snapshot.generation, snapshot.reason)

    @property
    def fail_counter(self) -> int:
        """Failures in the current window (pybreaker: consecutive failures)."""
        return self.snapshot().failures or 0

    def open(self) -> bool:
        """Open the breaker for ``recovery_timeout``; returns ``throw_new_error_on_trip``."""
        self._move(Action.OPEN, "opened by open()")
        return self.throw_new_error_on_trip

    def half_open(self) -> None:
        self._move(Action.HALF_OPEN, "half-opened by half_open()")

    def close(self) -> None:
        self._move(Action.CLOSE, "closed by close()")

    def _move(self, action: Action, reason: str) -> Report:
        report = self.store.transition(self.name, action, reason, self.config)
        self._refusal = None
        self._learn(report.snapshot)
        if report.transition is not None:
            self._announce(report.transition)
        return report

    # -- exclusions ----------------------------------------------------------------------
    @property
    def excluded_exceptions(self) -> tuple[ExcludeRule, ...]:
        return tuple(self._excluded)

    def add_excluded_exception(self, exception: ExcludeRule) -> None:
        with self._lock:
            self._excluded = [*self._excluded, exception]

    def add_excluded_exceptions(self, *exceptions: ExcludeRule) -> None:
        for exception in exceptions:
            self.add_excluded_exception(exception)

    def remove_excluded_exception(self, exception: ExcludeRule) -> None:
        with self._lock:
            rules = list(self._excluded)
            rules.remove(exception)
            self._excluded = rules

    def is_system_error(self, exception: BaseException) -> bool:
        """Whether ``exception`` says the service is unwell (pybreaker's rule). Another
        breaker's refusal never does: breaker rejections are not downstream failures."""
        if isinstance(exception, CircuitBreakerError):
            return False
        for rule in self._excluded:
            if isinstance(rule, type):
                if isinstance(exception, rule):
                    return False
            elif rule(exception):
                return False
        return True

    # -- listeners -----------------------------------------------------------------------
    @property
    def listeners(self) -> tuple[Listener, ...]:
        return self._listeners

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def add_listeners(self, *listeners: Listener) -> None:
        for listener in listeners:
            self.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            remaining = list(self._listeners)
            remaining.remove(listener)
            self._listeners = tuple(remaining)

    # -- calling -------------------------------------------------------------------------
    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` if the breaker admits it; raises :class:`CircuitOpenError` if not."""
        return self._guarded(func, None, args, kwargs)

    def call_with_context(
        self, func: Callable[..., T], context: CircuitContext, *args: Any, **kwargs: Any
    ) -> T:
        """``call``, with the guide's description of the call for the log lines."""
        return self._guarded(func, context, args, kwargs)

    def probe(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a health or version probe of the guarded service (``GET /health``).

        Admitted only while the breaker is closed: half-open, a probe never takes a trial's
        place, since its answer says nothing of the API the trial must test. A probe that
        fails counts as a failure (a dead host trips the breaker), and one that answers
        counts for nothing: it neither dilutes the failure rate nor shows the service
        answering, so an API that hangs or fails behind a healthy ``/health`` still trips."""
        ticket = self._admit(None, probe=True)
        self._notify("before_call", func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, Exception) and self.is_system_error(exc):
                self._settle_error(ticket, exc, None)
            else:
                self._report(ticket, Outcome.IGNORED, None)
            raise
        self._report(ticket, Outcome.IGNORED, None)
        return result

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Guard a ``with`` block like a call (pybreaker's ``calling()``)."""
        ticket = self._admit(None)
        self._notify("before_call", _block)
        started = self._started()
        try:
            yield
        except BaseException as exc:
            self._settle_error(self._timed(ticket, started), exc, None)
            raise
        self._settle_success(self._timed(ticket, started), None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """As a decorator (``@breaker``, ``@breaker()``), as pybreaker; or the guide's
        ``breaker(func, context, *args, **kwargs)``, which calls ``func``."""
        kwargs.pop("__pybreaker_call_async", None)
        if len(args) >= 2 and isinstance(args[1], CircuitContext):
            return self.call_with_context(args[0], args[1], *args[2:], **kwargs)
        if not args and not kwargs:
            return self._decorate
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return self._decorate(args[0])
        raise TypeError("use @breaker, @breaker(), or breaker(func, CircuitContext(...), ...)")

    def _decorate(self, func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(func, *args, **kwargs)

        return guarded

    def _guarded(
        self,
        func: Callable[..., T],
        context: CircuitContext | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        ticket = self._admit(context)
        self._notify("before_call", func, *args, **kwargs)
        started = self._started()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle_error(self._timed(ticket, started), exc, context)
            raise
        self._settle_success(self._timed(ticket, started), context)
        return result

    def _started(self) -> float | None:
        """When the guarded call starts, if its duration matters (the slow-call rate)."""
        return self._clock() if self.config.slow_call_rate_threshold else None

    def _timed(self, ticket: Ticket, started: float | None) -> Ticket:
        """The ticket, marked slow if the call outlasted the slow-call duration (its
        report, or the slot's next acquire, counts it toward the slow-call rate)."""
        if started is not None and is_slow_call(self._clock() - started, self.config):
            return replace(ticket, slow=True)
        return ticket

    # -- admission -----------------------------------------------------------------------
    def _admit(self, context: CircuitContext | None, probe: bool = False) -> Ticket:
        refusal = self._refusal
        if refusal is not None:
            store_now = refusal.store_now + (self._clock() - refusal.seen_at)
            if store_now < refusal.refuse_until:
                self._rejected(refusal.until, "remembered")
                raise CircuitOpenError(self.name, refusal.until)
            self._refusal = None
        # This acquire frees the slot's previous lease; a previous call that finished slow
        # (its success unreported) is counted by it.
        previous = self._held.take(self._slot())
        slow = previous if previous is not None and previous.slow else None
        waits = {Denial.THROTTLED: self.config.throttle_wait}
        waits[Denial.BULKHEAD_FULL] = self.config.bulkhead_wait
        waited, pause = 0.0, THROTTLE_POLL_FIRST
        while True:
            admission = self.store.acquire(self.name, self._slot(), self.config, probe, slow)
            slow = None  # counted once
            if admission.transition is not None:
                self._announce(admission.transition, context)
            if admission.ticket is not None:
                return admission.ticket
            # Throttled, or the bulkhead full: the calls in flight end soon; ask again.
            wait = waits.get(admission.denial, 0.0) if admission.denial else 0.0
            if waited < wait:
                pause = min(pause, wait - waited)
                self._sleep(pause)
                waited += pause
                pause = min(pause * 2, THROTTLE_POLL_MAX)
                continue
            if admission.denial is Denial.BULKHEAD_FULL:
                self._rejected(admission.until, str(admission.denial))
                raise BulkheadFullError(self.name, self.config.max_concurrent_calls)
            self._remember_refusal(admission.snapshot, admission.denial, admission.until)
            denial = admission.denial
            self._rejected(admission.until, str(denial) if denial is not None else "refused")
            if denial is Denial.PROBE_WAITS:
                raise ProbeWaits(self.name, admission.until)
            raise CircuitOpenError(self.name, admission.until)

    def _rejected(self, until: float | None, denial: str) -> None:
        # ``until`` is on the store's clock (epoch seconds with the Redis store).
        tracing.event("breaker.rejected", service=self.name, until=until, denial=denial)

    def _remember_refusal(
        self, snapshot: Snapshot, denial: Denial | None, until: float | None
    ) -> None:
        if denial in (Denial.OPEN, Denial.HALF_OPEN_FULL, Denial.FORCED_OPEN):
            # Until the known end (an open breaker's trials), but never longer than the
            # recheck interval: a trial may close the breaker any moment, and an operator
            # may reset, close or lift a force, which every process then sees within it.
            refuse_until = snapshot.now + self.config.recheck_interval
            if until is not None:
                refuse_until = min(refuse_until, until)
        else:
            return  # throttling ends with the calls in flight: never cached
        self._refusal = _Refusal(refuse_until, until, snapshot.now, self._clock())

    def _learn(self, snapshot: Snapshot) -> None:
        """After a report or a move: an open breaker is refused locally from now on."""
        if snapshot.state == OPEN and snapshot.forced is None and snapshot.until is not None:
            self._remember_refusal(snapshot, Denial.OPEN, snapshot.until)
        elif snapshot.forced == OPEN:
            self._remember_refusal(snapshot, Denial.FORCED_OPEN, None)

    def _slot(self) -> str:
        # One sequential caller: its next acquire frees its previous call's lease. The pid
        # keeps forked children (prefork) apart; gevent's patched get_ident names greenlets.
        return f"{self._instance}:{os.getpid()}:{threading.get_ident()}"

    # -- outcomes ------------------------------------------------------------------------
    def _settle_success(self, ticket: Ticket, context: CircuitContext | None) -> None:
        if ticket.reports_success:
            self._report(ticket, Outcome.SUCCESS, context)
        elif ticket.kind is not TicketKind.BYPASS:
            self._held.hold(self.name, self._slot(), ticket)  # freed by the next acquire
        for listener in self._listeners:
            self._safely(listener.success, self)

    def _settle_error(
        self, ticket: Ticket, exc: BaseException, context: CircuitContext | None
    ) -> None:
        # KeyboardInterrupt, SystemExit and the like stop the caller, not the service.
        if isinstance(exc, Exception) and self.is_system_error(exc):
            report = self._report(ticket, Outcome.FAILURE, context)
            for listener in self._listeners:
                self._safely(listener.failure, self, exc)
            if (
                self.throw_new_error_on_trip
                and report is not None
                and report.transition is not None
                and report.snapshot.state == OPEN
            ):
                raise CircuitOpenError(self.name, report.snapshot.until) from exc
        else:
            self._report(ticket, Outcome.EXCLUDED, context)

    def _give_back(self, name: str, slot: str, ticket: Ticket) -> None:
        """An idle caller's answered call: its lease ends (idle.py). A slow call it carries
        may trip the breaker (the slow-call rate): that transition is this process's to
        announce, as any other it performs."""
        report = self.store.report(name, slot, ticket, Outcome.RELEASED, self.config)
        if name != self.name:  # renamed since the call: the transition is the old name's
            return
        self._learn(report.snapshot)
        if report.transition is not None:
            self._announce(report.transition)

    def _report(
        self, ticket: Ticket, outcome: Outcome, context: CircuitContext | None
    ) -> Report | None:
        if ticket.kind is TicketKind.BYPASS:
            return None
        try:
            report = self.store.report(self.name, self._slot(), ticket, outcome, self.config)
        except StoreError as exc:
            # The call's own result matters more than its bookkeeping.
            log.warning("circuit breaker %s: outcome not recorded: %s", self.name, exc)
            return None
        self._learn(report.snapshot)
        if report.transition is not None:
            self._announce(report.transition, context)
        return report

    # -- notification --------------------------------------------------------------------
    def _announce(self, transition: Transition, context: CircuitContext | None = None) -> None:
        """Log and notify a transition this process performed (exactly one per transition)."""
        level = logging.WARNING if transition.new_state == OPEN else logging.INFO
        log.log(
            level,
            "circuit breaker %s: %s -> %s (%s)%s",
            self.name,
            transition.old_state,
            transition.new_state,
            transition.reason,
            f" during {context}" if context else "",
            extra={
                "breaker": self.name,
                "old_state": transition.old_state,
                "new_state": transition.new_state,
                "reason": transition.reason,
                "generation": transition.generation,
            },
        )
        if transition.old_state == transition.new_state:
            return  # a force that kept the state: logged, but no state change to report
        tracing.event(
            "breaker.transition",
            breaker=self.name,
            from_state=transition.old_state,
            to_state=transition.new_state,
            reason=transition.reason,
        )
        old = CircuitState(transition.old_state)
        new = CircuitState(transition.new_state, transition.generation, transition.reason)
        for listener in self._listeners:
            self._safely(listener.state_change, self, old, new)

    def _notify(self, event: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        for listener in self._listeners:
            self._safely(getattr(listener, event), self, func, *args, **kwargs)

    def _safely(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # Observers log their own failures rather than failing the call.
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("circuit breaker %s: listener %r failed", self.name, callback)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self.config!r})"


def _block() -> None:
    """Stands for the guarded ``with`` block in ``before_call`` (pybreaker does the same)."""


__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "PERMANENT_ERRORS",
    "CircuitBreaker",
    "CircuitBreakerListener",
    "CircuitState",
    "ExcludeRule",
    "Listener",
    "TransitionListener",
]
