"""The one recovery decision for a failed step, as a pure function: two budgets (transient
retries, waits for breakers and limits), never Celery's retry counter; deadlines; fallbacks."""

from __future__ import annotations

import random

import pytest
import redis

from intent.errors import (
    BulkheadFullError,
    CircuitOpenError,
    IncompatibleServiceError,
    RateLimitExceeded,
    RetriesExhaustedError,
    RetryBudgetExceeded,
    ServiceRequestError,
    ServiceUnavailableError,
    ValidationError,
)
from intent.pipeline.recovery import (
    Attempt,
    Budgets,
    Defer,
    Expire,
    Fail,
    Retry,
    decide,
    wait_for,
)
from intent.retry import Backoff

NOW = 1_000_000.0
BUDGETS = Budgets(
    retry_max=3,
    max_deferral=600,
    recovery_timeout=60,
    defer_jitter=1.0,
    backoff=Backoff(initial=1, maximum=10, jitter=0.25, max_retries=3),
)
DOWN = ServiceUnavailableError("context-service", "connection refused")


def no_jitter() -> float:
    return 0.0


def test_transient_errors_retry_on_the_schedule_then_exhaust() -> None:
    countdowns = []
    attempt = Attempt("fetch_context")
    for retry in range(3):
        decision = decide(DOWN, attempt, BUDGETS, NOW, no_jitter)
        assert not decision.fallback
        assert isinstance(decision.then, Retry)
        assert decision.then.retry == retry + 1
        countdowns.append(decision.then.countdown)
        attempt = Attempt("fetch_context", retries=decision.then.retry)
    assert countdowns == [1.0, 2.0, 4.0]
    final = decide(DOWN, attempt, BUDGETS, NOW, no_jitter)
    assert final.fallback  # the stale context may still serve
    assert isinstance(final.then, Fail)
    assert isinstance(final.then.error, RetriesExhaustedError)
    assert final.then.error.service == "context-service"


def test_deferrals_never_spend_a_retry_nor_count_against_one() -> None:
    """Ten deferrals, then the retries the step still has: the budgets are apart."""
    attempt = Attempt("fetch_context", retries=2)
    for _ in range(10):
        decision = decide(CircuitOpenError("context-service", NOW + 5), attempt, BUDGETS, NOW)
        assert isinstance(decision.then, Defer)
        attempt = Attempt(
            "fetch_context", attempt.retries, attempt.deferred_seconds + decision.then.delay
        )
    assert attempt.retries == 2
    assert isinstance(decide(DOWN, attempt, BUDGETS, NOW).then, Retry)


def test_retried_twice_then_deferred_five_times_then_retried_once_more() -> None:
    attempt = Attempt("predict", retries=2)
    for _ in range(5):
        decision = decide(RateLimitExceeded("predict 1000/60s", 3.0), attempt, BUDGETS, NOW)
        assert isinstance(decision.then, Defer) and not decision.fallback
        attempt = Attempt("predict", 2, attempt.deferred_seconds + decision.then.delay)
    decision = decide(DOWN, attempt, BUDGETS, NOW, no_jitter)
    assert isinstance(decision.then, Retry) and decision.then.retry == 3


def test_an_open_breaker_is_waited_for_until_its_trial_plus_jitter() -> None:
    random.seed(1)
    delays = [wait_for(CircuitOpenError("svc", NOW + 12.5), BUDGETS, NOW) for _ in range(200)]
    assert min(delays) >= 12.5
    assert max(delays) <= 13.5
    assert max(delays) - min(delays) > 0.5  # the fleet is spread, not synchronised
    decision = decide(CircuitOpenError("svc", NOW + 12.5), Attempt("fetch_context"), BUDGETS, NOW)
    assert decision.fallback  # an open breaker's fallback answers first
    assert isinstance(decision.then, Defer)


def test_a_past_until_means_now_and_an_unknown_or_skewed_one_at_most_a_recovery() -> None:
    assert wait_for(CircuitOpenError("svc", NOW - 100), BUDGETS, NOW) <= 1.0
    assert 60.0 <= wait_for(CircuitOpenError("svc", None), BUDGETS, NOW) <= 61.0
    assert wait_for(CircuitOpenError("svc", NOW + 3600), BUDGETS, NOW) <= 61.0
    assert wait_for(RateLimitExceeded("x", 3600.0), BUDGETS, NOW) <= 61.0


def test_the_deferral_budget_ends_the_wait_with_the_breakers_error() -> None:
    error = CircuitOpenError("svc", NOW + 60)
    attempt = Attempt("fetch_context", deferred_seconds=560.0)
    decision = decide(error, attempt, BUDGETS, NOW, no_jitter)
    assert isinstance(decision.then, Fail) and decision.then.error is error


def test_a_wait_past_the_deadline_expires_the_analysis() -> None:
    attempt = Attempt("fetch_context", deadline=NOW + 10)
    assert isinstance(decide(CircuitOpenError("svc", NOW + 30), attempt, BUDGETS, NOW).then, Expire)
    late_retry = Attempt("fetch_context", retries=2, deadline=NOW + 2)  # backoff is 3-4 s
    decision = decide(DOWN, late_retry, BUDGETS, NOW)
    assert isinstance(decision.then, Expire) and decision.fallback


