"""The retry schedule, exactly: pure functions, injected randomness and sleep."""

from __future__ import annotations

import pytest

from intent.errors import RetriesExhaustedError, ServiceRequestError, ServiceUnavailableError
from intent.retry import Backoff, RetryHandler
from intent.settings import Settings


def test_default_schedule_is_1_2_4_seconds_with_at_most_25_percent_jitter() -> None:
    backoff = Backoff.from_settings(Settings())
    assert backoff.max_retries == 3
    assert backoff.schedule() == [(0.75, 1.0), (1.5, 2.0), (3.0, 4.0)]


def test_delay_bounds_follow_the_random_draw() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, jitter=0.25, max_retries=3)
    assert backoff.delay(0, rand=lambda: 0.0) == 1.0
    assert backoff.delay(0, rand=lambda: 1.0) == 0.75
    assert backoff.delay(2, rand=lambda: 0.5) == pytest.approx(3.5)


def test_delay_is_capped_at_max_delay() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, jitter=0.0, max_retries=8)
    assert [backoff.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_retry_after_lengthens_but_never_shortens_the_wait() -> None:
    backoff = Backoff(jitter=0.0)
    assert backoff.countdown(0, retry_after=5.0, cap=60.0) == 5.0
    assert backoff.countdown(2, retry_after=0.5, cap=60.0) == 4.0
    assert backoff.countdown(0, retry_after=600.0, cap=60.0) == 60.0


def test_retry_handler_sleeps_the_schedule_then_gives_up_with_the_cause() -> None:
    slept: list[float] = []
    handler = RetryHandler(Backoff(), sleep=slept.append, rand=lambda: 0.0)
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        raise ServiceUnavailableError("context-service", "HTTP 503")

    with pytest.raises(RetriesExhaustedError) as info:
        handler.with_retry(failing)
    assert calls == 4
    assert slept == [1.0, 2.0, 4.0]
    assert info.value.service == "context-service"
    assert "HTTP 503" in str(info.value.cause)


def test_retry_handler_does_not_retry_permanent_errors() -> None:
    slept: list[float] = []
    handler = RetryHandler(Backoff(), sleep=slept.append)

    def rejected() -> None:
        raise ServiceRequestError("context-service", 404, "not found")

    with pytest.raises(ServiceRequestError):
        handler.with_retry(rejected)
    assert slept == []


def test_retry_handler_returns_after_a_transient_failure() -> None:
    outcomes = iter([ServiceUnavailableError("p", "timeout"), "ok"])

    def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert RetryHandler(Backoff(), sleep=lambda s: None).with_retry(flaky) == "ok"
