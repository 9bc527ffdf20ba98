"""Task time limits on a prefork worker: the soft limit turns a hung downstream call into a
retry; both limits are what the settings say."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from intent.dev.stack import WorkerProcess, running_worker
from intent.reference import ReferenceControl, ReferenceServices
from tasks import submit
from tasks.app import app
from tests.helpers import request
from tests.integration.conftest import FAST_RETRY_ENV, api_calls

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("limited_worker")]

LIMITS_ENV = {
    **FAST_RETRY_ENV,
    "INTENT_TASK_SOFT_TIME_LIMIT": "1",
    "INTENT_TASK_TIME_LIMIT": "3",
    # Publishing and parking wait for Redis this long: below the soft limit.
    "INTENT_REDIS_OUTAGE_TOLERANCE": "0.5",
    # A read timeout longer than the soft limit, so the limit is what ends the call.
    "INTENT_PREDICTION_READ_TIMEOUT": "10",
}


@pytest.fixture(scope="module")
def limited_worker(reference: ReferenceServices) -> Iterator[WorkerProcess]:
    with running_worker(concurrency=2, env=LIMITS_ENV, loglevel="INFO") as worker:
        yield worker


def test_the_worker_runs_with_the_configured_limits(limited_worker: WorkerProcess) -> None:
    conf = app.control.inspect([limited_worker.name], timeout=2).conf() or {}
    settings = conf[limited_worker.name]
    assert settings["task_soft_time_limit"] == 1.0
    assert settings["task_time_limit"] == 3.0
    assert settings["task_acks_late"] is True
    assert settings["task_reject_on_worker_lost"] is True


def test_a_call_hung_past_the_soft_limit_is_retried(
    clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    prediction_service.set_faults(latency_ms=5000, count=1)  # only the first call hangs
    result = submit(request()).get(timeout=30)

    assert result.status == "completed"
    assert result.retries == {"predict": 1}
    calls = api_calls(prediction_service)
    assert len(calls) == 2
    # The retry went out once the soft limit (1 s) cut the first call, long before 5 s.
    assert 1.0 <= calls[1]["time"] - calls[0]["time"] < 3.0
