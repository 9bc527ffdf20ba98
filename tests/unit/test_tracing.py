"""intent.tracing: no-ops while off (or without OpenTelemetry), and the spans and events it
records when on, with the SDK's in-memory exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from intent import tracing
from intent.breaker import CircuitBreaker, CircuitConfig, MemoryStore
from intent.clients import ServiceClient
from intent.errors import CircuitOpenError, RateLimitExceeded, ServiceUnavailableError
from intent.logs import bound
from intent.ratelimit import SharedRateLimit
from intent.settings import Settings

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

REPO = Path(__file__).resolve().parents[2]

OFF_CHECK = """
import sys
from intent import tracing
from intent.settings import Settings

print(tracing.start(Settings(tracing=True)))
carrier = {"traceparent": "kept"}
tracing.inject(carrier)
tracing.event("cache.hit", context_id="c")
tracing.annotate(x=1)
with tracing.span("s") as opened:
    assert opened is None
with tracing.http_span("svc", "GET", "http://h/p", "e") as traced:
    traced.status(503)
    assert dict(traced.headers) == {}
assert tracing.open_span("t") is None and not tracing.active() and not tracing.fields()
print(carrier == {"traceparent": "kept"})
print(any(m is not None for n, m in sys.modules.items() if n.startswith("opentelemetry")))
"""


def run_python(code: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    return out.stdout.split()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.start(exporter=exporter)
    yield exporter
    tracing.stop()


def only(exporter: InMemorySpanExporter) -> Any:
    (span,) = exporter.get_finished_spans()
    return span


def events(span: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, dict(event.attributes or {})) for event in span.events]


def test_while_off_the_helpers_do_nothing_and_import_nothing() -> None:
    # A process whose settings leave tracing off: OpenTelemetry is never imported.
    code = OFF_CHECK.replace("Settings(tracing=True)", "Settings()")
    assert run_python(code) == ["False", "True", "False"]


def test_without_opentelemetry_installed_tracing_stays_off() -> None:
    # As if the otel extra were not installed: every opentelemetry import fails.
    block = (
        "import sys\n"
        "for name in ('opentelemetry', 'opentelemetry.sdk', 'opentelemetry.trace'):\n"
        "    sys.modules[name] = None\n"
        "import tasks.app, intent.clients, intent.pipeline.steps\n"
    )
    assert run_python(block + OFF_CHECK)[-3:] == ["False", "True", "False"]


def test_otel_sdk_disabled_turns_tracing_off() -> None:
    assert run_python(OFF_CHECK, {"OTEL_SDK_DISABLED": "true"}) == ["False", "True", "False"]


def test_events_and_attributes_land_on_the_current_span(spans: InMemorySpanExporter) -> None:
    with bound(request_id="r-1"), tracing.span("work", attributes={"intent.step": "predict"}):
        tracing.event("cache.hit", context_id="ctx-1", age=1.5, skipped=None)
        tracing.annotate(**{"intent.wait": "retry"})
    span = only(spans)
    assert span.name == "work"
    assert span.attributes == {
        "intent.request_id": "r-1",
        "intent.step": "predict",
        "intent.wait": "retry",
    }
    assert events(span) == [("cache.hit", {"context_id": "ctx-1", "age": 1.5})]


def test_a_failed_span_records_the_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("work"):
        raise ValueError("bad")
    span = only(spans)
    assert span.status.status_code.name == "ERROR"
    assert [event.name for event in span.events] == ["exception"]


def test_inject_writes_the_current_context_and_keeps_a_stored_one(
    spans: InMemorySpanExporter,
) -> None:
    stored = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "old=1"}
    kept = dict(stored)
    tracing.inject(kept)  # no span current: a parked message's context stays
    assert kept == stored
    opened = tracing.open_span("consumer", "consumer", carrier=stored)
    assert opened is not None
    fresh = dict(stored)
    tracing.inject(fresh)
    opened.close()
    span = only(spans)
    assert f"{span.context.trace_id:032x}" == "1" * 32  # continued the stored trace
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "2" * 16
    assert fresh["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
    assert fresh.get("tracestate") in (None, "old=1")
    assert tracing.fields() >= {"traceparent"}


def test_breaker_rejections_and_transitions_are_events(spans: InMemorySpanExporter) -> None:
    config = CircuitConfig(failure_threshold=1, min_throughput=1, recovery_timeout=60)
    breaker = CircuitBreaker("svc", config, store=MemoryStore(), throw_new_error_on_trip=True)

    def failing() -> None:
        raise ServiceUnavailableError("svc", "down")

    with tracing.span("step"):
        with pytest.raises(CircuitOpenError):
            breaker.call(failing)  # trips it
        with pytest.raises(CircuitOpenError):
            breaker.call(failing)  # refused
    names = events(only(spans))
    assert names[0][0] == "breaker.transition"
    assert names[0][1] | {"reason": ""} == {
        "breaker": "svc",
        "from_state": "closed",
        "to_state": "open",
        "reason": "",
    }
    assert names[1][0] == "breaker.rejected"
    assert names[1][1]["service"] == "svc" and names[1][1]["until"] > 0


def test_a_full_rate_limit_is_an_event(spans: InMemorySpanExporter) -> None:
    limit = SharedRateLimit("predict", 1, 60, MovingWindowRateLimiter(MemoryStorage()))
    with tracing.span("step"):
        limit.hit()
        with pytest.raises(RateLimitExceeded):
            limit.hit()
    ((name, attributes),) = events(only(spans))
    assert name == "ratelimit.rejected"
    assert attributes["limit"] == "predict 1/60s" and 0 < attributes["retry_after"] <= 60


class Recorder(requests.adapters.BaseAdapter):
    """An adapter that answers 200 {} and remembers the requests' headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str]] = []

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        self.headers.append(dict(request.headers))
        response = requests.Response()
        response.status_code, response._content = 200, b"{}"
        return response

    def close(self) -> None:
        pass


