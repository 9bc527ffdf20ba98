"""Tracing on a real ``celery worker -P prefork``: one trace per analysis (and per batch)
across its tasks and downstream calls, with retries, deferrals and fallbacks as events.

The pool processes export with ``INTENT_TRACING_EXPORTER=jsonl:DIR`` (a file per process);
this process, the caller, records its ``intent.submit`` spans with the SDK's in-memory
exporter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from intent import tracing
from intent.breaker import CircuitAdmin
from intent.dev.stack import WorkerProcess, running_worker
from intent.reference import ReferenceControl, ReferenceServices
from intent.runtime import get_runtime
from tasks import submit, submit_batch
from tasks.app import app
from tests.helpers import request, wait_until
from tests.integration.conftest import FAST_RETRY_ENV

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("traced_worker")]

STEPS = ["intent.fetch_context", "intent.predict", "intent.detect_pattern", "intent.emit_events"]
TIMEOUT = 30
Span = dict[str, Any]


@pytest.fixture(scope="module")
def span_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans")


@pytest.fixture(scope="module")
def traced_worker(reference: ReferenceServices, span_dir: Path) -> Iterator[WorkerProcess]:
    env = {
        **FAST_RETRY_ENV,
        "INTENT_TRACING": "true",
        "INTENT_TRACING_EXPORTER": f"jsonl:{span_dir}",
        "OTEL_SERVICE_NAME": "intent-test-worker",
        # A forced-open breaker is waited for one recovery timeout.
        "INTENT_CIRCUIT_RECOVERY_TIMEOUT": "2",
        "INTENT_DEFER_JITTER": "0.2",
    }
    with running_worker(concurrency=2, env=env, loglevel="INFO") as worker:
        yield worker


@pytest.fixture
def caller_spans() -> Iterator[InMemorySpanExporter]:
    """This process traces too (its submit spans), into memory."""
    exporter = InMemorySpanExporter()
    tracing.start(exporter=exporter)
    yield exporter
    tracing.stop()


def unique_request(**overrides: Any) -> dict[str, Any]:
    """A request of a context nobody cached."""
    return request(context_id=f"ctx-{uuid.uuid4().hex[:10]}", **overrides)


def worker_spans(span_dir: Path) -> list[Span]:
    spans = []
    for path in sorted(span_dir.glob("spans-*.jsonl")):
        spans += [json.loads(line) for line in path.read_text().splitlines() if line]
    return spans


def spans_of(span_dir: Path, key: str, value: str, last: str, count: int = 1) -> list[Span]:
    """Every worker span whose attribute ``key`` is ``value``, once ``count`` spans named
    ``last`` are among them (a task's span ends after its result is stored)."""

    def found() -> list[Span]:
        spans = [s for s in worker_spans(span_dir) if s["attributes"].get(key) == value]
        return spans if sum(s["name"] == last for s in spans) >= count else []

    spans: list[Span] = wait_until(found, timeout=TIMEOUT, what=f"the spans of {value}")
    return spans


def trace_id(span: Span) -> str:
    return str(span["context"]["trace_id"])


def span_id(span: Span) -> str:
    return str(span["context"]["span_id"])


def named(spans: list[Span], name: str) -> list[Span]:
    return sorted((s for s in spans if s["name"] == name), key=lambda s: s["start_time"])


def of_kind(spans: list[Span], kind: str) -> list[Span]:
    """The task (consumer) or HTTP (client) spans, in the order they started."""
    chosen = (s for s in spans if s["kind"] == f"SpanKind.{kind.upper()}")
    return sorted(chosen, key=lambda s: s["start_time"])


def events(span: Span, name: str) -> list[dict[str, Any]]:
    return [e["attributes"] for e in span["events"] if e["name"] == name]


def test_an_analysis_is_one_trace_from_submit_through_its_http_calls(
    clean: redis.Redis, span_dir: Path, caller_spans: InMemorySpanExporter
) -> None:
    payload = unique_request()
    rid = payload["request_id"]
    assert submit(payload).get(timeout=TIMEOUT).status == "completed"

    (submitted,) = [s for s in caller_spans.get_finished_spans() if s.name == "intent.submit"]
    assert submitted.attributes is not None and submitted.attributes["intent.request_id"] == rid
    spans = spans_of(span_dir, "intent.request_id", rid, last="intent.emit_events")
    tasks = of_kind(spans, "consumer")
    assert [s["name"] for s in tasks] == STEPS
    http = of_kind(spans, "client")
    assert {s["attributes"]["intent.endpoint"] for s in http} >= {"get_context", "predict"}
    assert {s["attributes"]["http.response.status_code"] for s in http} == {200}
    # One trace: the caller's span, the four steps and their HTTP calls.
    assert {trace_id(s) for s in spans} == {f"0x{submitted.context.trace_id:032x}"}
    assert all(s["attributes"]["intent.request_id"] == rid for s in spans)
    # Each step is the child of the one that published it; the first, of submit().
    parents = [s["parent_id"] for s in tasks]
    assert parents == [f"0x{submitted.context.span_id:016x}"] + [span_id(s) for s in tasks[:-1]]
    assert {s["parent_id"] for s in http} <= {span_id(s) for s in tasks}
    step = named(spans, "intent.predict")[0]["attributes"]
    assert step["intent.step"] == "predict" and step["celery.task_id"] == f"{rid}.predict"
    assert named(spans, "intent.emit_events")[0]["resource"]["attributes"]["service.name"] == (
        "intent-test-worker"
    )


def test_each_pool_process_exports_its_own_spans(
    clean: redis.Redis, span_dir: Path, traced_worker: WorkerProcess
) -> None:
    """The exporter is started in each pool process after the fork, never in the main
    process (which forks them)."""
    rid = submit(unique_request()).get(timeout=TIMEOUT).request.request_id
    spans = spans_of(span_dir, "intent.request_id", rid, last="intent.emit_events")

    pids = {s["resource"]["attributes"]["process.pid"] for s in spans}
    assert pids <= set(traced_worker.child_pids())
    writers = {int(p.stem.rsplit("-", 1)[1]) for p in span_dir.glob("spans-*.jsonl")}
    assert traced_worker.process.pid not in writers


def test_a_retry_is_an_event_and_the_next_run_a_new_span_in_the_trace(
    clean: redis.Redis, span_dir: Path, context_service: ReferenceControl
) -> None:
    context_service.set_faults(status=503, count=1)
    payload = unique_request()
    rid = payload["request_id"]
    assert submit(payload).get(timeout=TIMEOUT).retries == {"fetch_context": 1}

    spans = spans_of(span_dir, "intent.request_id", rid, last="intent.emit_events")
    assert len({trace_id(s) for s in spans}) == 1
    first, second = named(spans, "intent.fetch_context")
    (retry,) = events(first, "retry")
    assert retry["retry"] == 1 and retry["countdown"] > 0 and retry["step"] == "fetch_context"
    assert retry["error"] == "ServiceUnavailableError"
    assert first["attributes"]["intent.wait"] == "retry"
    assert first["attributes"]["celery.state"] == "RETRY"
    assert second["parent_id"] == span_id(first)  # the parked run's next run
    assert second["attributes"]["celery.retries"] == 1 and not events(second, "retry")
    calls = [s for s in of_kind(spans, "client") if s["parent_id"] == span_id(first)]
    (failed,) = [s for s in calls if s["attributes"]["intent.endpoint"] == "get_context"]
    assert failed["attributes"]["http.response.status_code"] == 503
    assert failed["status"]["status_code"] == "ERROR"


def test_a_deferral_for_an_open_breaker_is_an_event_and_the_trace_goes_on(
    clean: redis.Redis, span_dir: Path, context_service: ReferenceControl
) -> None:
    admin = CircuitAdmin(get_runtime().breaker_store)
    admin.force_open("context-service", "tracing test")
    try:
        payload = unique_request()
        rid = payload["request_id"]
        analysis = submit(payload)
        deferred = spans_of(span_dir, "intent.request_id", rid, last="intent.fetch_context")
    finally:
        admin.reset("context-service", "test over")
    assert analysis.get(timeout=TIMEOUT).status == "completed"

    spans = spans_of(span_dir, "intent.request_id", rid, last="intent.emit_events")
    assert len({trace_id(s) for s in spans}) == 1
    first = named(deferred, "intent.fetch_context")[0]
    (rejected,) = events(first, "breaker.rejected")
    assert rejected["service"] == "context-service" and rejected["denial"] == "forced-open"
    (deferral,) = events(first, "deferral")
    assert deferral["reason"] == "circuit_open" and deferral["delay"] > 0
    assert first["attributes"]["intent.wait"] == "deferral"
    later = named(spans, "intent.fetch_context")[-1]
    assert later["parent_id"] == span_id(first) and not events(later, "deferral")


def test_a_fallback_and_a_cache_hit_are_events(
    clean: redis.Redis, span_dir: Path, prediction_service: ReferenceControl
) -> None:
    earlier = unique_request()
    submit(earlier).get(timeout=TIMEOUT)  # live predictions and a cached context
    prediction_service.set_faults(status=503)
    payload = request(context_id=earlier["context_id"])
    rid = payload["request_id"]
    result = submit(payload).get(timeout=TIMEOUT)
    assert result.fallbacks == ["predictions"]

    spans = spans_of(span_dir, "intent.request_id", rid, last="intent.emit_events")
    (hit,) = events(named(spans, "intent.fetch_context")[0], "cache.hit")
    assert hit["context_id"] == earlier["context_id"]
    predicts = named(spans, "intent.predict")
    assert [e["retry"] for s in predicts for e in events(s, "retry")] == [1, 2, 3]
    (used,) = events(predicts[-1], "fallback.used")
    assert used["fallback"] == "predictions" and used["request_id"] == rid
    assert used["error"] == "ServiceUnavailableError" and "HTTP 503" in used["reason"]


def test_an_analysis_sent_by_name_is_one_trace_from_its_analyze_task(
    clean: redis.Redis, span_dir: Path
) -> None:
    payload = unique_request()
    rid = payload["request_id"]
    assert app.send_task("intent.analyze", args=[payload]).get(timeout=TIMEOUT)["status"] == (
        "completed"
    )

    spans = spans_of(span_dir, "intent.request_id", rid, last="intent.emit_events")
    (analyze,) = named(spans, "intent.analyze")
    assert analyze["parent_id"] is None  # a caller that does not trace: the trace starts here
    assert named(spans, "intent.fetch_context")[0]["parent_id"] == span_id(analyze)
    assert {trace_id(s) for s in spans} == {trace_id(analyze)}


def test_a_batch_is_one_trace(
    clean: redis.Redis, span_dir: Path, caller_spans: InMemorySpanExporter
) -> None:
    tag = uuid.uuid4().hex[:8]
    requests = [unique_request(request_id=f"tb-{tag}-{i}") for i in range(3)]
    batch = submit_batch(requests)
    assert batch.get(timeout=TIMEOUT)["status"] == "completed"

    (submitted,) = caller_spans.get_finished_spans()
    spans = spans_of(span_dir, "intent.batch_id", str(batch.id), last="intent.batch_emit_events")
    steps = [s["name"] for s in of_kind(spans, "consumer")]
    assert steps == [f"intent.batch_{step.removeprefix('intent.')}" for step in STEPS]
    http = {s["attributes"]["intent.endpoint"] for s in of_kind(spans, "client")}
    assert {"get_context_batch", "predict_batch"} <= http
    assert {trace_id(s) for s in spans} == {f"0x{submitted.context.trace_id:032x}"}


def test_a_batch_sent_by_name_is_one_trace_from_its_analyze_batch_task(
    clean: redis.Redis, span_dir: Path
) -> None:
    requests = [unique_request() for _ in range(2)]
    result = app.send_task("intent.analyze_batch", args=[requests])
    assert result.get(timeout=TIMEOUT)["status"] == "completed"

    spans = spans_of(span_dir, "intent.batch_id", str(result.id), last="intent.batch_emit_events")
    (analyze,) = named(spans, "intent.analyze_batch")
    assert named(spans, "intent.batch_fetch_context")[0]["parent_id"] == span_id(analyze)
    assert {trace_id(s) for s in spans} == {trace_id(analyze)}
