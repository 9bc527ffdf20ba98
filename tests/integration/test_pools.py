"""The pipeline on a real ``-P threads -c 16`` worker and a real ``-P gevent -c 50`` worker:
analyses under load each done once, the shared breaker tripping and recovering under load,
and a hung downstream call, or one whose answer trickles in, ended at the step's soft time
limit, which neither pool enforces by itself (``tasks/pools.py``, ``intent/httpcut.py``),
with the error and the retry prefork gives it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from intent.breaker import CircuitAdmin
from intent.dev.stack import WorkerProcess, running_worker
from intent.reference import ReferenceControl, ReferenceServices
from intent.runtime import get_runtime
from tasks import submit
from tasks.app import app
from tests.helpers import request, stream_events
from tests.integration.conftest import FAST_RETRY_ENV, api_calls

pytestmark = pytest.mark.integration

POOLS = {"threads": 16, "gevent": 50}
THRESHOLD = 5
SOFT_LIMIT = 2.0
POOL_ENV = {
    **FAST_RETRY_ENV,
    "INTENT_CIRCUIT_FAILURE_THRESHOLD": str(THRESHOLD),
    "INTENT_CIRCUIT_MIN_THROUGHPUT": str(THRESHOLD),
    "INTENT_CIRCUIT_RECOVERY_TIMEOUT": "2",
    "INTENT_DEFER_JITTER": "0.2",
    "INTENT_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
    "INTENT_TASK_TIME_LIMIT": "8",
    # Publishing and parking wait for Redis this long: below the soft limit.
    "INTENT_REDIS_OUTAGE_TOLERANCE": "0.5",
    # Read timeouts longer than the soft limit, so the limit is what ends a hung call.
    "INTENT_PREDICTION_READ_TIMEOUT": "10",
    "INTENT_CONTEXT_READ_TIMEOUT": "10",
}


class PoolWorker:
    def __init__(self, kind: str, worker: WorkerProcess, log: Path):
        self.kind = kind
        self.worker = worker
        self.log = log


@pytest.fixture(scope="module", params=sorted(POOLS))
def pool_worker(
    request: pytest.FixtureRequest,
    reference: ReferenceServices,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PoolWorker]:
    kind = str(request.param)
    if kind == "gevent":
        pytest.importorskip("gevent", reason="the gevent extra is not installed")
    log = tmp_path_factory.mktemp(kind) / "worker.log"
    with running_worker(
        concurrency=POOLS[kind], env=POOL_ENV, loglevel="INFO", pool=kind, logfile=str(log)
    ) as worker:
        yield PoolWorker(kind, worker, log)


@pytest.fixture
def admin(clean: redis.Redis) -> CircuitAdmin:
    return CircuitAdmin(get_runtime().breaker_store)


def _wait_for_state(admin: CircuitAdmin, name: str, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while admin.status(name).state != state:
        assert time.monotonic() < deadline, f"{name} never became {state}"
        time.sleep(0.02)


def test_the_worker_runs_the_pool_asked_for(pool_worker: PoolWorker) -> None:
    stats = app.control.inspect([pool_worker.worker.name], timeout=5).stats() or {}
    pool = stats[pool_worker.worker.name]["pool"]
    assert pool["max-concurrency"] == POOLS[pool_worker.kind]
    implementation = pool["implementation"]
    assert ("thread" if pool_worker.kind == "threads" else "gevent") in implementation
    assert pool_worker.worker.child_pids() == []  # one process runs every task


def test_analyses_under_load_each_complete_once(
    pool_worker: PoolWorker,
    clean: redis.Redis,
    context_service: ReferenceControl,
    prediction_service: ReferenceControl,
) -> None:
    n = 64
    tag = uuid.uuid4().hex[:8]
    payloads = [
        request(request_id=f"load-{tag}-{i}", context_id=f"ctx-load-{tag}-{i}") for i in range(n)
    ]
    results = [a.get(timeout=60) for a in [submit(p) for p in payloads]]

    assert [r.status for r in results] == ["completed"] * n
    assert [r.request.request_id for r in results] == [p["request_id"] for p in payloads]
    assert [r.context.context_id for r in results if r.context] == [
        p["context_id"] for p in payloads
    ]
    # Every analysis called each service once, and published its events once.
    assert len(api_calls(context_service)) == n
    assert len(api_calls(prediction_service)) == n
    for payload, result in zip(payloads, results, strict=True):
        published = stream_events(clean, payload["request_id"])
        assert sorted(e.id for e in published) == sorted(e.id for e in result.events)
        assert result.events


def test_the_breaker_trips_and_recovers_under_load(
    pool_worker: PoolWorker, admin: CircuitAdmin, context_service: ReferenceControl
) -> None:
    context_service.set_faults(down=True)
    tag = uuid.uuid4().hex[:8]

    def analysis(i: int) -> Any:
        return submit(request(request_id=f"dead-{tag}-{i}", context_id=f"ctx-dead-{tag}-{i}"))

    # One analysis meets the dead service first: with a failure pending, the breaker admits
    # calls only while failures and calls in flight stay under the threshold, however many
    # of the pool's tasks ask at once. (Calls that all start before any failure is known
    # are each admitted: a breaker cannot know a service it has not heard from is dead.)
    analyses = [analysis(0)]
    deadline = time.monotonic() + 30
    while not admin.status("context-service").failures:
        assert time.monotonic() < deadline, "the first call never failed"
        time.sleep(0.01)
    analyses += [analysis(i) for i in range(1, 48)]
    _wait_for_state(admin, "context-service", "open", timeout=15)
    time.sleep(1.0)  # every task has met the open breaker by now; none calls
    calls_while_down = len(api_calls(context_service))
    print(f"{pool_worker.kind}: calls while down: {calls_while_down}")
    assert 1 <= calls_while_down <= THRESHOLD

    # Every analysis has met the dead service or its open breaker, and waits (however
    # long the loaded machine took the pool to reach them all).
    deadline = time.monotonic() + 60
    while get_runtime().waiting.depth()["get_context"] < len(analyses):
        assert time.monotonic() < deadline, get_runtime().waiting.depth()
        time.sleep(0.1)

    context_service.clear_faults()  # the service is back before the trial is admitted
    results = [a.get(timeout=60) for a in analyses]

    assert all(r.status == "completed" for r in results)
    assert sum(sum(r.deferrals.values()) for r in results) >= len(results) - THRESHOLD
    assert all(sum(r.retries.values()) <= 3 for r in results)
    assert admin.status("context-service").state == "closed"


# Only the first call meets it: a hang (no byte for 8 s), or an answer that never goes
# silent for a read timeout (a byte every 0.1 s, tens of seconds in all), which is no hang
# to the read timeout: the step's time limit cuts both (intent.httpcut on threads, the
# step's gevent.Timeout on gevent).
SLOW_CALLS = {"hung": {"latency_ms": 8000}, "trickling": {"trickle_ms": 100}}


@pytest.mark.parametrize("slow", sorted(SLOW_CALLS))
def test_a_slow_call_ends_at_the_soft_limit_and_is_retried(
    pool_worker: PoolWorker,
    admin: CircuitAdmin,
    prediction_service: ReferenceControl,
    slow: str,
) -> None:
    prediction_service.set_faults(**SLOW_CALLS[slow], count=1)
    payload = request(context_id=f"ctx-{slow}-{uuid.uuid4().hex[:8]}")
    result = submit(payload).get(timeout=30)

    assert result.status == "completed"
    assert result.retries == {"predict": 1}
    calls = api_calls(prediction_service)
    assert len(calls) == 2
    # The retry went out once the soft limit cut the first call, long before its 8 s.
    gap = float(calls[1]["time"]) - float(calls[0]["time"])  # type: ignore[arg-type]
    assert SOFT_LIMIT <= gap < SOFT_LIMIT + 2.0, gap
    # The same error as a prefork pool process meets at its soft limit, retried as one.
    log = pool_worker.log.read_text()
    assert "retrying predict" in log and "predict is unavailable: soft time limit exceeded" in log
    # The call cut counts against its service, as on prefork.
    assert admin.status("prediction-service").failures == 1
