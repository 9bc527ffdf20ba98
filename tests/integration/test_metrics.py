"""Prometheus metrics from a real ``celery worker -P prefork -c 2``: every pool process
writes to the shared metrics directory, and :func:`intent.metrics.exposition` in this
process (as ``intent admin`` does) merges them, with the breaker state read from Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from intent.admin.exposition import exposition
from intent.dev.stack import WorkerProcess, running_worker
from intent.errors import ServiceRequestError, ValidationError
from intent.metrics import host_name
from intent.models import BatchResult, Context
from intent.reference import ReferenceControl
from intent.reference.data import context_for
from intent.runtime import Runtime
from intent.settings import load_settings
from tasks import submit, submit_batch
from tasks.app import app
from tests.helpers import request
from tests.integration.conftest import FAST_RETRY_ENV, ReferenceServices, api_calls

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("metrics_worker")]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CONTEXT, PREDICTION = "context-service", "prediction-service"


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics")


# The worker's breakers trip on this many failures (as many calls), and stay open this
# long: time enough for a scrape on a loaded machine to see one open.
TRIP = 5
RECOVERY = 8


@pytest.fixture(scope="module")
def metrics_worker(reference: ReferenceServices, metrics_dir: Path) -> Iterator[WorkerProcess]:
    env = {
        **FAST_RETRY_ENV,
        "INTENT_METRICS_DIR": str(metrics_dir),
        "INTENT_CIRCUIT_FAILURE_THRESHOLD": str(TRIP),
        "INTENT_CIRCUIT_MIN_THROUGHPUT": str(TRIP),
        "INTENT_CIRCUIT_RECOVERY_TIMEOUT": str(RECOVERY),
        "INTENT_DEFER_JITTER": "0.2",
    }
    with running_worker(concurrency=2, env=env) as worker:
        yield worker


@pytest.fixture(scope="module")
def runtime(metrics_dir: Path, reference: ReferenceServices) -> Iterator[Runtime]:
    """This process as the admin endpoint sees it: same Redis, same metrics directory."""
    rt = Runtime(load_settings(metrics_dir=str(metrics_dir)))
    yield rt
    rt.close()


@pytest.fixture
def scrape(runtime: Runtime) -> Callable[[], Samples]:
    def read() -> Samples:
        body, content_type = exposition(runtime)
        assert content_type.startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    return read


def requests_total(service: str, endpoint: str, status: int | str) -> tuple[str, tuple]:
    labels = (("endpoint", endpoint), ("service", service), ("status", str(status)))
    return "intent_service_requests_total", labels


def durations(service: str, endpoint: str) -> tuple[str, tuple]:
    return "intent_service_request_duration_seconds_count", (
        ("endpoint", endpoint),
        ("service", service),
    )


def one(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


def delta(before: Samples, after: Samples, key: tuple[str, tuple]) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def requests_in(path: Path) -> float:
    """intent_service_requests_total as one process's own file holds it."""
    return sum(
        s.value
        for metric in MultiProcessCollector.merge([str(path)])
        for s in metric.samples
        if s.name == "intent_service_requests_total"
    )


def test_counts_from_both_pool_processes_add_up(
    clean: redis.Redis,
    metrics_worker: WorkerProcess,
    metrics_dir: Path,
    scrape: Callable[[], Samples],
) -> None:
    before = scrape()
    tag = uuid.uuid4().hex[:8]
    n = 16
    started = time.time()
    # Distinct contexts: each analysis calls the Context Service (no fresh cache entry).
    analyses = [
        submit(request(request_id=f"m-{tag}-{i}", context_id=f"ctx-m-{tag}-{i}")) for i in range(n)
    ]
    results = [analysis.get(timeout=60) for analysis in analyses]
    elapsed = time.time() - started
    after = scrape()

    assert all(r.status == "completed" for r in results)
    assert delta(before, after, requests_total(CONTEXT, "get_context", 200)) == n
    assert delta(before, after, requests_total(PREDICTION, "predict", 200)) == n
    assert delta(before, after, durations(CONTEXT, "get_context")) == n
    assert delta(before, after, durations(PREDICTION, "predict")) == n
    assert delta(before, after, requests_total(CONTEXT, "health", 200)) >= 1  # version checks
    assert delta(before, after, one("intent_analyses_finished_total", status="completed")) == n
    done = {"status": "completed"}
    assert delta(before, after, one("intent_analysis_duration_seconds_count", **done)) == n
    # Each duration runs from submission to the end of its last step: inside this test.
    spent = delta(before, after, one("intent_analysis_duration_seconds_sum", **done))
    assert 0 < spent <= n * elapsed

    # Both pool processes did part of the work, each in its own file (host and pid).
    host = host_name()
    per_process = {
        pid: requests_in(metrics_dir / f"counter_{host}-{pid}.db")
        for pid in metrics_worker.child_pids()
    }
    assert len(per_process) == 2
    assert all(count > 0 for count in per_process.values()), per_process


