"""The in-memory store's state machine on a fake clock: windowed trips, leases, throttling,
generations, forced states. The same rules run as Lua in tests/integration."""

from __future__ import annotations

import pytest

from intent.breaker import (
    CircuitConfig,
    MemoryStore,
    policy,
)
from intent.breaker.stores import (
    Action,
    Denial,
    Outcome,
    Ticket,
    TicketKind,
)
from tests.helpers import FakeClock

CONFIG = CircuitConfig(
    failure_threshold=3,
    min_throughput=3,
    recovery_timeout=10.0,
    half_open_timeout=5.0,
    failure_window=60.0,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def admit(store: MemoryStore, slot: str, config: CircuitConfig = CONFIG) -> Ticket:
    admission = store.acquire("svc", slot, config)
    assert admission.ticket is not None, admission
    return admission.ticket


def fail(store: MemoryStore, slot: str, config: CircuitConfig = CONFIG) -> None:
    store.report("svc", slot, admit(store, slot, config), Outcome.FAILURE, config)


def test_a_fresh_breaker_is_closed_and_admits(store: MemoryStore) -> None:
    ticket = admit(store, "a")
    assert ticket.kind is TicketKind.CALL
    assert not ticket.reports_success
    snapshot = store.snapshot("svc")
    assert (snapshot.state, snapshot.generation, snapshot.calls, snapshot.in_flight) == (
        "closed",
        0,
        1,
        1,
    )


def test_trips_once_on_the_threshold(store: MemoryStore, clock: FakeClock) -> None:
    tickets = [admit(store, slot) for slot in "abcde"]  # five calls in flight together
    transitions = []
    for slot, ticket in zip("abcde", tickets, strict=True):
        report = store.report("svc", slot, ticket, Outcome.FAILURE, CONFIG)
        if report.transition:
            transitions.append(report.transition)
        if slot in "de":
            assert not report.applied  # began before the trip: stale
    assert [(t.old_state, t.new_state) for t in transitions] == [("closed", "open")]
    assert transitions[0].reason == "3 failures in the last 60 s (5 calls)"
    snapshot = store.snapshot("svc")
    assert snapshot.state == "open"
    assert snapshot.until == clock.now + CONFIG.recovery_timeout
    assert snapshot.opened_at == clock.now


def test_open_refuses_until_the_recovery_timeout(store: MemoryStore, clock: FakeClock) -> None:
    for slot in "abc":
        fail(store, slot)
    until = store.snapshot("svc").until
    clock.advance(9.9)
    admission = store.acquire("svc", "z", CONFIG)
    assert admission.denial is Denial.OPEN
    assert admission.until == until


def test_never_trips_below_the_minimum_throughput(store: MemoryStore) -> None:
    config = CircuitConfig(failure_threshold=3, min_throughput=10, failure_window=60)
    for _ in range(9):
        fail(store, "a", config)
    snapshot = store.snapshot("svc", config)
    assert (snapshot.state, snapshot.failures, snapshot.calls) == ("closed", 9, 9)
    fail(store, "a", config)  # the tenth call: now there is enough throughput to judge
    assert store.snapshot("svc").state == "open"


def test_failures_older_than_the_window_do_not_count(store: MemoryStore, clock: FakeClock) -> None:
    config = CircuitConfig(failure_threshold=3, min_throughput=1, failure_window=10)
    fail(store, "a", config)
    fail(store, "a", config)
    clock.advance(10.5)
    fail(store, "a", config)
    snapshot = store.snapshot("svc", config)
    assert (snapshot.state, snapshot.failures) == ("closed", 1)


def test_excluded_outcomes_count_neither_as_failure_nor_as_call(store: MemoryStore) -> None:
    for _ in range(5):
        ticket = admit(store, "a")
        store.report("svc", "a", ticket, Outcome.EXCLUDED, CONFIG)
    snapshot = store.snapshot("svc")
    assert (snapshot.state, snapshot.failures, snapshot.calls) == ("closed", 0, 0)


def test_half_open_admits_the_configured_trials_then_closes(
    store: MemoryStore, clock: FakeClock
) -> None:
    config = CircuitConfig(
        failure_threshold=1,
        min_throughput=1,
        recovery_timeout=10,
        half_open_timeout=5,
        half_open_max_calls=2,
        success_threshold=2,
    )
    fail(store, "a", config)
    clock.advance(10)
    first = store.acquire("svc", "a", config)
    assert first.transition is not None
    assert (first.transition.old_state, first.transition.new_state) == ("open", "half-open")
    second = store.acquire("svc", "b", config)
    assert second.transition is None  # only the first caller moved it
    third = store.acquire("svc", "c", config)
    assert third.denial is Denial.HALF_OPEN_FULL
    assert third.until == clock.now + 5
    assert first.ticket and second.ticket
    assert first.ticket.kind is TicketKind.TRIAL
    report = store.report("svc", "a", first.ticket, Outcome.SUCCESS, config)
    assert report.transition is None  # one success of the two needed
    report = store.report("svc", "b", second.ticket, Outcome.SUCCESS, config)
    assert report.transition is not None
    assert report.transition.new_state == "closed"
    assert report.transition.reason == "2 trial calls succeeded"


def test_a_trial_failure_reopens(store: MemoryStore, clock: FakeClock) -> None:
    # the default break does not grow: the reopen lasts the recovery timeout again
    config = CircuitConfig(failure_threshold=1, min_throughput=1, recovery_timeout=10)
    fail(store, "a", config)
    clock.advance(10)
    ticket = admit(store, "a", config)
    report = store.report("svc", "a", ticket, Outcome.FAILURE, config)
    assert report.transition is not None
    assert (report.transition.old_state, report.transition.new_state) == ("half-open", "open")
    assert report.snapshot.until == clock.now + 10


def test_a_trial_lease_lapses_after_the_half_open_timeout(
    store: MemoryStore, clock: FakeClock
) -> None:
    config = CircuitConfig(
        failure_threshold=1, min_throughput=1, recovery_timeout=10, half_open_timeout=5
    )
    fail(store, "a", config)
    clock.advance(10)
    admit(store, "dead-worker", config)  # never reports
    clock.advance(4.9)
    assert store.acquire("svc", "b", config).denial is Denial.HALF_OPEN_FULL
    clock.advance(0.1)
    assert admit(store, "b", config).kind is TicketKind.TRIAL


def test_an_outcome_from_an_older_generation_changes_nothing(store: MemoryStore) -> None:
    old = admit(store, "slow")
    store.transition("svc", Action.RESET, "operator", CONFIG)
    for _ in range(2):
        fail(store, "a")
    report = store.report("svc", "slow", old, Outcome.FAILURE, CONFIG)
    assert not report.applied
    snapshot = store.snapshot("svc")
    assert (snapshot.state, snapshot.failures) == ("closed", 2)


def test_throttles_while_failures_pend_and_calls_in_flight_could_trip_it(
    store: MemoryStore, clock: FakeClock
) -> None:
    a, _b = admit(store, "a"), admit(store, "b")
    store.report("svc", "a", a, Outcome.FAILURE, CONFIG)  # 1 failure, b in flight
    c = admit(store, "c")  # 1 + 1 in flight < 3
    assert c.kind is TicketKind.PERMIT and c.reports_success
    denied = store.acquire("svc", "d", CONFIG)  # 1 + 2 in flight: they could trip it
    assert denied.denial is Denial.THROTTLED
    # b was in flight before the failure: it counts for throttle_wait after it
    assert denied.until == clock.now + CONFIG.throttle_wait
    store.report("svc", "c", c, Outcome.SUCCESS, CONFIG)  # the service answers again
    assert admit(store, "d").kind is TicketKind.CALL


def test_calls_from_before_the_failures_count_for_throttle_wait_only(
    store: MemoryStore, clock: FakeClock
) -> None:
    admit(store, "idle")  # succeeded long ago; successes are not reported
    clock.advance(3)
    fail(store, "a")
    permit = admit(store, "a")  # 1 failure + 1 presumed in flight < 3
    assert permit.kind is TicketKind.PERMIT
    assert store.acquire("svc", "b", CONFIG).denial is Denial.THROTTLED
    clock.advance(CONFIG.throttle_wait)  # the idle slots' calls are presumed settled
    assert admit(store, "b").kind is TicketKind.PERMIT
    # a permit reports its outcome, so it counts until its lease lapses
    clock.advance(CONFIG.half_open_timeout - CONFIG.throttle_wait - 0.1)
    assert store.acquire("svc", "c", CONFIG).denial is Denial.THROTTLED


def test_a_slot_asking_again_frees_its_previous_lease(store: MemoryStore) -> None:
    admit(store, "a")
    admit(store, "a")
    assert store.snapshot("svc").in_flight == 1


def test_forced_open_refuses_without_an_end(store: MemoryStore) -> None:
    report = store.transition("svc", Action.FORCE_OPEN, "maintenance", CONFIG)
    assert report.transition is not None
    assert report.snapshot.forced == "open"
    admission = store.acquire("svc", "a", CONFIG)
    assert (admission.denial, admission.until) == (Denial.FORCED_OPEN, None)


def test_forced_closed_admits_and_counts_nothing(store: MemoryStore) -> None:
    store.transition("svc", Action.FORCE_CLOSED, "disabled", CONFIG)
    for _ in range(5):
        ticket = admit(store, "a")
        assert ticket.kind is TicketKind.BYPASS
        assert not store.report("svc", "a", ticket, Outcome.FAILURE, CONFIG).applied
    snapshot = store.snapshot("svc")
    assert (snapshot.state, snapshot.forced, snapshot.failures) == ("closed", "closed", 0)
    store.transition("svc", Action.RESET, "back", CONFIG)
    assert store.snapshot("svc").forced is None


def test_every_manual_move_starts_a_generation(store: MemoryStore) -> None:
    generations = [store.snapshot("svc").generation]
    for action in (Action.OPEN, Action.HALF_OPEN, Action.CLOSE, Action.RESET):
        generations.append(store.transition("svc", action, "test", CONFIG).snapshot.generation)
    assert generations == [0, 1, 2, 3, 4]


def test_foreign_tickets_count_failures_only(store: MemoryStore) -> None:
    foreign = Ticket(generation=7, kind=TicketKind.CALL, bucket=0, origin="redis:elsewhere")
    assert not store.report("svc", "a", foreign, Outcome.SUCCESS, CONFIG).applied
    for _ in range(3):
        store.report("svc", "a", foreign, Outcome.FAILURE, CONFIG)
    assert store.snapshot("svc").state == "open"


def test_names_lists_every_breaker_seen(store: MemoryStore) -> None:
    store.acquire("b", "x", CONFIG)
    store.acquire("a", "x", CONFIG)
    assert store.names() == ["a", "b"]


def test_a_failure_rate_counts_failures_over_the_span_its_calls_are_counted_in() -> None:
    # Calls are counted by whole buckets (failure_window / 20): at 20.2 s the bucket of the
    # calls at 0.3 and 0.4 s has left the window while 0.3 s and 0.4 s are still inside it.
    # The rate compares failures and calls over the same span: 1 failure of 4 calls (25 %),
    # not 3 of 4 (75 %), so a 60 % rule does not trip.
    moment = [0.0]
    store = MemoryStore(clock=lambda: moment[0])
    config = CircuitConfig(
        failure_window=20,
        failure_threshold=100,
        min_throughput=4,
        failure_rate_threshold=60,
        half_open_timeout=30,
        slow_call_duration=5,
    )

    def call(at: float, slot: str, failed: bool) -> None:
        moment[0] = at
        admission = store.acquire("x", slot, config)
        assert admission.ticket is not None, admission
        if failed:
            store.report("x", slot, admission.ticket, Outcome.FAILURE, config)

    call(0.3, "a", True)
    call(0.4, "b", True)
    for at, slot in ((19.0, "c"), (19.1, "d"), (19.2, "e")):
        call(at, slot, False)
    call(20.2, "f", True)
    assert store.snapshot("x", config).state == "closed"
    assert policy.failures_in_buckets([0.3, 0.4, 20.2], 20.2, 20) == 1
