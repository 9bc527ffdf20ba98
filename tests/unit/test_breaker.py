"""The CircuitBreaker class over the in-memory store: pybreaker's API and listeners, local
refusals, throttle waits, exclusions, and the Redis-to-memory fallback (with a fake Redis)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pybreaker
import pytest

from intent.breaker import (
    CircuitBreaker,
    CircuitBreakerListener,
    CircuitConfig,
    CircuitContext,
    CircuitOpenError,
    FallbackStore,
    MemoryStore,
    StoreUnavailable,
)
from intent.breaker.idle import MIN_IDLE
from intent.breaker.stores import (
    Action,
    Admission,
    BreakerStore,
    Outcome,
    Report,
    Snapshot,
    Ticket,
)
from intent.errors import (
    BulkheadFullError,
    IncompatibleServiceError,
    ServiceRequestError,
    ValidationError,
)
from tests.helpers import FakeClock

CONFIG = CircuitConfig(
    failure_threshold=3,
    min_throughput=3,
    recovery_timeout=10.0,
    half_open_timeout=5.0,
    failure_window=60.0,
    throttle_wait=0.0,
)


class Down(Exception):
    """The downstream failed."""


def down() -> None:
    raise Down("connection refused")


class CountingStore(BreakerStore):
    """Wraps a store and counts the steps the breaker asks of it."""

    def __init__(self, inner: BreakerStore):
        self.inner = inner
        self.origin = inner.origin
        self.steps: list[str] = []
        self.carried: list[Ticket | None] = []  # the slow ticket each acquire carried

    def acquire(
        self,
        name: str,
        slot: str,
        config: CircuitConfig,
        probe: bool = False,
        slow: Ticket | None = None,
    ) -> Admission:
        self.steps.append("acquire")
        self.carried.append(slow)
        return self.inner.acquire(name, slot, config, probe, slow)

    def report(
        self, name: str, slot: str, ticket: Ticket, outcome: Outcome, config: CircuitConfig
    ) -> Report:
        self.steps.append(f"report:{outcome}")
        return self.inner.report(name, slot, ticket, outcome, config)

    def snapshot(self, name: str, config: CircuitConfig | None = None) -> Snapshot:
        return self.inner.snapshot(name, config)

    def transition(
        self, name: str, action: Action, reason: str, config: CircuitConfig | None = None
    ) -> Report:
        return self.inner.transition(name, action, reason, config)

    def names(self) -> list[str]:
        return self.inner.names()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> CountingStore:
    return CountingStore(MemoryStore(clock=clock))


def make(store: BreakerStore, clock: FakeClock, **options: Any) -> CircuitBreaker:
    config = options.pop("config", CONFIG)
    return CircuitBreaker("svc", config, store=store, clock=clock, sleep=clock.sleep, **options)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.fail_max):
        with pytest.raises(Down):
            breaker.call(down)


def test_a_healthy_call_costs_one_store_step(store: CountingStore, clock: FakeClock) -> None:
    breaker = make(store, clock)
    assert [breaker.call(lambda x: x * 2, 21) for _ in range(10)] == [42] * 10
    assert store.steps == ["acquire"] * 10


def test_an_open_breaker_refuses_locally_until_it_knows_trials_start(
    store: CountingStore, clock: FakeClock
) -> None:
    breaker = make(store, clock)
    trip(breaker)
    steps = len(store.steps)
    until = breaker.snapshot().until
    for _ in range(100):
        with pytest.raises(CircuitOpenError) as refused:
            breaker.call(lambda: None)
        assert refused.value.until == until
        assert refused.value.service == "svc"
    assert len(store.steps) == steps  # no store step while refusing
    clock.advance(CONFIG.recovery_timeout)
    assert breaker.call(lambda: "trial") == "trial"
    assert breaker.current_state == "closed"


def test_a_probe_that_answers_never_closes_the_breaker_nor_counts(
    store: CountingStore, clock: FakeClock
) -> None:
    """GET /health answering while the API is down: the breaker waits for an API trial."""
    breaker = make(store, clock)
    trip(breaker)
    clock.advance(CONFIG.recovery_timeout)
    with pytest.raises(CircuitOpenError):
        breaker.probe(lambda: {"status": "ok"})  # half-open: not a trial
    assert breaker.current_state == "half-open"
    with pytest.raises(Down):
        breaker.call(down)  # the trial is the API's, and it fails
    assert breaker.current_state == "open"
    # a second trip in a row: open for the grown break (factor x recovery, +/- jitter)
    clock.advance(CONFIG.recovery_timeout * CONFIG.break_factor * (1 + CONFIG.break_jitter))
    assert breaker.call(lambda: "api") == "api"
    assert breaker.current_state == "closed"
    # Closed: answered probes leave no calls behind; failed ones count as failures.
    assert breaker.call(lambda: "api") == "api"
    assert breaker.probe(lambda: "ok") == "ok"
    assert store.steps[-2:] == ["acquire", "report:ignored"]
    assert breaker.snapshot().calls == 1  # the API call alone
    for _ in range(CONFIG.failure_threshold):
        with pytest.raises(Down):
            breaker.probe(down)  # a dead host: /health is refused too
    assert breaker.current_state == "open"


def test_the_tripping_call_raises_its_own_error_by_default(
    store: CountingStore, clock: FakeClock
) -> None:
    breaker = make(store, clock)
    trip(breaker)  # every one of the threshold's calls raised Down
    assert breaker.current_state == "open"


def test_throw_new_error_on_trip_raises_circuit_open_from_the_failure(
    store: CountingStore, clock: FakeClock
) -> None:
    breaker = make(store, clock, throw_new_error_on_trip=True)
    for _ in range(2):
        with pytest.raises(Down):
            breaker.call(down)
    with pytest.raises(CircuitOpenError) as tripped:
        breaker.call(down)
    assert isinstance(tripped.value.__cause__, Down)
    assert tripped.value.until == clock.now + CONFIG.recovery_timeout


class Recorder:
    """Duck-typed listener: records every callback."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def before_call(self, cb: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.events.append(("before_call", cb, func, args, kwargs))

    def success(self, cb: Any) -> None:
        self.events.append(("success", cb))

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.events.append(("failure", cb, exc))

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.events.append(("state_change", cb, old_state.name, new_state.name))


