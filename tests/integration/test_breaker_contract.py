"""The store contract, one test body over every store: the Lua scripts on a real Redis and the
in-memory store must make the same decisions (short timeouts, real time)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pybreaker
import pytest
import redis

from intent.breaker import (
    CircuitBreaker,
    CircuitConfig,
    CircuitOpenError,
    MemoryStore,
    RedisStore,
)
from intent.breaker.stores import (
    Action,
    BreakerStore,
    Denial,
    Outcome,
    Snapshot,
    Ticket,
    TicketKind,
)

pytestmark = pytest.mark.integration

CONFIG = CircuitConfig(
    failure_threshold=3,
    min_throughput=3,
    recovery_timeout=0.3,
    half_open_timeout=0.3,
    failure_window=0.6,
    throttle_wait=0.2,
)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[BreakerStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    request.getfixturevalue("redis_client")  # removes the service's keys around the test
    redis_store = RedisStore.from_url(request.getfixturevalue("redis_url"))
    yield redis_store
    redis_store.close()


@pytest.fixture
def name() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}"


def admit(store: BreakerStore, name: str, slot: str, config: CircuitConfig = CONFIG) -> Ticket:
    admission = store.acquire(name, slot, config)
    assert admission.ticket is not None, admission
    return admission.ticket


def fail(store: BreakerStore, name: str, slot: str, config: CircuitConfig = CONFIG) -> None:
    store.report(name, slot, admit(store, name, slot, config), Outcome.FAILURE, config)


def test_trips_once_and_ignores_outcomes_from_before_the_trip(
    store: BreakerStore, name: str
) -> None:
    slots = [f"p{i}" for i in range(6)]
    tickets = [admit(store, name, slot) for slot in slots]
    reports = [
        store.report(name, slot, ticket, Outcome.FAILURE, CONFIG)
        for slot, ticket in zip(slots, tickets, strict=True)
    ]
    transitions = [r.transition for r in reports if r.transition]
    assert len(transitions) == 1
    assert (transitions[0].old_state, transitions[0].new_state) == ("closed", "open")
    assert transitions[0].reason == "3 failures in the last 0.6 s (6 calls)"
    assert [r.applied for r in reports] == [True, True, True, False, False, False]
    snapshot = store.snapshot(name, CONFIG)
    assert snapshot.generation == 1
    assert snapshot.until is not None and snapshot.opened_at is not None
    assert snapshot.until == pytest.approx(snapshot.opened_at + CONFIG.recovery_timeout)
    refused = store.acquire(name, "late", CONFIG)
    assert (refused.denial, refused.until) == (Denial.OPEN, snapshot.until)


def test_half_open_admits_a_limited_number_of_trials_with_leases(
    store: BreakerStore, name: str
) -> None:
    config = CircuitConfig(
        failure_threshold=1,
        min_throughput=1,
        recovery_timeout=0.2,
        half_open_timeout=0.3,
        half_open_max_calls=2,
    )
    fail(store, name, "a", config)
    time.sleep(0.25)
    first = store.acquire(name, "a", config)
    assert first.transition is not None and first.transition.new_state == "half-open"
    assert admit(store, name, "b", config).kind is TicketKind.TRIAL
    refused = store.acquire(name, "c", config)
    assert refused.denial is Denial.HALF_OPEN_FULL
    assert refused.until == pytest.approx(refused.snapshot.now + 0.3, abs=0.05)
    time.sleep(0.35)  # both trials' workers died: their leases lapse
    assert admit(store, name, "c", config).kind is TicketKind.TRIAL


def test_trial_success_closes_and_trial_failure_reopens(store: BreakerStore, name: str) -> None:
    config = CircuitConfig(failure_threshold=1, min_throughput=1, recovery_timeout=0.2)
    fail(store, name, "a", config)
    time.sleep(0.25)
    trial = admit(store, name, "a", config)
    report = store.report(name, "a", trial, Outcome.FAILURE, config)
    assert report.transition is not None
    assert (report.transition.old_state, report.transition.reason) == (
        "half-open",
        "trial call failed",
    )
    # the default break does not grow: the reopen lasts the recovery timeout again
    reopened = report.snapshot
    assert reopened.until is not None and reopened.opened_at is not None
    assert reopened.until - reopened.opened_at == pytest.approx(0.2, abs=1e-6)
    time.sleep(0.25)
    trial = admit(store, name, "b", config)
    report = store.report(name, "b", trial, Outcome.SUCCESS, config)
    assert report.transition is not None
    assert (report.transition.new_state, report.transition.reason) == (
        "closed",
        "1 trial call succeeded",
    )
    assert report.snapshot.generation == 5  # open, half-open, open, half-open, closed


def test_old_failures_leave_the_window(store: BreakerStore, name: str) -> None:
    config = CircuitConfig(failure_threshold=3, min_throughput=1, failure_window=0.4)
    fail(store, name, "a", config)
    fail(store, name, "a", config)
    time.sleep(0.45)
    fail(store, name, "a", config)
    snapshot = store.snapshot(name, config)
    assert (snapshot.state, snapshot.failures) == ("closed", 1)


def test_below_the_minimum_throughput_it_never_trips(store: BreakerStore, name: str) -> None:
    config = CircuitConfig(failure_threshold=2, min_throughput=8, failure_window=30)
    for _ in range(7):
        fail(store, name, "a", config)
    snapshot = store.snapshot(name, config)
    assert (snapshot.state, snapshot.failures, snapshot.calls) == ("closed", 7, 7)


def test_excluded_outcomes_are_uncounted(store: BreakerStore, name: str) -> None:
    for _ in range(4):
        ticket = admit(store, name, "a")
        store.report(name, "a", ticket, Outcome.EXCLUDED, CONFIG)
    snapshot = store.snapshot(name, CONFIG)
    assert (snapshot.state, snapshot.failures, snapshot.calls) == ("closed", 0, 0)


def test_throttle_bounds_failures_plus_calls_in_flight(store: BreakerStore, name: str) -> None:
    first, _second = admit(store, name, "a"), admit(store, name, "b")
    store.report(name, "a", first, Outcome.FAILURE, CONFIG)
    permit = admit(store, name, "c")
    assert permit.kind is TicketKind.PERMIT
    throttled = store.acquire(name, "d", CONFIG)
    assert throttled.denial is Denial.THROTTLED
    # b, in flight before the failure, counts for throttle_wait after it
    assert throttled.until == pytest.approx(throttled.snapshot.now + 0.2, abs=0.05)
    store.report(name, "c", permit, Outcome.SUCCESS, CONFIG)
    assert admit(store, name, "d").kind is TicketKind.CALL


def test_an_idle_processs_lease_holds_the_throttle_only_briefly(
    store: BreakerStore, name: str
) -> None:
    admit(store, name, "idle")  # it succeeded; successes are not reported
    fail(store, name, "a")
    assert admit(store, name, "a").kind is TicketKind.PERMIT
    assert store.acquire(name, "b", CONFIG).denial is Denial.THROTTLED
    time.sleep(0.25)
    assert admit(store, name, "b").kind is TicketKind.PERMIT
    assert store.snapshot(name, CONFIG).in_flight == 3  # the idle lease has not lapsed


def test_generation_guard_against_a_reset_mid_call(store: BreakerStore, name: str) -> None:
    slow = admit(store, name, "slow")
    store.transition(name, Action.RESET, "operator", CONFIG)
    assert not store.report(name, "slow", slow, Outcome.FAILURE, CONFIG).applied
    assert store.snapshot(name, CONFIG).failures == 0


def test_forced_states_hold_until_reset(store: BreakerStore, name: str) -> None:
    report = store.transition(name, Action.FORCE_OPEN, "forced open: maintenance", CONFIG)
    assert report.transition is not None
    assert (report.snapshot.state, report.snapshot.forced) == ("open", "open")
    time.sleep(0.35)  # longer than the recovery timeout: still refused
    assert store.acquire(name, "a", CONFIG).denial is Denial.FORCED_OPEN
    store.transition(name, Action.FORCE_CLOSED, "forced closed: incident", CONFIG)
    for _ in range(5):
        fail(store, name, "a")
    snapshot = store.snapshot(name, CONFIG)
    assert (snapshot.state, snapshot.forced, snapshot.failures) == ("closed", "closed", 0)
    assert snapshot.reason == "forced closed: incident"
    store.transition(name, Action.RESET, "reset", CONFIG)
    assert store.snapshot(name, CONFIG).forced is None
    assert name in store.names()


def test_breaker_with_listeners_over_each_store(store: BreakerStore, name: str) -> None:
    changes: list[tuple[str, str]] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: object, old_state: object, new_state: object) -> None:
            changes.append((old_state.name, new_state.name))  # type: ignore[attr-defined]

    config = CircuitConfig(failure_threshold=2, min_throughput=2, recovery_timeout=0.2)
    breaker = CircuitBreaker(name, config, store=store, listeners=[Listener()])

    def down() -> None:
        raise ConnectionError("refused")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(down)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    time.sleep(0.25)
    assert breaker.call(lambda: 1) == 1
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_redis_keys_share_the_hash_tag_and_window_data_expires(
    redis_client: redis.Redis, redis_url: str, name: str
) -> None:
    store = RedisStore.from_url(redis_url)
    admit(store, name, "in-flight")
    fail(store, name, "a")
    keys = sorted(redis_client.scan_iter(match=f"*cb:{name}*"))
    tag = f"{{intent:cb:{name}}}"
    assert keys == sorted(f"{tag}:{part}" for part in ("calls", "failures", "leases", "state"))
    for key in keys:
        ttl = redis_client.pttl(key)
        if key.endswith(":state"):
            assert ttl == -1  # durable: forced states must survive idleness
        else:
            assert 0 < ttl <= 2000, (key, ttl)
    assert redis_client.sismember("intent:cb:names", name)
    store.close()


# -- slow calls: a service that stops answering ---------------------------------------------
SLOW = CircuitConfig(
    failure_threshold=3,
    min_throughput=1,
    recovery_timeout=0.3,
    half_open_timeout=2.0,
    failure_window=10.0,
    throttle_wait=0.1,
    slow_call_duration=0.2,
)


def test_calls_that_hang_throttle_then_trip_without_any_failure(
    store: BreakerStore, name: str
) -> None:
    admit(store, name, "a", SLOW)
    admit(store, name, "b", SLOW)  # both hang: they never end
    time.sleep(0.25)
    permit = admit(store, name, "c", SLOW)  # 2 slow calls pending, room for one more
    assert permit.kind is TicketKind.PERMIT
    throttled = store.acquire(name, "d", SLOW)  # 2 slow + 1 in flight could trip it
    assert throttled.denial is Denial.THROTTLED
    time.sleep(0.25)  # c is slow too
    tripped = store.acquire(name, "d", SLOW)
    assert tripped.denial is Denial.OPEN
    assert tripped.transition is not None
    assert tripped.transition.reason == (
        "0 failures and 3 calls slower than 0.2 s in the last 10 s (3 calls)"
    )


def test_a_service_that_hangs_gets_no_new_call_once_a_call_is_slow(
    store: BreakerStore, name: str
) -> None:
    for slot in ("p1", "p2", "p3", "p4"):
        admit(store, name, slot, SLOW)  # in flight when the service began to hang
    time.sleep(0.25)
    refused = store.acquire(name, "p5", SLOW)
    assert refused.denial is Denial.OPEN  # four slow calls are past the threshold


def test_one_slow_call_of_a_service_that_answers_others_is_an_outlier(
    store: BreakerStore, name: str
) -> None:
    admit(store, name, "stuck", SLOW)
    admit(store, name, "busy", SLOW)
    time.sleep(0.1)
    admit(store, name, "busy", SLOW)  # asking again: its call, started later, was answered
    time.sleep(0.15)  # stuck is slow by now; busy's second call is not (yet)
    assert admit(store, name, "other", SLOW).kind is TicketKind.CALL
    assert store.snapshot(name, SLOW).state == "closed"


def test_a_permit_that_succeeds_forgives_the_slow_calls_started_before_it(
    store: BreakerStore, name: str
) -> None:
    admit(store, name, "stuck", SLOW)
    time.sleep(0.25)
    permit = admit(store, name, "a", SLOW)
    assert permit.kind is TicketKind.PERMIT  # one slow call: pending
    store.report(name, "a", permit, Outcome.SUCCESS, SLOW)  # the service answers
    assert admit(store, name, "b", SLOW).kind is TicketKind.CALL


def test_a_trial_slower_than_the_slow_call_duration_reopens(store: BreakerStore, name: str) -> None:
    config = CircuitConfig(
        failure_threshold=1,
        min_throughput=1,
        recovery_timeout=0.2,
        half_open_timeout=2.0,
        slow_call_duration=0.2,
    )
    fail(store, name, "a", config)
    time.sleep(0.25)
    assert admit(store, name, "trial", config).kind is TicketKind.TRIAL  # and it hangs
    assert store.acquire(name, "b", config).denial is Denial.HALF_OPEN_FULL
    time.sleep(0.25)
    reopened = store.acquire(name, "b", config)
    assert reopened.denial is Denial.OPEN
    assert reopened.transition is not None
    assert reopened.transition.reason == "trial call slower than 0.2 s"


def probe(store: BreakerStore, name: str, slot: str, config: CircuitConfig) -> Ticket:
    admission = store.acquire(name, slot, config, probe=True)
    assert admission.ticket is not None, admission
    return admission.ticket


def test_a_probe_never_takes_a_trials_place(store: BreakerStore, name: str) -> None:
    config = CircuitConfig(failure_threshold=1, min_throughput=1, recovery_timeout=0.2)
    fail(store, name, "a", config)
    time.sleep(0.25)
    refused = store.acquire(name, "health", config, probe=True)
    assert refused.denial is Denial.PROBE_WAITS
    assert refused.transition is not None and refused.transition.new_state == "half-open"
    # The trial is still there for a call to the API, and only its verdict closes.
    trial = admit(store, name, "api", config)
    assert trial.kind is TicketKind.TRIAL
    assert store.report(name, "api", trial, Outcome.FAILURE, config).snapshot.state == "open"


def test_an_answered_probe_counts_for_nothing(store: BreakerStore, name: str) -> None:
    config = CircuitConfig(failure_threshold=3, min_throughput=3, failure_window=10.0)
    fail(store, name, "a", config)
    fail(store, name, "b", config)
    for slot in ("h1", "h2", "h3", "h4"):  # /health answers, again and again
        report = store.report(name, slot, probe(store, name, slot, config), Outcome.IGNORED, config)
        assert report.applied and report.transition is None
    snapshot = store.snapshot(name, config)
    assert (snapshot.failures, snapshot.calls) == (2, 2)  # the probes left no trace
    tripped = store.report(name, "c", admit(store, name, "c", config), Outcome.FAILURE, config)
    assert tripped.transition is not None and tripped.snapshot.state == "open"


def test_a_failed_probe_counts_as_a_failure(store: BreakerStore, name: str) -> None:
    config = CircuitConfig(failure_threshold=2, min_throughput=2, failure_window=10.0)
    for slot in ("h1", "h2"):  # the host is dead: /health is refused too
        report = store.report(name, slot, probe(store, name, slot, config), Outcome.FAILURE, config)
    assert report.transition is not None and report.snapshot.state == "open"


def test_an_answered_probe_does_not_excuse_api_calls_that_hang(
    store: BreakerStore, name: str
) -> None:
    admit(store, name, "p1", SLOW)
    admit(store, name, "p2", SLOW)  # the API hangs
    time.sleep(0.05)
    health = probe(store, name, "h", SLOW)  # started after the hanging calls, answered
    store.report(name, "h", health, Outcome.IGNORED, SLOW)
    admit(store, name, "p3", SLOW)
    time.sleep(0.25)  # all three API calls are slow now, and /health's answer excuses none
    tripped = store.acquire(name, "p4", SLOW)
    assert tripped.denial is Denial.OPEN
    assert tripped.transition is not None
    assert "3 calls slower than 0.2 s" in tripped.transition.reason


# Idle callers: a slow-call duration short enough for a test to go idle past it.
IDLE_CONFIG = CircuitConfig(
    failure_threshold=3,
    min_throughput=3,
    recovery_timeout=5.0,
    half_open_timeout=5.0,
    failure_window=5.0,
    throttle_wait=0.0,
    slow_call_duration=0.4,
)


def test_idle_callers_answered_calls_never_look_slow(store: BreakerStore, name: str) -> None:
    """Five pool processes each make one healthy call and go idle for longer than the
    slow-call duration: their unreported leases must not look like calls that hang, or the
    next call would trip a healthy service's breaker."""
    config = IDLE_CONFIG
    breakers = [CircuitBreaker(name, config, store=store) for _ in range(5)]  # five processes
    for breaker in breakers:
        assert breaker.call(lambda: "answered") == "answered"
    time.sleep(config.slow_call_duration + 0.3)
    newcomer = CircuitBreaker(name, config, store=store)
    assert newcomer.call(lambda: "answered") == "answered"
    snapshot = store.snapshot(name, config)
    assert snapshot.state == "closed" and not snapshot.suspect, snapshot


