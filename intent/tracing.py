"""Tracing with OpenTelemetry, an optional extra (``pip install intent-pipeline[otel]``).

Off unless ``INTENT_TRACING`` is true and the packages are installed; then each process
that calls :func:`start` gets its own tracer provider and exporter (a prefork worker's pool
processes at ``worker_process_init``, after the fork; the worker's main process never
starts one, so no exporter thread is ever inherited across a fork). While off, nothing of
OpenTelemetry is imported and every helper here returns at once.

The standard variables apply: ``OTEL_SERVICE_NAME`` (default ``intent-pipeline``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``_PROTOCOL`` / ``_HEADERS``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS`` and ``OTEL_SDK_DISABLED``.

Celery-free: the task wiring (spans per task, context in message headers) is
``tasks/tracing.py``; the domain code only adds events to the current span (:func:`event`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any

from intent.forks import ForkLocal
from intent.logs import current_context, mask_url
from intent.settings import Settings, get_settings

log = logging.getLogger("intent.tracing")

SERVICE_NAME = "intent-pipeline"
# Bound log fields (intent.logs.bind) copied onto every span: who the work is for.
IDENTITY = {"request_id": "intent.request_id", "batch_id": "intent.batch_id"}
Attributes = Mapping[str, str | bool | int | float]


@dataclass(frozen=True)
class _Tracing:
    pid: int
    provider: Any  # opentelemetry.sdk.trace.TracerProvider
    tracer: Any


# This process's decision: its tracing, or None (off); a forked child decides afresh.
_state: ForkLocal[_Tracing | None] = ForkLocal(lambda: None)


def _here() -> _Tracing | None:
    """This process's tracing, never one inherited from a parent process."""
    return _state.peek()


def active() -> bool:
    return _here() is not None


# Held while one thread decides: the first tasks of a threads or gevent worker all call
# start() at once, and only one of them may build the process's provider.
_deciding: ForkLocal[threading.Lock] = ForkLocal(threading.Lock)


def start(settings: Settings | None = None, exporter: Any = None) -> bool:
    """Start tracing in this process if the settings ask for it (or ``exporter`` is given:
    tests pass an in-memory one); once per process, later calls answer the same."""
    if _state.built() and exporter is None:
        return active()
    with _deciding.get():
        if _state.built() and exporter is None:  # decided by the thread this one waited for
            return active()
        return _start(settings, exporter)


def _start(settings: Settings | None, exporter: Any) -> bool:
    if exporter is not None and active():
        stop()
    built = _decide(settings or get_settings(), exporter)
    _state.set(built)  # decided once, by this thread: the others read it from now on
    return built is not None


def _decide(settings: Settings, exporter: Any) -> _Tracing | None:
    if exporter is None and not settings.tracing:
        return None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        return _build(settings, exporter, os.getpid())
    except ImportError as exc:
        log.warning(
            "INTENT_TRACING is on but OpenTelemetry is missing (%s): "
            "pip install 'intent-pipeline[otel]'; tracing off",
            exc,
        )
        return None


def stop() -> None:
    """Flush and shut this process's exporter down (a pool process that exits)."""
    state = _state.forget()
    if state is not None:
        state.provider.shutdown()


def _build(settings: Settings, exporter: Any, pid: int) -> _Tracing:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"process.pid": pid})  # with OTEL_SERVICE_NAME's name, if set
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # Not the global provider: a forked child replaces its parent's, which the API forbids.
    provider = TracerProvider(resource=resource)
    kind = settings.tracing_exporter
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    else:  # written as each span ends: what debugging without a collector wants
        out = sys.stdout if kind == "console" else _process_file(kind.removeprefix("jsonl:"))
        provider.add_span_processor(SimpleSpanProcessor(json_lines_exporter(out)))
    return _Tracing(pid, provider, provider.get_tracer("intent"))


def _otlp_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:  # http/protobuf, the specification's default
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def _process_file(directory: str) -> IO[str]:
    """This process's own file in ``directory`` (``spans-<host>-<pid>.jsonl``)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return (path / f"spans-{host}-{os.getpid()}.jsonl").open("a", encoding="utf-8")


def json_lines_exporter(out: IO[str]) -> Any:
    """A SpanExporter writing each span to ``out`` as one line of the SDK's JSON
    (``ReadableSpan.to_json``, as the console exporter prints it)."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if out.closed:
                return SpanExportResult.FAILURE
            out.write("".join(span.to_json(indent=None) + "\n" for span in spans))
            out.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            if out not in (sys.stdout, sys.stderr):
                out.close()

    return JsonLinesExporter()


# -- spans -------------------------------------------------------------------------------


def _identity() -> dict[str, str]:
    bound = current_context()
    return {key: bound[name] for name, key in IDENTITY.items() if name in bound}