def test_pybreaker_listeners_receive_pybreakers_callbacks(
    store: CountingStore, clock: FakeClock
) -> None:
    seen: list[tuple[Any, ...]] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
            seen.append(("before_call", cb.name, func, args, kwargs))

        def success(self, cb: Any) -> None:
            seen.append(("success", cb.name))

        def failure(self, cb: Any, exc: BaseException) -> None:
            seen.append(("failure", cb.name, type(exc)))

        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            seen.append(("state_change", cb.name, old_state.name, new_state.name))

    config = CircuitConfig(failure_threshold=1, min_throughput=1, recovery_timeout=10)
    breaker = make(store, clock, config=config, listeners=[Listener()])

    def add(a: int, b: int = 0) -> int:
        return a + b

    assert breaker.call(add, 1, b=2) == 3
    with pytest.raises(Down):
        breaker.call(down)
    clock.advance(10)
    breaker.call(add, 5)
    assert seen == [
        ("before_call", "svc", add, (1,), {"b": 2}),
        ("success", "svc"),
        ("before_call", "svc", down, (), {}),
        ("state_change", "svc", "closed", "open"),
        ("failure", "svc", Down),
        ("state_change", "svc", "open", "half-open"),
        ("before_call", "svc", add, (5,), {}),
        ("state_change", "svc", "half-open", "closed"),
        ("success", "svc"),
    ]
    assert pybreaker.STATE_HALF_OPEN == "half-open"  # the names listeners compare with