def test_idle_callers_answered_calls_never_look_slow_in_a_second_idle_period(
    store: BreakerStore, name: str
) -> None:
    config = IDLE_CONFIG
    breakers = [CircuitBreaker(name, config, store=store) for _ in range(5)]
    for _ in range(2):  # busy, idle, busy, idle
        for breaker in breakers:
            assert breaker.call(lambda: "answered") == "answered"
        time.sleep(config.slow_call_duration + 0.3)
    assert CircuitBreaker(name, config, store=store).call(lambda: "answered") == "answered"
    assert store.snapshot(name, config).state == "closed"


def test_a_lease_given_back_is_not_a_recovery(store: BreakerStore, name: str) -> None:
    """A call answered before the failures began, given back late, must not clear them:
    it ends its lease and nothing else."""
    config = CircuitConfig(
        failure_threshold=3, min_throughput=1, failure_window=5.0, throttle_wait=0.0
    )
    early = admit(store, name, "early", config)  # answered, its caller then idle
    fail(store, name, "p1", config)
    fail(store, name, "p2", config)
    assert store.snapshot(name, config).suspect
    report = store.report(name, "early", early, Outcome.RELEASED, config)
    assert report.applied and report.transition is None
    snapshot = store.snapshot(name, config)
    assert snapshot.suspect and snapshot.failures == 2 and snapshot.in_flight == 0, snapshot