def test_retries_after_injected_503s(
    clean: redis.Redis, context_service: ReferenceControl, scrape: Callable[[], Samples]
) -> None:
    before = scrape()
    context_service.set_faults(status=503, count=2)
    result = submit(request(context_id=f"ctx-r-{uuid.uuid4().hex[:8]}")).get(timeout=30)
    after = scrape()

    assert result.retries == {"fetch_context": 2}
    assert [c["status"] for c in api_calls(context_service)] == [503, 503, 200]
    assert delta(before, after, requests_total(CONTEXT, "get_context", 503)) == 2
    assert delta(before, after, requests_total(CONTEXT, "get_context", 200)) == 1
    assert delta(before, after, durations(CONTEXT, "get_context")) == 3
    assert delta(before, after, one("intent_task_retries_total", step="fetch_context")) == 2
    assert delta(before, after, one("intent_task_retries_total", step="predict")) == 0
    # The shared breaker counted both failures; read from Redis at the scrape.
    assert after[one("intent_circuit_breaker_window_failures", breaker=CONTEXT)] == 2
    assert after[one("intent_circuit_breaker_state", breaker=CONTEXT, state="closed")] == 1


def test_failed_and_rejected_analyses(
    clean: redis.Redis, context_service: ReferenceControl, scrape: Callable[[], Samples]
) -> None:
    before = scrape()
    context_service.set_faults(status=404, count=1)  # permanent: the analysis fails at once
    with pytest.raises(ServiceRequestError):
        submit(request(context_id=f"ctx-f-{uuid.uuid4().hex[:8]}")).get(timeout=30)
    # By name, as a web application sends it: refused by intent.analyze on the worker.
    invalid = app.send_task("intent.analyze", args=[{"client_id": "no spaces allowed"}])
    with pytest.raises(ValidationError):
        invalid.get(timeout=30)
    # A failure is counted by the task's on_failure, which Celery runs just after it has
    # stored the failure the caller saw: give the count that moment.
    counted = [one("intent_analyses_finished_total", status=s) for s in ("failed", "rejected")]
    deadline = time.monotonic() + 10
    after = scrape()
    while any(delta(before, after, key) < 1 for key in counted) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = scrape()

    assert delta(before, after, one("intent_analyses_finished_total", status="failed")) == 1
    assert delta(before, after, one("intent_analyses_finished_total", status="rejected")) == 1
    assert delta(before, after, one("intent_analyses_finished_total", status="completed")) == 0
    assert delta(before, after, requests_total(CONTEXT, "get_context", 404)) == 1
    assert delta(before, after, one("intent_task_retries_total", step="fetch_context")) == 0
    failed = one("intent_analysis_duration_seconds_count", status="failed")
    assert delta(before, after, failed) == 1  # a duration for every outcome