def test_listeners_can_be_added_and_removed_and_their_failures_are_logged(
    store: CountingStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(store, clock)
    recorder = Recorder()

    class Broken(CircuitBreakerListener):
        def success(self, cb: CircuitBreaker) -> None:
            raise RuntimeError("listener bug")

    broken = Broken()
    breaker.add_listeners(recorder, broken)
    assert breaker.listeners == (recorder, broken)
    with caplog.at_level(logging.ERROR, logger="intent.breaker"):
        assert breaker.call(lambda: 1) == 1  # a broken listener does not fail the call
    assert "listener" in caplog.text
    breaker.remove_listener(recorder)
    breaker.call(lambda: 1)
    assert [event[0] for event in recorder.events] == ["before_call", "success"]


def test_excluded_errors_are_neither_failures_nor_successes(
    store: CountingStore, clock: FakeClock
) -> None:
    class NotFound(Exception):
        pass

    recorder = Recorder()
    breaker = make(store, clock, listeners=[recorder])
    breaker.add_excluded_exception(NotFound)
    breaker.add_excluded_exceptions(KeyError)
    errors: list[BaseException] = [
        NotFound(),
        KeyError("k"),
        ValidationError("f", "bad"),
        ServiceRequestError("svc", 404, "missing"),
        CircuitOpenError("other", None),
    ]
    for error in errors * 2:

        def raise_it(error: BaseException = error) -> None:
            raise error

        with pytest.raises(type(error)):
            breaker.call(raise_it)
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.failures, snapshot.calls) == ("closed", 0, 0)
    assert {event[0] for event in recorder.events} == {"before_call"}
    assert NotFound in breaker.excluded_exceptions
    breaker.remove_excluded_exception(NotFound)
    with pytest.raises(NotFound):
        breaker.call(lambda: (_ for _ in ()).throw(NotFound()))
    assert breaker.fail_counter == 1


def test_exclusion_predicates_as_in_pybreaker(store: CountingStore, clock: FakeClock) -> None:
    breaker = make(store, clock, exclude=[lambda exc: "404" in str(exc)])
    assert not breaker.is_system_error(Down("HTTP 404"))
    assert breaker.is_system_error(Down("HTTP 503"))
    assert breaker.is_system_error(ValidationError("f", "x"))  # exclude replaces the default


def test_an_interrupted_call_is_not_a_failure(store: CountingStore, clock: FakeClock) -> None:
    breaker = make(store, clock)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.fail_counter == 0


def test_decorator_forms_context_and_calling(store: CountingStore, clock: FakeClock) -> None:
    breaker = make(store, clock)

    @breaker
    def double(x: int) -> int:
        return 2 * x

    @breaker()
    def triple(x: int) -> int:
        return 3 * x

    assert (double(2), triple(2), double.__name__) == (4, 6, "double")
    context = CircuitContext("context-service", "/api/v1/context", "GET")
    assert breaker(lambda context_id: context_id, context, context_id="c1") == "c1"
    assert breaker.call_with_context(lambda: 7, context) == 7
    with breaker.calling():
        pass
    with pytest.raises(Down), breaker.calling():
        raise Down("in block")
    assert breaker.fail_counter == 1
    with pytest.raises(TypeError):
        breaker(1, 2)