# -- issue 15: rate rules, a growing break, the bulkhead ---------------------------------------
RATES = CircuitConfig(
    failure_threshold=100,  # the count rule out of reach: the rates decide
    min_throughput=4,
    failure_window=10.0,
    half_open_timeout=2.0,
    slow_call_duration=0.2,
    throttle_wait=0.0,
    failure_rate_threshold=50.0,
    slow_call_rate_threshold=50.0,
)


def test_a_failure_rate_over_the_minimum_throughput_trips_once_and_names_the_rule(
    store: BreakerStore, name: str
) -> None:
    tickets = [admit(store, name, slot, RATES) for slot in ("a", "b", "c", "d")]
    first = store.report(name, "a", tickets[0], Outcome.FAILURE, RATES)
    assert first.transition is None  # 1 of 4: 25 %
    second = store.report(name, "b", tickets[1], Outcome.FAILURE, RATES)
    assert second.transition is not None  # 2 of 4: 50 %
    assert (second.transition.old_state, second.transition.new_state) == ("closed", "open")
    assert second.transition.reason == "failure rate 50% >= 50% over 4 calls in the last 10 s"
    late = store.report(name, "c", tickets[2], Outcome.FAILURE, RATES)
    assert (late.applied, late.transition) == (False, None)  # tripped once


