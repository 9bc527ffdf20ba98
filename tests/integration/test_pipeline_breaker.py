"""The shared breaker in the pipeline: a prefork worker of several processes against a dead
Context Service, deferral instead of spent retries, and giving up after the deferral cap."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from intent.breaker import CircuitAdmin
from intent.dev.stack import WorkerProcess, running_worker
from intent.errors import CircuitOpenError
from intent.reference import ReferenceControl
from intent.runtime import get_runtime
from tasks import submit
from tests.helpers import request
from tests.integration.conftest import FAST_RETRY_ENV, ReferenceServices, api_calls

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("breaker_worker")]

THRESHOLD = 5
BREAKER_ENV = {
    **FAST_RETRY_ENV,
    "INTENT_CIRCUIT_FAILURE_THRESHOLD": str(THRESHOLD),
    "INTENT_CIRCUIT_MIN_THROUGHPUT": str(THRESHOLD),
    "INTENT_CIRCUIT_RECOVERY_TIMEOUT": "2",
    "INTENT_DEFER_JITTER": "0.2",
    "INTENT_MAX_DEFERRAL": "5",
}


@pytest.fixture(scope="module")
def breaker_worker(reference: ReferenceServices) -> Iterator[WorkerProcess]:
    with running_worker(concurrency=4, env=BREAKER_ENV, loglevel="INFO") as worker:
        yield worker


@pytest.fixture
def admin(clean: redis.Redis) -> CircuitAdmin:
    return CircuitAdmin(get_runtime().breaker_store)


def _wait_for_state(admin: CircuitAdmin, name: str, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while admin.status(name).state != state:
        assert time.monotonic() < deadline, f"{name} never became {state}"
        time.sleep(0.02)


def test_a_dead_service_gets_at_most_threshold_calls_then_analyses_complete(
    admin: CircuitAdmin, context_service: ReferenceControl
) -> None:
    context_service.set_faults(down=True)
    tag = uuid.uuid4().hex[:8]
    analyses = [
        submit(request(request_id=f"dead-{tag}-{i}", context_id=f"ctx-{i}")) for i in range(16)
    ]
    _wait_for_state(admin, "context-service", "open", timeout=10)
    time.sleep(1.0)  # every process has met the open breaker by now; none calls
    calls_while_down = len(api_calls(context_service))
    print(f"calls while down: {calls_while_down}")
    assert 1 <= calls_while_down <= THRESHOLD

    context_service.clear_faults()  # the service recovers before the trial is admitted
    results = [a.get(timeout=30) for a in analyses]

    assert all(r.status == "completed" for r in results)
    assert sum(sum(r.deferrals.values()) for r in results) >= len(results) - THRESHOLD
    assert all(sum(r.retries.values()) <= 3 for r in results)
    assert admin.status("context-service").state == "closed"


def test_an_analysis_gives_up_with_circuit_open_after_the_deferral_cap(
    admin: CircuitAdmin, context_service: ReferenceControl
) -> None:
    admin.force_open("context-service", "maintenance window")
    try:
        analysis = submit(request())
        started = time.monotonic()
        with pytest.raises(CircuitOpenError) as info:
            analysis.get(timeout=30)
        waited = time.monotonic() - started
    finally:
        admin.reset("context-service", "test over")

    assert info.value.service == "context-service"
    assert 3.0 <= waited <= 10.0  # deferred (2 s + jitter each) until past the 5 s cap
    assert api_calls(context_service) == []  # rejections never reached the service
    status = admin.status("context-service")
    assert status.failures == 0  # and never counted as downstream failures