def test_retry_after_lengthens_the_wait_up_to_its_cap() -> None:
    asked = ServiceUnavailableError("svc", "HTTP 429", retry_after=30.0)
    assert decide(asked, Attempt("predict"), BUDGETS, NOW, no_jitter).then == Retry(30.0, 1, asked)
    greedy = ServiceUnavailableError("svc", "HTTP 429", retry_after=900.0)
    then = decide(greedy, Attempt("predict"), BUDGETS, NOW, no_jitter).then
    assert isinstance(then, Retry) and then.countdown == BUDGETS.retry_after_max


@pytest.mark.parametrize(
    "error",
    [
        ValidationError("client_id", "bad"),
        ServiceRequestError("svc", 404, "no such context"),
        KeyError("a bug"),
    ],
)
def test_permanent_errors_fail_at_once_without_a_fallback(error: Exception) -> None:
    decision = decide(error, Attempt("fetch_context"), BUDGETS, NOW)
    assert decision == decide(error, Attempt("fetch_context", retries=0), BUDGETS, NOW)
    assert not decision.fallback
    assert isinstance(decision.then, Fail) and decision.then.error is error


def test_an_incompatible_service_is_not_retried_but_its_fallback_may_serve() -> None:
    error = IncompatibleServiceError("context-service", "incompatible version 2.0.0")
    decision = decide(error, Attempt("fetch_context"), BUDGETS, NOW)
    assert decision.fallback and isinstance(decision.then, Fail)


def test_a_redis_that_is_away_is_a_transient_failure() -> None:
    decision = decide(redis.ConnectionError("refused"), Attempt("detect_pattern"), BUDGETS, NOW)
    assert isinstance(decision.then, Retry)
    assert isinstance(decision.then.error, ServiceUnavailableError)
    assert decision.then.error.service == "redis"


# -- the retry budget ----------------------------------------------------------------------


class Ledger:
    """A budget that grants ``left`` retries, then refuses with ``wait`` seconds."""

    def __init__(self, left: int, wait: float = 6.0):
        self.left, self.wait, self.asked = left, wait, []  # type: list[str]

    def spend(self, service: str) -> float | None:
        self.asked.append(service)
        if self.left > 0:
            self.left -= 1
            return None
        return self.wait


def test_a_retry_spends_the_services_budget() -> None:
    ledger = Ledger(left=1)
    decision = decide(DOWN, Attempt("fetch_context"), BUDGETS, NOW, no_jitter, ledger.spend)
    assert isinstance(decision.then, Retry) and not decision.fallback
    assert ledger.asked == ["context-service"]


def test_over_budget_the_fallback_answers_else_the_step_waits_spending_no_retry() -> None:
    ledger = Ledger(left=0, wait=6.0)
    attempt = Attempt("fetch_context", retries=1, deferred_seconds=10.0)
    decision = decide(DOWN, attempt, BUDGETS, NOW, no_jitter, ledger.spend)
    assert decision.fallback
    assert isinstance(decision.then, Defer)
    assert isinstance(decision.then.error, RetryBudgetExceeded)
    assert decision.then.error.service == "context-service"
    assert decision.then.delay == 6.0  # until the budget's next bucket (no jitter drawn)
    # Its next run calls the service again: that is its second retry, counted as one.
    assert decision.then.retry == 2
    assert "retry budget spent" in str(decision.then.error)


def test_over_budget_past_the_deadline_the_analysis_expires_not_fails() -> None:
    ledger = Ledger(left=0, wait=6.0)
    attempt = Attempt("predict", deadline=NOW + 3.0)
    decision = decide(DOWN, attempt, BUDGETS, NOW, no_jitter, ledger.spend)
    assert isinstance(decision.then, Expire)


@pytest.mark.parametrize(
    "error, attempt",
    [
        (ValidationError("data", "bad"), Attempt("fetch_context")),  # permanent
        (CircuitOpenError("context-service", NOW + 5), Attempt("fetch_context")),  # a wait
        (RateLimitExceeded("predict", 2.0), Attempt("predict")),  # a wait
        (DOWN, Attempt("fetch_context", retries=3)),  # the step's own retries are spent
    ],
)
def test_only_a_retry_about_to_happen_asks_the_budget(error: Exception, attempt: Attempt) -> None:
    ledger = Ledger(left=5)
    decide(error, attempt, BUDGETS, NOW, no_jitter, ledger.spend)
    assert ledger.asked == []


def test_a_full_bulkhead_defers_without_spending_a_retry_nor_using_the_fallback() -> None:
    full = BulkheadFullError("context-service", 4)
    attempt = Attempt("fetch_context", retries=1)
    decision = decide(full, attempt, BUDGETS, NOW, lambda: 0.5)
    assert isinstance(decision.then, Defer)
    assert decision.then.error is full
    assert decision.then.delay == 0.5  # a slot frees when any call ends: the jitter alone
    assert not decision.fallback  # the service is busy, not failing: its answer is awaited
    assert attempt.retries == 1
    over = Attempt("fetch_context", retries=1, deferred_seconds=BUDGETS.max_deferral)
    assert isinstance(decide(full, over, BUDGETS, NOW, lambda: 0.5).then, Fail)
    near = Attempt("fetch_context", retries=1, deadline=NOW + 0.1)
    assert isinstance(decide(full, near, BUDGETS, NOW, lambda: 0.5).then, Expire)


def test_a_bulkhead_error_survives_a_json_round_trip_of_its_args() -> None:
    import json

    full = BulkheadFullError("prediction-service", 8)
    rebuilt = BulkheadFullError(*json.loads(json.dumps(full.args)))
    assert (rebuilt.service, rebuilt.limit, str(rebuilt)) == (
        "prediction-service",
        8,
        str(full),
    )
    assert rebuilt.transient
