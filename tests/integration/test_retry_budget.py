"""The fleet-wide retry budget on a real Redis: processes are forked, start together behind a
barrier, make guarded calls to a service that always fails and ask the budget for a retry
after each; the budget's script answers atomically for all of them."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import uuid
from multiprocessing.synchronize import Barrier

import pytest
import redis

from intent.breaker import CircuitBreaker, CircuitConfig, RedisStore
from intent.breaker.stores.redis import BreakerKeys
from intent.budget import RetryBudget
from intent.errors import RetryBudgetExceeded, ServiceUnavailableError
from intent.keys import Keys
from intent.pipeline import recovery

pytestmark = pytest.mark.integration

FORK = multiprocessing.get_context("fork")

# Buckets of 30 s (failure_window / 20) and a budget window of two of them: a test of a few
# seconds stays inside one budget window, so its totals are the budget's own.
FAILURE_WINDOW = 600.0
WINDOW = 60.0
PERCENT = 20.0
FLOOR = 0.05  # per second: 3 retries over the 60 s window
PROCESSES = 4
CALLS_EACH = 60


def _budget(url: str, percent: float = PERCENT, floor: float = FLOOR) -> RetryBudget:
    client = redis.Redis.from_url(url)
    return RetryBudget(client, Keys(), FAILURE_WINDOW, percent, floor, WINDOW)


def _config() -> CircuitConfig:
    # Never trips: every call reaches the failing service, and is counted by the breaker.
    return CircuitConfig(failure_threshold=10_000, failure_window=FAILURE_WINDOW)


def _failing() -> None:
    raise ConnectionRefusedError("connection refused")


def _call_and_retry(url: str, name: str, barrier: Barrier) -> None:
    breaker = CircuitBreaker(name, _config(), store=RedisStore.from_url(url))
    budget = _budget(url)
    log = redis.Redis.from_url(url)
    barrier.wait()
    for _ in range(CALLS_EACH):
        with contextlib.suppress(ConnectionRefusedError):
            breaker.call(_failing)
        granted = budget.spend(name) is None
        log.rpush(f"intent:test:{name}:spends", "granted" if granted else "refused")


def test_retries_stay_within_the_budget_and_its_floor_across_four_processes(
    redis_client: redis.Redis,
) -> None:
    url = os.environ["INTENT_REDIS_URL"]
    name = f"budget-{uuid.uuid4().hex[:8]}"
    barrier = FORK.Barrier(PROCESSES)
    workers = [
        FORK.Process(target=_call_and_retry, args=(url, name, barrier)) for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0, f"worker exited with {worker.exitcode}"

    spends = [str(s) for s in redis_client.lrange(f"intent:test:{name}:spends", 0, -1)]
    calls = PROCESSES * CALLS_EACH
    assert len(spends) == calls
    status = _budget(url).status(name)
    assert status.calls == calls  # the breaker counted every call; the budget read them
    allowance = PERCENT / 100 * calls + FLOOR * WINDOW  # 48 + 3
    granted = spends.count("granted")
    assert status.retries == granted
    # Never over the budget, fleet-wide, though each process asked after every call...
    assert granted <= allowance
    # ...and the budget was spent, not refused wholesale: a refused ask leaves room that
    # later calls refill, so the fleet ends within a few retries of the allowance.
    assert granted >= allowance - PROCESSES
    assert spends.count("refused") == calls - granted > 0
    # Its own key, none of the breaker's: the breaker's slow-call counts hold no retries.
    breaker_keys = BreakerKeys.of(Keys(), name)
    assert redis_client.exists(breaker_keys.slow) == 0
    assert sum(int(n) for n in redis_client.hvals(Keys().retry_budget(name))) == granted


def test_the_floor_lets_a_quiet_service_be_retried_and_nothing_more(
    redis_client: redis.Redis,
) -> None:
    url = os.environ["INTENT_REDIS_URL"]
    name = f"budget-{uuid.uuid4().hex[:8]}"
    budget = _budget(url, percent=PERCENT, floor=FLOOR)
    # No calls counted at all: the floor alone, 3 retries over the window.
    answers = [budget.spend(name) for _ in range(5)]
    assert answers[:3] == [None, None, None]
    refused = answers[3:]
    assert all(wait is not None and 0 < wait <= FAILURE_WINDOW / 20 for wait in refused)


def test_an_unreachable_redis_allows_the_retry(caplog: pytest.LogCaptureFixture) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    budget = RetryBudget(dead, Keys(), FAILURE_WINDOW, PERCENT, FLOOR, WINDOW)
    with caplog.at_level("WARNING", logger="intent.budget"):
        assert budget.spend("context-service") is None
        assert budget.spend("context-service") is None
    warnings = [r for r in caplog.records if "retry budget: Redis unreachable" in r.message]
    assert len(warnings) == 1  # once per interval, not once per retry


def test_a_step_over_budget_is_deferred_by_the_recovery_decision(redis_client: redis.Redis) -> None:
    url = os.environ["INTENT_REDIS_URL"]
    name = f"budget-{uuid.uuid4().hex[:8]}"
    budget = _budget(url, percent=0.0, floor=1 / WINDOW)  # one retry in all
    error = ServiceUnavailableError(name, "503")
    attempt = recovery.Attempt("predict", retries=0, deferred_seconds=0.0)
    first = recovery.decide(error, attempt, recovery.Budgets(), 1000.0, spend=budget.spend)
    assert isinstance(first.then, recovery.Retry)
    second = recovery.decide(error, attempt, recovery.Budgets(), 1000.0, spend=budget.spend)
    assert second.fallback  # the step's fallback answers if it has one...
    assert isinstance(second.then, recovery.Defer)  # ...else it waits, no retry spent
    assert isinstance(second.then.error, RetryBudgetExceeded)
    assert budget.status(name).retries == 1


def test_operators_see_the_budgets_in_the_cli_and_the_admin_endpoint(
    redis_client: redis.Redis,
) -> None:
    from werkzeug.test import Client

    from intent.ops.admin import build_app
    from intent.runtime import get_runtime, reset_runtime

    reset_runtime()
    budget = get_runtime().retry_budget
    for _ in range(3):
        assert budget.spend("prediction-service") is None
    env = {**os.environ, "INTENT_LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", "budgets", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    shown = {row["service"]: row for row in json.loads(out.stdout)}
    assert set(shown) == {"context-service", "prediction-service"}
    assert shown["prediction-service"]["retries"] >= 3
    # The rule's window: 10 s rounded up to whole 6 s buckets of the 120 s failure window.
    assert shown["prediction-service"]["window"] == 12.0
    assert shown["prediction-service"]["allowance"] >= 10 * 12.0

    response = Client(build_app()).get("/admin/budgets")
    assert response.status_code == 200
    rows = {row["service"]: row for row in response.get_json()["budgets"]}
    assert rows["prediction-service"]["retries"] == shown["prediction-service"]["retries"]
