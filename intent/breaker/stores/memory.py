"""The store contract in process memory: the fallback while Redis is unreachable, and a
standalone store for one process (tests, the CLI without Redis). Same rules as the Lua."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import intent.breaker.policy as policy
from intent.breaker.config import CircuitConfig
from intent.breaker.policy import CLOSED, HALF_OPEN, OPEN
from intent.breaker.stores.base import (
    Action,
    Admission,
    BreakerStore,
    Denial,
    Outcome,
    Report,
    Snapshot,
    Ticket,
    TicketKind,
    Transition,
)
from intent.forks import after_fork_in_child


@dataclass
class _Circuit:
    config: CircuitConfig
    state: str = CLOSED
    generation: int = 0
    until: float | None = None
    opened_at: float | None = None
    forced: str | None = None
    reason: str = ""
    successes: int = 0
    suspect: bool = False
    suspect_since: float = 0.0
    answered: float = float("-inf")  # latest start of a call known to have ended
    failures: deque[float] = field(default_factory=deque)
    calls: dict[int, int] = field(default_factory=dict)
    slow_buckets: dict[int, int] = field(default_factory=dict)  # bucket -> finished slow
    trips: int = 0  # consecutive trips with no successful recovery since
    bulkhead: int | None = None  # the limit the last acquire came with
    # slot -> lease expiry: calls admitted with no failures pending, and half-open trials
    leases: dict[str, float] = field(default_factory=dict)
    permits: dict[str, float] = field(default_factory=dict)  # calls admitted while suspect

    def clear_window(self) -> None:
        self.failures.clear()
        self.calls.clear()
        self.slow_buckets.clear()
        self.leases.clear()
        self.permits.clear()
        self.suspect = False
        self.successes = 0

    def release(self, slot: str) -> None:
        self.leases.pop(slot, None)
        self.permits.pop(slot, None)

    def expire_leases(self, now: float) -> None:
        for leases in (self.leases, self.permits):
            for slot in [slot for slot, expiry in leases.items() if expiry <= now]:
                del leases[slot]

    def in_flight(self, now: float) -> tuple[int, float | None]:
        """Calls that count as in flight for the throttle, and when the first stops counting."""
        ends = list(self.permits.values())
        if policy.clean_calls_count(now, self.suspect_since, self.config) and self.leases:
            settled = self.suspect_since + self.config.throttle_wait
            ends += [min(expiry, settled) for expiry in self.leases.values()]
        return len(ends), min(ends, default=None)

    def answer(self, expiry: float | None) -> None:
        """A call whose lease expires at ``expiry`` is known to have ended."""
        if expiry is not None:
            self.answered = max(self.answered, policy.lease_start(expiry, self.config))

    def slow_calls(self, now: float) -> tuple[int, int, float | None]:
        """Slow unanswered calls, the other calls that count as in flight while there are
        some (unanswered clean calls, permits), and when the first of those lapses."""
        config, answered = self.config, self.answered
        slow, young = policy.slow_and_young(self.leases.values(), now, answered, config)
        slow_permits, _ = policy.slow_and_young(self.permits.values(), now, answered, config)
        ends = [
            expiry
            for expiry in self.leases.values()
            if expiry > now
            and policy.is_unanswered(policy.lease_start(expiry, config), answered)
            and not policy.is_slow(policy.lease_start(expiry, config), now, config)
        ]
        live_permits = [expiry for expiry in self.permits.values() if expiry > now]
        ends += live_permits
        busy = young + len(live_permits) - slow_permits
        return slow + slow_permits, busy, min(ends, default=None)


class MemoryStore(BreakerStore):
    """Breaker state in this process. ``clock`` gives epoch seconds (injectable for tests)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        spread: Callable[[], float] = random.random,
    ):
        self.origin = f"memory:{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._spread = spread  # a trip's draw in [0, 1) for the grown open time
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()
        # A lock another thread held at a fork stays held in the child: a fresh one there.
        after_fork_in_child(self, _fresh_lock)

    # -- the contract ----------------------------------------------------------------
    def acquire(
        self,
        name: str,
        slot: str,
        config: CircuitConfig,
        probe: bool = False,
        slow: Ticket | None = None,
    ) -> Admission:
        with self._lock:
            now = self._clock()
            circuit = self._circuit(name, config)
            circuit.bulkhead = config.max_concurrent_calls
            if circuit.forced == OPEN:
                return self._deny(circuit, now, Denial.FORCED_OPEN, None)
            if circuit.forced == CLOSED:
                return self._admit(circuit, now, TicketKind.BYPASS, 0)
            transition = None
            if circuit.state == OPEN:
                if circuit.until is not None and now < circuit.until:
                    return self._deny(circuit, now, Denial.OPEN, circuit.until)
                transition = self._move(circuit, HALF_OPEN, policy.RECOVERY_REASON, now)
            if circuit.state == CLOSED:
                circuit.answer(circuit.leases.get(slot))  # asking again: that call is over
            circuit.release(slot)  # this slot asks again: its previous call is over
            circuit.expire_leases(now)
            if circuit.state == HALF_OPEN:
                slow_trials, _ = policy.slow_and_young(
                    circuit.leases.values(), now, float("-inf"), config
                )
                if slow_trials:
                    reason = policy.slow_trial_reason(config)
                    transition = self._trip(circuit, reason, now)
                    return self._deny(circuit, now, Denial.OPEN, circuit.until, transition)
                if probe:  # its answer says nothing of the API: never a trial
                    return self._deny(circuit, now, Denial.PROBE_WAITS, now, transition)
                if len(circuit.leases) >= config.half_open_max_calls:
                    until = min(circuit.leases.values())
                    return self._deny(circuit, now, Denial.HALF_OPEN_FULL, until, transition)
                circuit.leases[slot] = now + config.half_open_timeout
                return self._admit(circuit, now, TicketKind.TRIAL, 0, transition)
            kind = TicketKind.CALL
            # this slot's previous call finished slow: counted, it may trip the rate rule
            slow_done = None
            if slow is not None and slow.origin == self.origin and self._current(circuit, slow):
                slow_done = self._count_slow(circuit, slow.bucket, now)
            slow_now, busy, busy_end = circuit.slow_calls(now)
            if slow_now and not circuit.suspect:
                circuit.suspect, circuit.suspect_since = True, now
            if circuit.suspect or slow_done is not None:
                failures = policy.failures_in_window(circuit.failures, now, config.failure_window)
                calls = policy.calls_in_window(circuit.calls, now, config.failure_window)
                done = self._slow_done(circuit, now) if slow_done is None else slow_done
                in_buckets = policy.failures_in_buckets(
                    circuit.failures, now, config.failure_window
                )
                rule = policy.trip_rule(failures, calls, config, slow_now, done, in_buckets)
                if rule is not None:
                    transition = self._trip(circuit, rule, now)
                    return self._deny(circuit, now, Denial.OPEN, circuit.until, transition)
            if circuit.suspect:
                if slow_now:  # the service stopped answering: every unanswered call counts
                    in_flight, first_end = busy, busy_end
                else:
                    in_flight, first_end = circuit.in_flight(now)
                if policy.must_throttle(failures, calls, in_flight, config, slow_now):
                    until = first_end if first_end is not None else now
                    return self._deny(circuit, now, Denial.THROTTLED, until)
                kind = TicketKind.PERMIT
            # the bulkhead: unexpired leases are the calls in flight fleet-wide (this slot's
            # previous one is released above)
            if policy.bulkhead_full(len(circuit.leases) + len(circuit.permits), config):
                return self._deny(circuit, now, Denial.BULKHEAD_FULL, now)
            bucket = policy.bucket_index(now, config.failure_window)
            circuit.calls[bucket] = circuit.calls.get(bucket, 0) + 1
            if circuit.calls[bucket] == 1:
                self._prune_buckets(circuit, now)
            leases = circuit.permits if kind is TicketKind.PERMIT else circuit.leases
            leases[slot] = now + config.half_open_timeout
            return self._admit(circuit, now, kind, bucket)

    def report(
        self, name: str, slot: str, ticket: Ticket, outcome: Outcome, config: CircuitConfig
    ) -> Report:
        with self._lock:
            now = self._clock()
            circuit = self._circuit(name, config)
            foreign = ticket.origin != self.origin
            if outcome is Outcome.RELEASED:
                # An idle caller's answered call, whatever moved since: as its next acquire
                # would, the lease ends and the service is known to have answered then.
                transition = None
                if not foreign:
                    circuit.answer(circuit.permits.get(slot) or circuit.leases.get(slot))
                    circuit.release(slot)
                    if ticket.slow and self._current(circuit, ticket):
                        transition = self._slow_finished(circuit, ticket.bucket, now)
                return Report(
                    self._snapshot(circuit, now), applied=not foreign, transition=transition
                )
            if foreign:
                # Issued by another store (Redis, before it went away): its generation means
                # nothing here, but a failure it saw still counts while this store is closed.
                if outcome is not Outcome.FAILURE or circuit.state != CLOSED or circuit.forced:
                    return Report(self._snapshot(circuit, now), applied=False)
            elif ticket.generation != circuit.generation or circuit.forced:
                return Report(self._snapshot(circuit, now), applied=False)
            else:
                if outcome not in (Outcome.FAILURE, Outcome.IGNORED):  # the service answered
                    circuit.answer(circuit.permits.get(slot) or circuit.leases.get(slot))
                circuit.release(slot)
            transition = None
            if circuit.state == CLOSED:
                if outcome in (Outcome.EXCLUDED, Outcome.IGNORED):
                    if ticket.bucket in circuit.calls:
                        circuit.calls[ticket.bucket] -= 1
                        if circuit.calls[ticket.bucket] <= 0:
                            del circuit.calls[ticket.bucket]
                elif outcome is Outcome.SUCCESS:
                    if ticket.slow and not foreign:
                        transition = self._slow_finished(circuit, ticket.bucket, now)
                    if transition is None and circuit.suspect:
                        # the service answers again; permits still out count as plain calls
                        circuit.suspect = False
                        circuit.permits.clear()
                else:
                    slow_bucket = ticket.bucket if ticket.slow and not foreign else None
                    transition = self._record_failure(circuit, now, foreign, slow_bucket)
            elif circuit.state == HALF_OPEN and outcome is not Outcome.IGNORED:
                if outcome is Outcome.SUCCESS:
                    circuit.successes += 1
                    if policy.trials_close(circuit.successes, config):
                        reason = policy.close_reason(circuit.successes)
                        transition = self._move(circuit, CLOSED, reason, now)
                elif outcome is Outcome.FAILURE:
                    transition = self._trip(circuit, policy.TRIAL_FAILED_REASON, now)
            return Report(self._snapshot(circuit, now), applied=True, transition=transition)

    def snapshot(self, name: str, config: CircuitConfig | None = None) -> Snapshot:
        with self._lock:
            now = self._clock()
            circuit = self._circuits.get(name)
            if circuit is None:
                return Snapshot(CLOSED, 0, now, failures=0, calls=0, in_flight=0)
            return self._snapshot(circuit, now, counts=True, config=config)

    def transition(
        self, name: str, action: Action, reason: str, config: CircuitConfig | None = None
    ) -> Report:
        with self._lock:
            now = self._clock()
            circuit = self._circuit(name, config)
            old_state, old_forced = circuit.state, circuit.forced
            circuit.forced = None
            if action is Action.OPEN:
                self._trip(circuit, reason, now, counts=False)
            elif action is Action.FORCE_OPEN:
                self._trip(circuit, reason, now, counts=False)
                circuit.forced, circuit.until = OPEN, None
            elif action is Action.HALF_OPEN:
                self._move(circuit, HALF_OPEN, reason, now)
            else:
                self._move(circuit, CLOSED, reason, now)
                if action is Action.FORCE_CLOSED:
                    circuit.forced = CLOSED
            transition = None
            if (old_state, old_forced) != (circuit.state, circuit.forced):
                transition = Transition(old_state, circuit.state, reason, circuit.generation)
            return Report(self._snapshot(circuit, now), applied=True, transition=transition)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._circuits)

    # -- steps -----------------------------------------------------------------------
    def _circuit(self, name: str, config: CircuitConfig | None) -> _Circuit:
        circuit = self._circuits.get(name)
        if circuit is None:
            circuit = self._circuits[name] = _Circuit(config or CircuitConfig())
        elif config is not None:
            circuit.config = config
        return circuit

    @staticmethod
    def _current(circuit: _Circuit, ticket: Ticket) -> bool:
        """A closed breaker's ticket of its current generation (a slow call it counts)."""
        return (
            circuit.state == CLOSED
            and circuit.forced is None
            and ticket.generation == circuit.generation
        )

    def _count_slow(self, circuit: _Circuit, bucket: int, now: float) -> int:
        """A call that finished slow, in its own bucket; the window's slow calls."""
        circuit.slow_buckets[bucket] = circuit.slow_buckets.get(bucket, 0) + 1
        oldest = policy.oldest_live_bucket(now, circuit.config.failure_window)
        for index in [index for index in circuit.slow_buckets if index < oldest]:
            del circuit.slow_buckets[index]
        return self._slow_done(circuit, now)

    @staticmethod
    def _slow_done(circuit: _Circuit, now: float) -> int:
        return policy.calls_in_window(circuit.slow_buckets, now, circuit.config.failure_window)

    def _slow_finished(self, circuit: _Circuit, bucket: int, now: float) -> Transition | None:
        """A reported call that finished slow: counted, it may trip the slow-call rate."""
        config = circuit.config
        slow_done = self._count_slow(circuit, bucket, now)
        failures = policy.failures_in_window(circuit.failures, now, config.failure_window)
        calls = policy.calls_in_window(circuit.calls, now, config.failure_window)
        in_buckets = policy.failures_in_buckets(circuit.failures, now, config.failure_window)
        reason = policy.trip_rule(failures, calls, config, 0, slow_done, in_buckets)
        return self._trip(circuit, reason, now) if reason is not None else None

    def _record_failure(
        self, circuit: _Circuit, now: float, foreign: bool, slow_bucket: int | None = None
    ) -> Transition | None:
        config = circuit.config
        circuit.failures.append(now)
        while circuit.failures and circuit.failures[0] <= now - config.failure_window:
            circuit.failures.popleft()
        if not circuit.suspect:
            circuit.suspect, circuit.suspect_since = True, now
        if foreign:  # a call this store never counted: count it now
            bucket = policy.bucket_index(now, config.failure_window)
            circuit.calls[bucket] = circuit.calls.get(bucket, 0) + 1
        failures = len(circuit.failures)
        calls = policy.calls_in_window(circuit.calls, now, config.failure_window)
        if slow_bucket is not None:
            slow_done = self._count_slow(circuit, slow_bucket, now)
        else:
            slow_done = self._slow_done(circuit, now)
        in_buckets = policy.failures_in_buckets(circuit.failures, now, config.failure_window)
        reason = policy.trip_rule(failures, calls, config, 0, slow_done, in_buckets)
        return self._trip(circuit, reason, now) if reason is not None else None

    def _trip(self, circuit: _Circuit, reason: str, now: float, counts: bool = True) -> Transition:
        """Open: for the grown break duration when a rule tripped it (``counts``), for the
        recovery timeout when an operator opened it."""
        trips = circuit.trips + 1 if counts else circuit.trips
        transition = self._move(circuit, OPEN, reason, now)
        circuit.trips = trips
        duration = circuit.config.recovery_timeout
        if counts:
            duration = policy.break_duration(trips, circuit.config, self._spread())
        circuit.opened_at = now
        circuit.until = now + duration
        return transition

    def _move(self, circuit: _Circuit, state: str, reason: str, now: float) -> Transition:
        """Every move starts a new generation and a clean window."""
        old = circuit.state
        circuit.state = state
        circuit.generation += 1
        circuit.reason = reason
        circuit.clear_window()
        if state != OPEN:
            circuit.until = None
        if state == CLOSED:  # a successful recovery: the next trip opens briefly again
            circuit.opened_at, circuit.trips = None, 0
        return Transition(old, state, reason, circuit.generation)

    @staticmethod
    def _prune_buckets(circuit: _Circuit, now: float) -> None:
        oldest = policy.oldest_live_bucket(now, circuit.config.failure_window)
        for index in [index for index in circuit.calls if index < oldest]:
            del circuit.calls[index]

    def _snapshot(
        self,
        circuit: _Circuit,
        now: float,
        counts: bool = False,
        config: CircuitConfig | None = None,
    ) -> Snapshot:
        failures = calls = in_flight = None
        if counts:
            window = (config or circuit.config).failure_window
            failures = policy.failures_in_window(circuit.failures, now, window)
            calls = policy.calls_in_window(circuit.calls, now, window)
            leases = [*circuit.leases.values(), *circuit.permits.values()]
            in_flight = sum(1 for expiry in leases if expiry > now)
        return Snapshot(
            state=circuit.state,
            generation=circuit.generation,
            now=now,
            until=circuit.until,
            opened_at=circuit.opened_at,
            forced=circuit.forced,
            reason=circuit.reason,
            suspect=circuit.suspect,
            failures=failures,
            calls=calls,
            in_flight=in_flight,
            trips=circuit.trips,
            bulkhead=circuit.bulkhead,
        )

    def _admit(
        self,
        circuit: _Circuit,
        now: float,
        kind: TicketKind,
        bucket: int,
        transition: Transition | None = None,
    ) -> Admission:
        ticket = Ticket(circuit.generation, kind, bucket, self.origin)
        return Admission(self._snapshot(circuit, now), ticket=ticket, transition=transition)

    def _deny(
        self,
        circuit: _Circuit,
        now: float,
        denial: Denial,
        until: float | None,
        transition: Transition | None = None,
    ) -> Admission:
        return Admission(
            self._snapshot(circuit, now), denial=denial, until=until, transition=transition
        )


def _fresh_lock(store: MemoryStore) -> None:
    store._lock = threading.Lock()