def test_below_the_minimum_throughput_a_failure_rate_never_trips(
    store: BreakerStore, name: str
) -> None:
    for slot in ("a", "b", "c"):  # 3 calls, all failed: 100 %, but fewer than 4 calls
        report = store.report(name, slot, admit(store, name, slot, RATES), Outcome.FAILURE, RATES)
        assert report.transition is None
    assert store.snapshot(name, RATES).state == "closed"


def test_a_slow_success_counted_by_the_slots_next_acquire_trips_by_rate(
    store: BreakerStore, name: str
) -> None:
    """A closed-state success is never reported: the slot's next acquire carries it, and it
    counts in its own call's bucket, before the new call is counted."""
    tickets = {slot: admit(store, name, slot, RATES) for slot in ("a", "b", "c", "d")}
    for slot in ("a", "b"):  # 1 slow of 4 calls, then 2 of 5: under 50 %
        again = store.acquire(name, slot, RATES, slow=replace(tickets[slot], slow=True))
        assert again.ticket is not None and again.transition is None, again
    tripped = store.acquire(name, "c", RATES, slow=replace(tickets["c"], slow=True))
    assert tripped.denial is Denial.OPEN and tripped.transition is not None  # 3 of 6
    assert tripped.transition.reason == "slow-call rate 50% >= 50% over 6 calls in the last 10 s"
    assert store.snapshot(name, RATES).state == "open"