def test_a_batch_counts_each_item_as_an_analysis(
    clean: redis.Redis,
    context_service: ReferenceControl,
    runtime: Runtime,
    scrape: Callable[[], Samples],
) -> None:
    tag = uuid.uuid4().hex[:8]

    def item(n: int, context_id: str, **fields: Any) -> dict[str, Any]:
        return {
            "request_id": f"bm-{tag}-{n}",
            "client_id": "web",
            "pattern_id": "checkout",
            "context_id": context_id,
            **fields,
        }

    requests: list[Any] = [
        item(0, f"ctx-bm-{tag}-0"),  # completed
        item(1, f"ctx-bm-{tag}-1", deadline=time.time() - 1),  # expired before any call
        item(2, f"missing-bm-{tag}"),  # the Context Service answers 404: failed
        {"request_id": f"bm-{tag}-3", "client_id": "web"},  # invalid: rejected at intake
    ]
    stale = Context.model_validate(context_for(f"ctx-bm-{tag}-stale", 1))
    runtime.context_cache.put(stale, now=time.time() - 3600)  # an hour old: a fallback only

    before = scrape()
    started = time.time()
    first = BatchResult.model_validate(submit_batch(requests).get(timeout=60))
    context_service.set_faults(status=503)  # every context call fails: retries run out
    degraded = BatchResult.model_validate(submit_batch([item(4, stale.context_id)]).get(60))
    elapsed = time.time() - started
    after = scrape()

    assert [i.status for i in first.items] == ["completed", "expired", "failed", "failed"]
    assert first.items[0].result is not None and not first.items[0].result.degraded
    (served,) = degraded.items
    assert served.status == "completed" and served.result is not None
    assert served.result.fallbacks == ["context"]
    for status, count in (("completed", 2), ("expired", 1), ("failed", 1), ("rejected", 1)):
        assert delta(before, after, one("intent_analyses_finished_total", status=status)) == count
    assert delta(before, after, one("intent_analyses_degraded_total", fallback="context")) == 1
    # From submit_batch to the end of each batch's last step, by how each item ended; an
    # item refused at intake never started.
    for status, count in (("completed", 2), ("expired", 1), ("failed", 1), ("rejected", 0)):
        durations_of = one("intent_analysis_duration_seconds_count", status=status)
        assert delta(before, after, durations_of) == count, status
    spent = delta(before, after, one("intent_analysis_duration_seconds_sum", status="completed"))
    assert 0 < spent <= 2 * elapsed


def _wait_for_state(runtime: Runtime, name: str, state: str, timeout: float) -> None:
    admin = runtime.circuits
    deadline = time.monotonic() + timeout
    while admin.status(name).state != state:
        assert time.monotonic() < deadline, f"{name} never became {state}"
        time.sleep(0.02)


def test_breaker_transitions_and_state(
    clean: redis.Redis,
    prediction_service: ReferenceControl,
    runtime: Runtime,
    scrape: Callable[[], Samples],
) -> None:
    def transitions(old: str, new: str) -> tuple[str, tuple]:
        return one(
            "intent_circuit_breaker_transitions_total",
            breaker=PREDICTION,
            from_state=old,
            to_state=new,
        )

    def state(name: str) -> tuple[str, tuple]:
        return one("intent_circuit_breaker_state", breaker=PREDICTION, state=name)

    before = scrape()
    # Exactly the failures that trip the breaker, then the service answers: the trial
    # call, whenever it comes, succeeds. Each analysis has retries to spare: one would
    # run out (retry_max 3) only with 4 of the 5 failures its own, i.e. another analysis's
    # first call coming after its third retry.
    prediction_service.set_faults(status=503, count=TRIP)
    tag = uuid.uuid4().hex[:8]
    analyses = [submit(request(context_id=f"ctx-b-{tag}-{i}")) for i in range(3)]
    _wait_for_state(runtime, PREDICTION, "open", timeout=30)
    # The process that tripped it counts the transition just after it is made in Redis.
    deadline = time.monotonic() + 5
    while delta(before, opened := scrape(), transitions("closed", "open")) < 1:
        assert time.monotonic() < deadline, "the trip was never counted"
        time.sleep(0.05)

    assert delta(before, opened, transitions("closed", "open")) == 1
    assert opened[state("open")] == 1
    assert opened[state("closed")] == opened[state("half-open")] == 0

    results = [analysis.get(timeout=60) for analysis in analyses]
    after = scrape()
    assert all(r.status == "completed" for r in results)
    assert delta(before, after, transitions("closed", "open")) == 1
    assert delta(before, after, transitions("open", "half-open")) == 1
    assert delta(before, after, transitions("half-open", "closed")) == 1
    assert after[state("closed")] == 1 and after[state("open")] == 0
    assert delta(before, after, one("intent_circuit_open_deferrals_total", step="predict")) >= 1
    # What the service answered is what was counted, outcome by outcome.
    statuses = [c["status"] for c in api_calls(prediction_service)]
    assert delta(before, after, requests_total(PREDICTION, "predict", 503)) == statuses.count(503)
    assert delta(before, after, requests_total(PREDICTION, "predict", 200)) == statuses.count(200)
    assert statuses.count(503) == TRIP and statuses.count(200) == 3
