"""The objects every task of a threads worker shares, hammered from 32 threads against the
real Valkey and reference services: the breaker on its Redis store (the raw-RESP
connections it keeps in a deque), the shared rate limit, one HTTP client, and a call cut
to the step's time left."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from intent import pools
from intent.breaker import CircuitBreaker, CircuitBreakerListener, CircuitConfig, RedisStore
from intent.clients import ContextServiceClient
from intent.errors import (
    CircuitOpenError,
    RateLimitExceeded,
    ServiceUnavailableError,
    TimeLimitReached,
)
from intent.keys import Keys
from intent.ratelimit import PREDICT, RateLimits
from intent.reference import ReferenceControl
from intent.settings import Settings
from tests.integration.conftest import api_calls

pytestmark = pytest.mark.integration

THREADS = 32


def in_threads(work: Callable[[int], Any], threads: int = THREADS) -> list[Any]:
    """``work(index)`` in ``threads`` threads released together; each one's answer (or the
    error it raised)."""
    barrier = threading.Barrier(threads)
    answers: list[Any] = [None] * threads

    def run(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = work(index)
        except BaseException as exc:
            answers[index] = exc

    started = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(60)
    assert not any(thread.is_alive() for thread in started)
    return answers


class Transitions(CircuitBreakerListener):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        with self._lock:
            self.seen.append((str(old_state), str(new_state)))


def failing() -> None:
    raise ServiceUnavailableError("svc", "down")


def test_the_redis_store_counts_every_call_of_32_threads_exactly(
    redis_client: redis.Redis, redis_url: str
) -> None:
    calls_each, fail_every = 40, 4
    # Never trips, never throttles: every call is admitted and counted.
    config = CircuitConfig(failure_threshold=100_000, min_throughput=100_000)
    breaker = CircuitBreaker(
        f"hammer-{uuid.uuid4().hex[:6]}", config, store=RedisStore.from_url(redis_url)
    )

    def calls(index: int) -> tuple[int, int]:
        answered = failed = 0
        for i in range(calls_each):
            try:
                if i % fail_every == 0:
                    breaker.call(failing)
                else:
                    assert breaker.call(lambda i=i: (index, i)) == (index, i)
                    answered += 1
            except ServiceUnavailableError:
                failed += 1
        return answered, failed

    answers = in_threads(calls)
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    total, failures = THREADS * calls_each, THREADS * calls_each // fail_every
    assert sum(a for a, _ in answers) == total - failures
    snapshot = breaker.snapshot()
    assert snapshot.state == "closed"
    assert snapshot.calls == total  # every acquire counted once, no reply crossed
    assert snapshot.failures == failures
    # Each thread's last call holds its lease until the idle give-back frees it.
    deadline = time.monotonic() + 10
    while breaker.snapshot().in_flight:
        assert time.monotonic() < deadline, breaker.snapshot()
        time.sleep(0.1)


def test_32_threads_trip_the_breaker_once_and_close_it_with_one_trial(
    redis_client: redis.Redis, redis_url: str
) -> None:
    threshold = 5
    config = CircuitConfig(
        failure_threshold=threshold,
        min_throughput=threshold,
        recovery_timeout=1.0,
        recheck_interval=0.2,
    )
    transitions = Transitions()
    breaker = CircuitBreaker(
        f"trip-{uuid.uuid4().hex[:6]}",
        config,
        store=RedisStore.from_url(redis_url),
        listeners=[transitions],
    )
    reached, healthy = [0], [0]
    count = threading.Lock()

    def dead() -> None:
        with count:
            reached[0] += 1
        raise ServiceUnavailableError("svc", "down")

    def alive() -> str:
        with count:
            healthy[0] += 1
        return "ok"

    def until_refused(_: int) -> int:
        calls = 0
        while True:
            try:
                breaker.call(dead)
            except CircuitOpenError:
                return calls
            except ServiceUnavailableError:
                calls += 1

    # A first failure is pending: from then on calls are admitted only while failures and
    # calls in flight stay under the threshold, whatever number of threads ask at once.
    with pytest.raises(ServiceUnavailableError):
        breaker.call(dead)
    answers = in_threads(until_refused)
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    assert reached[0] == 1 + sum(answers)
    assert 1 < reached[0] <= threshold  # the dead service met at most the threshold
    assert transitions.seen == [("closed", "open")]  # one trip, announced once

    time.sleep(config.recovery_timeout)

    def until_answered(_: int) -> str:
        deadline = time.monotonic() + 10
        while True:
            try:
                return str(breaker.call(alive))
            except CircuitOpenError:
                assert time.monotonic() < deadline
                time.sleep(0.02)

    answers = in_threads(until_answered)
    assert answers == ["ok"] * THREADS
    assert healthy[0] == THREADS  # the trial, then every thread once the trial closed it
    assert transitions.seen == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert breaker.snapshot().state == "closed"


def test_a_shared_rate_limit_admits_exactly_its_amount_from_32_threads(
    redis_client: redis.Redis, redis_url: str
) -> None:
    amount = 100
    settings = Settings(redis_url=redis_url, rate_limit_predict=amount)
    limits = RateLimits(settings, Keys(settings.key_prefix))

    def hits(_: int) -> tuple[int, int]:
        admitted = refused = 0
        for _ in range(10):
            try:
                limits.hit(PREDICT)
                admitted += 1
            except RateLimitExceeded:
                refused += 1
        return admitted, refused

    answers = in_threads(hits)
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    assert sum(a for a, _ in answers) == amount
    assert sum(r for _, r in answers) == THREADS * 10 - amount
    assert limits[PREDICT].status().current == amount


def test_one_client_serves_32_threads_each_its_own_answer(
    context_service: ReferenceControl,
) -> None:
    client = ContextServiceClient(context_service.base_url, pool_size=THREADS)
    calls_each = 10

    def calls(index: int) -> list[str]:
        return [
            str(client.get_context(f"ctx-{index}-{i}")["context_id"]) for i in range(calls_each)
        ]

    answers = in_threads(calls)
    client.close()
    assert answers == [[f"ctx-{t}-{i}" for i in range(calls_each)] for t in range(THREADS)]
    assert len(api_calls(context_service)) == THREADS * calls_each


def test_a_hung_call_ends_with_the_steps_time_and_counts_as_a_failure(
    redis_client: redis.Redis, redis_url: str, context_service: ReferenceControl
) -> None:
    context_service.set_faults(latency_ms=10_000)
    counting = CircuitConfig(failure_threshold=100, min_throughput=100)  # counts, no trip
    breaker = CircuitBreaker(
        f"hung-{uuid.uuid4().hex[:6]}", counting, store=RedisStore.from_url(redis_url)
    )
    hits: list[str] = []
    client = ContextServiceClient(
        context_service.base_url, read_timeout=30.0, guard=breaker.call, limiter=hits.append
    )

    def hung(_: int) -> float:
        started = time.monotonic()
        with pools.step_time_limit(0.5), pytest.raises(TimeLimitReached):
            client.get_context("ctx-hung")
        return time.monotonic() - started

    took = in_threads(hung, threads=8)
    assert all(isinstance(t, float) and 0.45 <= t < 2.0 for t in took), took
    assert breaker.snapshot().failures == 8  # the service did not answer in time
    assert len(hits) == 8

    with pools.step_time_limit(0.01):  # out of time: nothing is called, nothing counted
        time.sleep(0.02)
        with pytest.raises(TimeLimitReached):
            client.get_context("ctx-late")
    assert len(hits) == 8
    client.close()
