"""The chain on a real ``celery worker -P prefork`` subprocess: retry schedules, worker
loss, concurrency."""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid

import pytest
import redis

from intent.dev.stack import WorkerProcess
from intent.errors import RetriesExhaustedError, ServiceRequestError
from intent.models import IntentEvent
from intent.reference import ReferenceControl
from intent.reference.data import context_for, predictions_for
from intent.runtime import get_runtime
from tasks import submit
from tasks.app import app
from tests.helpers import request, stream_events
from tests.integration.conftest import api_calls

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]

# FAST_RETRY_ENV: retry n waits within [0.75, 1.0] x 0.2 * 2**n seconds.
SCHEDULE = [(0.15, 0.2), (0.3, 0.4), (0.6, 0.8)]
# What a real worker adds on top of the countdown: message round trip, ETA timer, HTTP.
OVERHEAD = 0.35


def arrival_gaps(control: ReferenceControl) -> list[float]:
    times = [r["time"] for r in api_calls(control)]
    return [b - a for a, b in itertools.pairwise(times)]


def test_retries_follow_the_backoff_schedule(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    context_service.set_faults(status=503, count=3)
    result = submit(request()).get(timeout=30)

    assert result.status == "completed"
    assert result.retries == {"fetch_context": 3}
    gaps = arrival_gaps(context_service)
    assert len(gaps) == 3
    for gap, (shortest, longest) in zip(gaps, SCHEDULE, strict=True):
        assert shortest - 0.01 <= gap <= longest + OVERHEAD, (gaps, SCHEDULE)


def test_retry_after_from_the_service_is_honoured(
    clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    prediction_service.set_faults(status=429, count=1, retry_after=1.5)
    result = submit(request()).get(timeout=30)

    assert result.retries == {"predict": 1}
    (gap,) = arrival_gaps(prediction_service)
    assert gap >= 1.5 - 0.01


def test_exhausted_retries_fail_the_analysis_with_the_cause(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    context_service.set_faults(status=503)
    payload = request()
    analysis = submit(payload)
    with pytest.raises(RetriesExhaustedError) as info:
        analysis.get(timeout=30)

    assert info.value.service == "context-service"
    assert "HTTP 503" in (info.value.cause or "")
    assert len(api_calls(context_service)) == 4  # the call and three retries
    assert stream_events(clean, payload["request_id"]) == []


@pytest.mark.parametrize("status", [404, 422])
def test_permanent_errors_are_not_retried(
    clean: redis.Redis, context_service: ReferenceControl, status: int
) -> None:
    context_service.set_faults(status=status)
    with pytest.raises(ServiceRequestError) as info:
        submit(request()).get(timeout=15)
    assert info.value.status == status
    time.sleep(0.5)  # a retry, had one been scheduled, would be due by now
    assert len(api_calls(context_service)) == 1


def _running_pid(worker: WorkerProcess, task_id: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = app.control.inspect([worker.name], timeout=1).active() or {}
        for task in active.get(worker.name, []):
            if task["id"] == task_id:
                return int(task["worker_pid"])
        time.sleep(0.05)
    raise AssertionError(f"{task_id} never showed up as running")


def test_sigkill_of_the_pool_process_mid_analysis_loses_nothing(
    clean: redis.Redis,
    prefork_worker: WorkerProcess,
    prediction_service: ReferenceControl,
) -> None:
    prediction_service.set_faults(latency_ms=3000, count=1)  # the first predict call hangs
    payload = request()
    analysis = submit(payload)
    pid = _running_pid(prefork_worker, f"{payload['request_id']}.predict")
    assert pid in prefork_worker.child_pids()
    os.kill(pid, signal.SIGKILL)

    result = analysis.get(timeout=60)
    assert result.status == "completed"
    events = stream_events(clean, payload["request_id"])
    assert [e.id for e in events] == [e.id for e in result.events]
    assert len({e.id for e in events}) == len(events) > 0
    assert pid not in prefork_worker.child_pids()


def _detecting_context() -> str:
    """A context id whose predictions for 'checkout' clear the detection threshold."""
    for n in range(1000):
        context = context_for(f"ctx-race-{n}", 1)
        preds = predictions_for("checkout", context)["predictions"]
        if max(p["confidence"] for p in preds) >= 0.7:
            return f"ctx-race-{n}"
    raise AssertionError("no detecting context in the reference data")


def test_concurrent_analyses_of_one_key_detect_once(clean: redis.Redis) -> None:
    context_id = _detecting_context()
    tag = uuid.uuid4().hex[:8]
    analyses = [
        submit(request(request_id=f"race-{tag}-{i}", context_id=context_id)) for i in range(12)
    ]
    results = [a.get(timeout=60) for a in analyses]

    detected = [r for r in results if IntentEvent.PATTERN_DETECTED in [e.type for e in r.events]]
    assert len(detected) == 1
    assert all(IntentEvent.PREDICTION_RECEIVED in [e.type for e in r.events] for r in results)
    assert not any(IntentEvent.PATTERN_UPDATED in [e.type for e in r.events] for r in results)
    stream_types = [e.type for e in stream_events(clean) if e.request_id.startswith(f"race-{tag}")]
    assert stream_types.count(IntentEvent.PATTERN_DETECTED) == 1


def test_an_operators_reset_releases_the_steps_waiting_for_the_breaker(
    clean: redis.Redis,
) -> None:
    """Forced open, a step waits a recovery timeout (60 s) for the breaker; the operator's
    reset releases it at once, and a step waiting for a retry's backoff is left alone."""
    circuits = get_runtime().circuits
    settings = get_runtime().settings
    circuits.force_open("context-service", "drill")
    try:
        analysis = submit(request(context_id="ctx-woken"))
        deadline = time.monotonic() + 20
        while not get_runtime().waiting.depth().get("get_context"):
            assert time.monotonic() < deadline, "the step never parked for the breaker"
            time.sleep(0.05)
    finally:
        circuits.reset("context-service", "drill over")
    result = analysis.get(timeout=settings.circuit_recovery_timeout / 2)
    assert result.status == "completed"
    assert result.deferrals == {"fetch_context": 1}
    assert result.deferred_seconds < settings.circuit_recovery_timeout / 2