def test_a_slow_call_of_an_older_generation_counts_for_nothing(
    store: BreakerStore, name: str
) -> None:
    old = {slot: admit(store, name, slot, RATES) for slot in ("a", "b", "c", "d")}
    store.transition(name, Action.RESET, "reset", RATES)  # a new generation, a clean window
    for slot in ("e", "f", "g", "h"):
        admit(store, name, slot, RATES)
    # were they counted, the third would make 3 slow of 6 calls: 50 %
    for slot in ("a", "b", "c"):
        admission = store.acquire(name, slot, RATES, slow=replace(old[slot], slow=True))
        assert admission.ticket is not None and admission.transition is None, admission
    assert store.snapshot(name, RATES).state == "closed"


def test_a_slow_call_given_back_or_reported_counts_toward_the_slow_call_rate(
    store: BreakerStore, name: str
) -> None:
    tickets = {slot: admit(store, name, slot, RATES) for slot in ("a", "b", "c", "d")}
    # an idle caller's slow success, given back by its background thread (idle.py)
    given = store.report(name, "a", replace(tickets["a"], slow=True), Outcome.RELEASED, RATES)
    assert given.transition is None  # 1 of 4
    # a slow failure, reported as every failure is: 2 slow of 4, and 1 failure of 4
    failed = store.report(name, "b", replace(tickets["b"], slow=True), Outcome.FAILURE, RATES)
    assert failed.transition is not None
    assert failed.transition.reason == "slow-call rate 50% >= 50% over 4 calls in the last 10 s"