class Span:
    """A span opened by :func:`open_span` and made current until :meth:`close`."""

    def __init__(self, span: Any, token: Any):
        self.span = span
        self._token = token

    def set(self, attributes: Attributes) -> None:
        self.span.set_attributes(attributes)

    def fail(self, error: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.record_exception(error)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def close(self, error: BaseException | None = None) -> None:
        from opentelemetry import context

        if error is not None:
            self.fail(error)
        try:
            context.detach(self._token)
        finally:
            self.span.end()


def open_span(
    name: str,
    kind: str = "internal",
    carrier: Mapping[str, str] | None = None,
    attributes: Attributes | None = None,
) -> Span | None:
    """Start a span, current from now on (None while tracing is off): a child of the
    context in ``carrier`` (W3C ``traceparent`` headers) when it has one, else of the
    current span; ``kind``: internal, consumer, producer, client."""
    state = _here()
    if state is None:
        return None
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(carrier) if carrier else None
    span = state.tracer.start_span(
        name,
        context=parent,
        kind=trace.SpanKind[kind.upper()],
        attributes={**_identity(), **(attributes or {})},
    )
    return Span(span, context.attach(trace.set_span_in_context(span)))


class _Scope:
    """``with span(...)``: :func:`open_span` closed on leaving, failed by an exception."""

    def __init__(self, name: str, kind: str, attributes: Attributes | None):
        self.args = (name, kind, None, attributes)
        self.span: Span | None = None

    def __enter__(self) -> Span | None:
        self.span = open_span(*self.args)
        return self.span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.span is not None:
            self.span.close(exc)


def span(name: str, kind: str = "internal", attributes: Attributes | None = None) -> _Scope:
    return _Scope(name, kind, attributes)


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Write the current span's context into ``carrier`` (message headers); nothing when
    no span is current, so a context already there (a parked step's) is kept."""
    if _here() is None:
        return
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        propagator = propagate.get_global_textmap()
        for name in propagator.fields:  # an older context's tracestate must not linger
            carrier.pop(name, None)
        propagator.inject(carrier)


def fields() -> frozenset[str]:
    """The header names the propagators read (``traceparent``, ``tracestate``, ...)."""
    if _here() is None:
        return frozenset()
    from opentelemetry import propagate

    return frozenset(propagate.get_global_textmap().fields)


def event(name: str, **attributes: Any) -> None:
    """Add an event to the current span (a breaker's refusal, a cache hit, a fallback)."""
    if _here() is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, {k: _value(v) for k, v in attributes.items() if v is not None})


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span."""
    if _here() is None:
        return
    from opentelemetry import trace

    values = {k: _value(v) for k, v in attributes.items() if v is not None}
    trace.get_current_span().set_attributes(values)


def _value(value: Any) -> str | bool | int | float:
    return value if isinstance(value, str | bool | int | float) else str(value)


# -- downstream HTTP calls ---------------------------------------------------------------


class HttpSpan:
    """A downstream request's CLIENT span; ``headers`` carry its context to the service."""

    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, span: Any = None):
        self.span = span
        if span is not None:
            from opentelemetry import propagate, trace

            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            self.headers = carrier

    def __enter__(self) -> HttpSpan:
        return self

    def status(self, status: int | str) -> None:
        """The HTTP status, or the error kind (``timeout``, ``connection_error``)."""
        if self.span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        if isinstance(status, int):
            self.span.set_attribute("http.response.status_code", status)
        if isinstance(status, str) or status >= 400:
            self.span.set_attribute("error.type", str(status))
            self.span.set_status(Status(StatusCode.ERROR))

    def injected(self, kind: str, drill: str) -> None:
        """Mark the request as a resilience drill's: ``intent.drill.injected`` and the
        drill's kind and description, so a trace never shows an injected fault as a real
        one."""
        if self.span is None:
            return
        self.span.set_attributes(
            {"intent.drill.injected": True, "intent.drill.kind": kind, "intent.drill": drill}
        )
        self.span.add_event("drill.injected", {"kind": kind, "drill": drill})

    def __exit__(self, kind: Any, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.span is not None:
            if exc is not None:
                self.span.record_exception(exc)
            self.span.end()


_NO_HTTP_SPAN = HttpSpan()


def http_span(service: str, method: str, url: str, endpoint: str) -> HttpSpan:
    """The CLIENT span of one request to ``service`` (a shared no-op while off)."""
    state = _here()
    if state is None:
        return _NO_HTTP_SPAN
    from opentelemetry.trace import SpanKind

    attributes = {
        **_identity(),
        "http.request.method": method,
        "url.full": mask_url(url),
        "intent.service": service,
        "intent.endpoint": endpoint,
    }
    name = f"{method} {endpoint}"
    return HttpSpan(state.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes))