def test_a_downstream_call_is_a_client_span_whose_context_the_service_receives(
    spans: InMemorySpanExporter,
) -> None:
    client = ServiceClient("http://svc.test")
    recorder = Recorder()
    client.session.mount("http://", recorder)
    with bound(request_id="r-2"):
        client._request("GET", "/api/x", endpoint="get_context")
    span = only(spans)
    assert (span.name, span.kind.name) == ("GET get_context", "CLIENT")
    assert span.attributes["intent.request_id"] == "r-2"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.full"] == "http://svc.test/api/x"
    (sent,) = recorder.headers
    assert sent["traceparent"].split("-")[1:3] == [
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
    ]
    assert sent["Accept"] == "application/json"


def test_an_injected_fault_is_marked_on_the_request_span(spans: InMemorySpanExporter) -> None:
    from intent.drills import Drill

    drill = Drill.parse(
        "prediction-service", {"rate": 1, "kind": "status", "status": 503, "duration": 60},
        time.time(), 3600,
    )  # fmt: skip
    client = ServiceClient("http://svc.test", drill=lambda service: drill)
    recorder = Recorder()
    client.session.mount("http://", recorder)
    with pytest.raises(ServiceUnavailableError, match="injected by a drill"):
        client._request("POST", "/api/v1/predict", endpoint="predict")
    span = only(spans)
    assert span.attributes["intent.drill.injected"] is True
    assert span.attributes["intent.drill.kind"] == "status"
    assert span.attributes["intent.drill"] == "100% HTTP 503"
    assert span.attributes["http.response.status_code"] == 503
    assert span.status.status_code.name == "ERROR"
    assert events(span)[0] == ("drill.injected", {"kind": "status", "drill": "100% HTTP 503"})
    assert recorder.headers == []  # nothing was sent


def test_while_off_a_downstream_call_sends_no_trace_header() -> None:
    tracing.stop()
    client = ServiceClient("http://svc.test")
    recorder = Recorder()
    client.session.mount("http://", recorder)
    client._request("GET", "/api/x")
    assert "traceparent" not in recorder.headers[0]


def test_the_jsonl_exporter_writes_a_line_per_span_in_a_file_per_process(
    tmp_path: Path,
) -> None:
    settings = Settings(tracing=True, tracing_exporter=f"jsonl:{tmp_path}")
    tracing.stop()
    assert tracing.start(settings)
    try:
        with tracing.span("one"), tracing.span("two"):
            pass
    finally:
        tracing.stop()
    (path,) = tmp_path.glob("spans-*.jsonl")
    assert path.name.endswith(f"-{os.getpid()}.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["two", "one"]
    assert lines[0]["parent_id"] == lines[1]["context"]["span_id"]
    assert lines[1]["resource"]["attributes"]["service.name"] == "intent-pipeline"


def test_a_forked_child_does_not_use_its_parents_tracing(spans: InMemorySpanExporter) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's provider is not its own
        os.write(write, b"1" if tracing.active() else b"0")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"0"
    assert tracing.active()