GROWING = CircuitConfig(
    failure_threshold=1,
    min_throughput=1,
    recovery_timeout=0.2,
    half_open_timeout=2.0,
    break_factor=2.0,
    break_max=0.5,
    break_jitter=0.0,
)


def _open_time(report_or_admission_snapshot: Snapshot) -> float:
    snapshot = report_or_admission_snapshot
    assert snapshot.until is not None and snapshot.opened_at is not None, snapshot
    return snapshot.until - snapshot.opened_at


def _fail_a_trial(store: BreakerStore, name: str, slot: str) -> Snapshot:
    trial = admit(store, name, slot, GROWING)
    assert trial.kind is TicketKind.TRIAL
    report = store.report(name, slot, trial, Outcome.FAILURE, GROWING)
    assert report.transition is not None and report.transition.reason == "trial call failed"
    return report.snapshot


def test_the_break_grows_with_each_trip_up_to_the_cap_and_a_close_resets_it(
    store: BreakerStore, name: str
) -> None:
    first = store.report(name, "a", admit(store, name, "a", GROWING), Outcome.FAILURE, GROWING)
    assert (_open_time(first.snapshot), first.snapshot.trips) == (pytest.approx(0.2), 1)
    time.sleep(0.22)
    second = _fail_a_trial(store, name, "a")
    assert (_open_time(second), second.trips) == (pytest.approx(0.4), 2)
    time.sleep(0.42)
    third = _fail_a_trial(store, name, "a")
    assert (_open_time(third), third.trips) == (pytest.approx(0.5), 3)  # capped, not 0.8
    assert store.snapshot(name, GROWING).trips == 3
    time.sleep(0.52)
    trial = admit(store, name, "a", GROWING)
    closed = store.report(name, "a", trial, Outcome.SUCCESS, GROWING)
    assert closed.transition is not None and closed.transition.new_state == "closed"
    assert closed.snapshot.trips == 0
    again = store.report(name, "a", admit(store, name, "a", GROWING), Outcome.FAILURE, GROWING)
    assert (_open_time(again.snapshot), again.snapshot.trips) == (pytest.approx(0.2), 1)