def test_open_close_half_open_as_in_pybreaker(store: CountingStore, clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(store, clock, listeners=[recorder])
    assert breaker.open() is False
    assert breaker.current_state == "open"
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    breaker.half_open()
    assert breaker.state.name == "half-open"
    breaker.close()
    assert breaker.call(lambda: 1) == 1
    changes = [(e[2], e[3]) for e in recorder.events if e[0] == "state_change"]
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_pybreaker_keywords_override_the_config(store: CountingStore, clock: FakeClock) -> None:
    breaker = make(store, clock, fail_max=2, reset_timeout=3, success_threshold=2)
    assert (breaker.fail_max, breaker.reset_timeout, breaker.success_threshold) == (2, 3, 2)
    breaker.fail_max = 4
    assert breaker.config.failure_threshold == 4


def test_transitions_are_logged_with_breaker_states_and_reason(
    store: CountingStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(store, clock)
    with caplog.at_level(logging.INFO, logger="intent.breaker"):
        trip(breaker)
    (record,) = [r for r in caplog.records if r.name == "intent.breaker"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "circuit breaker svc: closed -> open (3 failures in the last 60 s (3 calls))"
    )
    assert (record.breaker, record.old_state, record.new_state) == ("svc", "closed", "open")  # type: ignore[attr-defined]


def test_a_throttled_call_waits_for_the_calls_in_flight(clock: FakeClock) -> None:
    memory = MemoryStore(clock=clock)
    config = CircuitConfig(failure_threshold=2, min_throughput=1, throttle_wait=1.0)
    other = memory.acquire("svc", "other-process", config).ticket  # in flight elsewhere
    assert other is not None
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(sleeps) == 3:  # meanwhile the other process's call fails: the breaker trips
            memory.report("svc", "other-process", other, Outcome.FAILURE, config)

    breaker = CircuitBreaker("svc", config, store=memory, clock=clock, sleep=sleep)
    with pytest.raises(Down):
        breaker.call(down)  # 1 failure, 1 in flight: the next call would be throttled
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(lambda: "never runs")
    assert sleeps == [0.005, 0.01, 0.02]
    assert refused.value.until is not None


def test_a_throttled_call_gives_up_after_throttle_wait(clock: FakeClock) -> None:
    memory = MemoryStore(clock=clock)
    config = CircuitConfig(failure_threshold=2, min_throughput=1, throttle_wait=0.2)
    breaker = CircuitBreaker("svc", config, store=memory, clock=clock, sleep=clock.sleep)
    with pytest.raises(Down):
        breaker.call(down)
    other = memory.acquire("svc", "other-process", config).ticket  # a slow permitted call
    assert other is not None and other.kind.value == "permit"
    started = clock.now
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(lambda: "never runs")
    assert clock.now - started == pytest.approx(0.2)
    assert refused.value.until == pytest.approx(started + config.half_open_timeout)


def test_no_lock_is_held_across_the_guarded_call() -> None:
    breaker = CircuitBreaker("svc", CONFIG, store=MemoryStore())
    inside, most = 0, 0
    lock = threading.Lock()
    gate = threading.Barrier(8, timeout=5)

    def slow() -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        gate.wait()  # passes only if all eight calls are inside at once
        time.sleep(0.01)
        with lock:
            inside -= 1

    threads = [threading.Thread(target=breaker.call, args=(slow,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 8


class FlakyRedis(BreakerStore):
    """A primary store that can be switched off, and counts attempts."""

    def __init__(self, clock: FakeClock):
        self.inner = MemoryStore(clock=clock)
        self.origin = "redis:fake"
        self.up = True
        self.attempts = 0

    def _check(self) -> None:
        self.attempts += 1
        if not self.up:
            raise StoreUnavailable("connection refused")

    def acquire(
        self,
        name: str,
        slot: str,
        config: CircuitConfig,
        probe: bool = False,
        slow: Ticket | None = None,
    ) -> Admission:
        self._check()
        admission = self.inner.acquire(name, slot, config, probe, slow)
        if admission.ticket is None:
            return admission
        ticket = Ticket(
            admission.ticket.generation,
            admission.ticket.kind,
            admission.ticket.bucket,
            self.origin,
        )
        return Admission(admission.snapshot, ticket=ticket, transition=admission.transition)

    def report(
        self, name: str, slot: str, ticket: Ticket, outcome: Outcome, config: CircuitConfig
    ) -> Report:
        self._check()
        inner = Ticket(ticket.generation, ticket.kind, ticket.bucket, self.inner.origin)
        return self.inner.report(name, slot, inner, outcome, config)

    def snapshot(self, name: str, config: CircuitConfig | None = None) -> Snapshot:
        self._check()
        return self.inner.snapshot(name, config)

    def transition(
        self, name: str, action: Action, reason: str, config: CircuitConfig | None = None
    ) -> Report:
        self._check()
        return self.inner.transition(name, action, reason, config)

    def names(self) -> list[str]:
        self._check()
        return self.inner.names()


def test_fallback_runs_on_memory_while_redis_is_down_and_returns(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    redis_store = FlakyRedis(clock)
    store = FallbackStore(redis_store, probe_interval=5, warn_interval=30, clock=clock)
    breaker = make(store, clock)
    breaker.call(lambda: 1)
    assert redis_store.inner.snapshot("svc").calls == 1

    redis_store.up = False
    with caplog.at_level(logging.WARNING, logger="intent.breaker"):
        for _ in range(50):
            assert breaker.call(lambda: 2) == 2  # calls keep flowing
            clock.advance(0.5)  # 25 s: four probes, one warning
    assert store.degraded
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert redis_store.attempts == 1 + 1 + 4  # before, the failure, one probe per 5 s
    trip(breaker)  # the in-memory breaker still protects
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 3)

    redis_store.up = True
    clock.advance(CONFIG.recovery_timeout)
    assert breaker.call(lambda: 4) == 4
    assert not store.degraded
    assert redis_store.inner.snapshot("svc").calls == 2  # the shared state again


def test_fallback_counts_a_failure_redis_can_no_longer_take(clock: FakeClock) -> None:
    redis_store = FlakyRedis(clock)
    store = FallbackStore(redis_store, clock=clock)
    breaker = make(store, clock)

    def fails_as_redis_dies() -> None:
        redis_store.up = False
        raise Down("and the service failed too")

    with pytest.raises(Down):
        breaker.call(fails_as_redis_dies)
    assert store.fallback.snapshot("svc").failures == 1


def test_a_version_check_in_half_open_lets_the_api_call_be_the_trial(
    store: CountingStore, clock: FakeClock
) -> None:
    """A dead host's breaker half-opens while the version verdict is due: the probe may not
    take the trial, so the API call must (a probe that waited would wait for ever, and
    every analysis with it)."""
    from intent.clients import ContextServiceClient

    breaker = make(store, clock)
    client = ContextServiceClient(
        "http://context.invalid", required_version="1.0.0", version_check_interval=60.0
    )
    client.health = lambda: breaker.probe(lambda: {"version": "1.0.0"})  # type: ignore[method-assign]
    trip(breaker)
    clock.advance(CONFIG.recovery_timeout)
    client.ensure_compatible()  # half-open: not probed, no refusal
    assert breaker.current_state == "half-open"
    assert breaker.call(lambda: "api") == "api"  # the trial
    assert breaker.current_state == "closed"
    probed: list[str] = []
    client.health = lambda: probed.append("health") or {"version": "2.0.0"}  # type: ignore[method-assign]
    with pytest.raises(IncompatibleServiceError):
        client.ensure_compatible()  # closed: probed now, and its verdict holds
    assert probed == ["health"]


def test_a_trial_made_without_a_version_verdict_is_verified_before_its_answer_is_used(
    store: CountingStore, clock: FakeClock
) -> None:
    """The host is back from the dead with another release: the trial call succeeds and
    closes the breaker, then the version probe runs, and the answer is refused."""
    from intent.clients import ContextServiceClient

    breaker = make(store, clock)
    calls: list[str] = []

    class Client(ContextServiceClient):
        def _request(self, method: str, path: str, *_: Any, **options: Any) -> dict[str, Any]:
            calls.append(path)
            guard = breaker.probe if options.get("probe") else breaker.call
            return guard(lambda: {"version": "2.0.0"} if path == "/health" else {"ok": True})

    client = Client("http://context.invalid", required_version="1.0.0")
    trip(breaker)
    clock.advance(CONFIG.recovery_timeout)
    with pytest.raises(IncompatibleServiceError):
        client.get_context("c1")
    assert calls == ["/health", "/api/v1/context/c1", "/health"]  # refused, trial, verdict
    with pytest.raises(IncompatibleServiceError):
        client.get_context("c1")  # the verdict holds: not called again
    assert calls[3:] == []


# -- issue 15: the bulkhead and slow calls through the breaker ---------------------------------


def test_a_call_over_the_bulkhead_asks_again_for_the_bulkhead_wait_then_raises(
    clock: FakeClock,
) -> None:
    config = CircuitConfig(max_concurrent_calls=1, bulkhead_wait=0.5, half_open_timeout=5.0)
    memory = MemoryStore(clock=clock)
    store = CountingStore(memory)
    memory.acquire("svc", "elsewhere", config)  # another process's call, in flight
    breaker = make(store, clock, config=config)
    started = clock.now
    with pytest.raises(BulkheadFullError) as full:
        breaker.call(lambda: "never")
    assert (full.value.service, full.value.limit) == ("svc", 1)
    assert clock.now - started == pytest.approx(0.5)  # waited the bulkhead wait, no longer
    assert store.steps.count("acquire") > 2  # asked again meanwhile (short backoff)
    assert breaker.current_state == "closed"  # a full bulkhead is no failure
    assert breaker.snapshot().failures == 0


def test_a_call_over_the_bulkhead_is_admitted_once_a_slot_frees_within_the_wait(
    clock: FakeClock,
) -> None:
    config = CircuitConfig(max_concurrent_calls=1, bulkhead_wait=1.0, half_open_timeout=0.2)
    memory = MemoryStore(clock=clock)
    memory.acquire("svc", "dead-worker", config)  # its lease lapses after 0.2 s
    breaker = make(CountingStore(memory), clock, config=config)
    started = clock.now
    assert breaker.call(lambda: "ok") == "ok"
    assert 0.2 <= clock.now - started < 1.0


def test_under_a_bulkhead_an_idle_callers_lease_is_given_back_soon() -> None:
    limited = CircuitBreaker("svc", CircuitConfig(max_concurrent_calls=2), store=MemoryStore())
    plain = CircuitBreaker("svc", CircuitConfig(), store=MemoryStore())
    assert limited._held.idle == MIN_IDLE
    assert plain._held.idle == CircuitConfig().slow_call_duration / 4


def test_a_slow_success_rides_on_the_slots_next_acquire(clock: FakeClock) -> None:
    config = CircuitConfig(slow_call_duration=1.0, slow_call_rate_threshold=50.0)
    store = CountingStore(MemoryStore(clock=clock))
    breaker = make(store, clock, config=config)
    breaker.call(lambda: clock.advance(1.5))  # slow, unreported (one store step)
    breaker.call(lambda: "fast")
    breaker.call(lambda: "fast")
    assert store.steps == ["acquire"] * 3
    first, second, third = store.carried
    assert first is None and third is None
    assert second is not None and second.slow  # the slow call's own ticket, counted once


def test_a_slow_failure_is_reported_slow_and_calls_are_not_timed_without_the_rule(
    clock: FakeClock,
) -> None:
    config = CircuitConfig(
        failure_threshold=100,
        min_throughput=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=50.0,
    )
    breaker = make(CountingStore(MemoryStore(clock=clock)), clock, config=config)
    breaker.call(lambda: "fast")

    def slow_down() -> None:
        clock.advance(1.5)
        raise Down

    with pytest.raises(Down):
        breaker.call(slow_down)  # 1 slow of 2 calls: 50 %
    assert breaker.current_state == "open"
    assert breaker.state.reason == "slow-call rate 50% >= 50% over 2 calls in the last 120 s"
    untimed = CountingStore(MemoryStore(clock=clock))
    plain = make(untimed, clock, config=CircuitConfig(slow_call_duration=1.0))
    plain.call(lambda: clock.advance(1.5))
    plain.call(lambda: "fast")
    assert untimed.carried == [None, None]  # the rule is off: nothing is timed or carried