def test_an_operators_open_does_not_grow_the_break_and_a_reset_starts_again(
    store: BreakerStore, name: str
) -> None:
    store.report(name, "a", admit(store, name, "a", GROWING), Outcome.FAILURE, GROWING)
    time.sleep(0.22)
    assert _fail_a_trial(store, name, "a").trips == 2
    opened = store.transition(name, Action.OPEN, "opened by open()", GROWING)
    assert (_open_time(opened.snapshot), opened.snapshot.trips) == (pytest.approx(0.2), 2)
    reset = store.transition(name, Action.RESET, "reset by operator", GROWING)
    assert reset.snapshot.trips == 0


def test_the_bulkhead_admits_at_most_its_limit_and_a_dead_holders_lease_lapses(
    store: BreakerStore, name: str
) -> None:
    config = CircuitConfig(max_concurrent_calls=2, half_open_timeout=0.3, slow_call_duration=0.2)
    admit(store, name, "a", config)
    admit(store, name, "b", config)
    full = store.acquire(name, "c", config)
    assert full.denial is Denial.BULKHEAD_FULL and full.ticket is None
    status = store.snapshot(name, config)
    assert (status.in_flight, status.bulkhead) == (2, 2)
    assert admit(store, name, "a", config).kind is TicketKind.CALL  # a's last call is over
    assert store.acquire(name, "c", config).denial is Denial.BULKHEAD_FULL
    time.sleep(0.35)  # a and b died holding their calls: their leases lapse
    assert admit(store, name, "c", config).kind is TicketKind.CALL
    assert admit(store, name, "d", config).kind is TicketKind.CALL
    assert store.acquire(name, "e", config).denial is Denial.BULKHEAD_FULL
    assert store.snapshot(name, config).calls == 5  # refusals are not calls


def test_without_a_bulkhead_any_number_of_calls_is_in_flight(
    store: BreakerStore, name: str
) -> None:
    for slot in range(20):
        admit(store, name, f"s{slot}")
    status = store.snapshot(name, CONFIG)
    assert (status.in_flight, status.bulkhead) == (20, 0)
