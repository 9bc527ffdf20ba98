"""Prometheus metrics of the pipeline, an observer at the bottom of the layers.

Every family is declared once in :data:`FAMILIES` (name, type, labels, help): the README's
table, the Grafana dashboard and the alert rules are checked against it. Every name starts
with ``intent_``. Label values the pipeline knows (services, endpoints, steps, outcomes,
fallbacks, breaker transitions) are present from the start, at 0, so a rate over them is
defined before the first event.

Recorders never fail their caller. Nothing below reports here by name: the runtime hands
:func:`record_transition` to the breakers (``intent.breaker.TransitionListener``) and to
the operators' view, and :func:`observe_request` to the clients (``observe=``), as it
hands them their ``guard`` and ``limiter``; the task layer calls the recorders. So this
module imports only settings and models. The breaker's own families are declared here
too, once: ``intent.breaker.prometheus`` (what a team using the breaker alone registers)
reads them. The ``/metrics`` exposition (merging prefork processes, reading the shared
state at scrape) is the operators' (``intent.admin.exposition``).

With ``INTENT_METRICS_DIR`` set, every process writes its samples to files in that
directory (prometheus_client's multiprocess mode, the files named by host and pid: see
:class:`ProcessIdentifier`); without it, metrics live in this process's registry. The
metrics are built on first use in each process: a prefork child builds its own after the
fork, and multiprocess mode is switched on from the settings just before.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.metrics_core import GaugeMetricFamily

from intent.models import (
    DRILL_KINDS,
    FALLBACK_NAMES,
    OUTCOMES,
    SERVICES,
    STEP_NAMES,
    BatchResult,
    IntentResult,
)
from intent.settings import Settings, get_settings

log = logging.getLogger("intent.metrics")

PREFIX = "intent_"
ENDPOINTS = {
    SERVICES[0]: ("get_context", "analyze_context", "get_context_batch", "health"),
    SERVICES[1]: ("predict", "predict_batch", "health"),
}
LANES = ("get_context", "analyze_context", "predict", "other")
# An analysis can wait for breakers and limits up to max_deferral (600 s by default).
ANALYSIS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
BREAKER_STATES = ("closed", "open", "half-open")
TRANSITIONS = (
    ("closed", "open"),
    ("open", "half-open"),
    ("half-open", "closed"),
    ("half-open", "open"),
    ("open", "closed"),
    ("closed", "half-open"),
)


@dataclass(frozen=True)
class Family:
    """One metric family as Prometheus shows it (``name`` without a ``_total`` suffix for a
    counter); ``collected``: read from the shared state at each scrape, not recorded."""

    name: str
    kind: str  # counter, histogram, gauge
    labels: tuple[str, ...]
    help: str
    collected: bool = False

    @property
    def exposed(self) -> str:
        """The name a query uses (a counter's ``_total``; a histogram's base name)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def gauge(self) -> GaugeMetricFamily:
        """An empty gauge of this family, for a collector to fill at scrape time."""
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))


# The breaker's families: a team using the breaker alone registers them too
# (intent.breaker.register_metrics), so they are named here, not inline in FAMILIES.
TRANSITIONS_FAMILY = Family(
    "intent_circuit_breaker_transitions",
    "counter",
    ("breaker", "from_state", "to_state"),
    "Breaker state changes, counted once fleet-wide, by the process that performed each "
    "(a worker, the CLI, the admin endpoint).",
)
STATE = Family(
    "intent_circuit_breaker_state",
    "gauge",
    ("breaker", "state"),
    "1 for the breaker's current state, fleet-wide (read from the shared store).",
    collected=True,
)
WINDOW_FAILURES = Family(
    "intent_circuit_breaker_window_failures",
    "gauge",
    ("breaker",),
    "Failures in the breaker's current window.",
    collected=True,
)
WINDOW_CALLS = Family(
    "intent_circuit_breaker_window_calls",
    "gauge",
    ("breaker",),
    "Calls in the breaker's current window.",
    collected=True,
)
STORE_UP = Family(
    "intent_circuit_breaker_store_up",
    "gauge",
    (),
    "Whether the shared breaker state could be read.",
    collected=True,
)

FAMILIES = (
    Family(
        "intent_service_requests",
        "counter",
        ("service", "endpoint", "status"),
        "Downstream HTTP requests by logical endpoint and outcome (HTTP status, or "
        "timeout / connection_error).",
    ),
    Family(
        "intent_service_request_duration_seconds",
        "histogram",
        ("service", "endpoint"),
        "Downstream HTTP request duration, failures included.",
    ),
    TRANSITIONS_FAMILY,
    Family(
        "intent_task_retries", "counter", ("step",), "Steps run again after a transient failure."
    ),
    Family(
        "intent_retry_budget_spends",
        "counter",
        ("service", "outcome"),
        "Retries asked of a service's fleet-wide retry budget: granted, or refused (the step "
        "used its fallback or waited instead of retrying).",
    ),
    Family(
        "intent_rate_limit_deferrals",
        "counter",
        ("step",),
        "Steps that waited because a downstream rate limit was full (not retries).",
    ),
    Family(
        "intent_bulkhead_deferrals",
        "counter",
        ("step",),
        "Steps that waited because their service's bulkhead had every slot in flight "
        "fleet-wide (not retries).",
    ),
    Family(
        "intent_circuit_open_deferrals",
        "counter",
        ("step",),
        "Steps that waited because their service's breaker refused calls and no fallback "
        "answered (not retries).",
    ),
    Family(
        "intent_drill_faults",
        "counter",
        ("service", "kind"),
        "Faults a resilience drill injected client-side (status, timeout, latency): never "
        "a real failure of the service.",
    ),
    Family(
        "intent_analyses_degraded",
        "counter",
        ("fallback",),
        "Finished analyses that used a fallback (stale context, last known predictions).",
    ),
    Family(
        "intent_analyses_finished",
        "counter",
        ("status",),
        "Analyses that reached their end: completed, expired (deadline passed), failed, "
        "or rejected at intake.",
    ),
    Family(
        "intent_analysis_duration_seconds",
        "histogram",
        ("status",),
        "From submission to the end of the analysis, by how it ended.",
    ),
    STATE,
    WINDOW_FAILURES,
    WINDOW_CALLS,
    STORE_UP,
    Family(
        "intent_waiting_steps",
        "gauge",
        ("lane",),
        "Steps parked until they may run again (a retry's backoff, an open breaker, a "
        "full rate limit), per lane.",
        collected=True,
    ),
    Family(
        "intent_queue_messages",
        "gauge",
        ("queue",),
        "Task messages waiting in the broker's queue (Redis broker).",
        collected=True,
    ),
    Family(
        "intent_dead_letters",
        "gauge",
        ("stream",),
        "Entries in a dead-letter stream: events (consumers gave up) and tasks (workers "
        "refused the message).",
        collected=True,
    ),
)
BY_NAME = {family.name: family for family in FAMILIES}


class Metrics:
    """The recorded families in one registry, every known label value at 0. Hot-path
    recorders cache their labelled children: ``labels()`` costs as much again as the
    increment itself."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

        def build(name: str, **extra: Any) -> Any:
            family = BY_NAME[name]
            kind = Counter if family.kind == "counter" else Histogram
            return kind(name, family.help, family.labels, registry=registry, **extra)

        self.requests = build("intent_service_requests")
        self.request_duration = build("intent_service_request_duration_seconds")
        self.transitions = build("intent_circuit_breaker_transitions")
        self.retries = build("intent_task_retries")
        self.retry_budget = build("intent_retry_budget_spends")
        self.rate_limit_deferrals = build("intent_rate_limit_deferrals")
        self.circuit_open_deferrals = build("intent_circuit_open_deferrals")
        self.bulkhead_deferrals = build("intent_bulkhead_deferrals")
        self.drill_faults = build("intent_drill_faults")
        self.degraded = build("intent_analyses_degraded")
        self.finished = build("intent_analyses_finished")
        self.analysis_duration = build("intent_analysis_duration_seconds", buckets=ANALYSIS_BUCKETS)
        self._request_children: dict[tuple[str, str, int | str], tuple[Any, Any]] = {}
        self._initialise()

    def _initialise(self) -> None:
        """Every label value the pipeline knows, at 0."""
        for service, endpoints in ENDPOINTS.items():
            for endpoint in endpoints:
                self.requests.labels(service, endpoint, "200")
                self.request_duration.labels(service, endpoint)
            for old, new in TRANSITIONS:
                self.transitions.labels(service, old, new)
            for kind in DRILL_KINDS:
                self.drill_faults.labels(service, kind)
        for service in SERVICES:
            for outcome in ("granted", "refused"):
                self.retry_budget.labels(service, outcome)
        for step in STEP_NAMES:
            counters = (
                self.retries,
                self.rate_limit_deferrals,
                self.circuit_open_deferrals,
                self.bulkhead_deferrals,
            )
            for counter in counters:
                counter.labels(step)
        for fallback in FALLBACK_NAMES:
            self.degraded.labels(fallback)
        for status in OUTCOMES:
            self.finished.labels(status)
            self.analysis_duration.labels(status)

    def observe_request(
        self, service: str, endpoint: str, status: int | str, seconds: float
    ) -> None:
        key = (service, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(service, endpoint, str(status)),
                self.request_duration.labels(service, endpoint),
            )
        count, duration = children
        count.inc()
        duration.observe(seconds)

    def finish(self, status: str, submitted_at: float | None, now: float) -> None:
        self.finished.labels(status).inc()
        if submitted_at is not None:
            self.analysis_duration.labels(status).observe(max(0.0, now - submitted_at))


_metrics: Metrics | None = None
_metrics_pid = 0
_lock = threading.Lock()


def host_name() -> str:
    """This machine's (container's) name as it may appear in a file name: no ``_``
    (prometheus_client splits file names on it) and no path separator."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


class ProcessIdentifier:
    """``<hostname>-<pid>``: what names this process's sample files
    (``counter_<host>-<pid>.db``).

    prometheus_client names them by pid alone, but containers have pid namespaces of
    their own: two containers sharing a metrics volume (a worker and the admin, or
    ``--scale worker=2``) would both write ``counter_7.db``, each overwriting the other's
    totals. prometheus_client calls this at every increment to notice a fork, so it costs
    a ``getpid`` and a comparison; the name is looked up once per process."""

    __slots__ = ("_pid", "_value")

    def __init__(self) -> None:
        self._pid = -1
        self._value = ""

    def __call__(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # first call, or a forked child
            self._value = f"{host_name()}-{pid}"
            self._pid = pid
        return self._value


def use_directory(directory: str) -> None:
    """Multiprocess mode from now on in this process: samples go to files in ``directory``.

    prometheus_client picks its value class when it is imported, from
    ``PROMETHEUS_MULTIPROC_DIR``, with files named by pid alone; whoever imported it first,
    ours (named by host and pid) is set here before any of our metrics exists."""
    os.makedirs(directory, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    if not getattr(values.ValueClass, "_intent_host_and_pid", False):
        value_class = values.MultiProcessValue(process_identifier=ProcessIdentifier())
        value_class._intent_host_and_pid = True
        values.ValueClass = value_class


def metrics(settings: Settings | None = None) -> Metrics:
    """This process's metrics (built on first use, again in a forked child)."""
    global _metrics, _metrics_pid
    current = _metrics
    if current is not None and _metrics_pid == os.getpid():
        return current
    with _lock:
        if _metrics is None or _metrics_pid != os.getpid():
            directory = (settings or get_settings()).metrics_dir
            if directory:
                use_directory(directory)
            _metrics, _metrics_pid = Metrics(CollectorRegistry(auto_describe=False)), os.getpid()
        return _metrics


def reset_metrics() -> None:
    """Forget this process's metrics (tests that change settings call this)."""
    global _metrics
    with _lock:
        _metrics = None


# -- recorders: each an observer that never fails the caller ------------------------------


def _safely(record: Callable[[Metrics], None]) -> None:
    try:
        record(metrics())
    except Exception:
        log.exception("recording a metric failed")


def observe_request(service: str, endpoint: str, status: int | str, seconds: float) -> None:
    """One downstream HTTP request: ``status`` is the HTTP status or an error kind."""
    _safely(lambda m: m.observe_request(service, endpoint, status, seconds))


def record_transition(breaker: str, old_state: str, new_state: str) -> None:
    """A state change this process performed (a breaker's store step, an operator's
    action): counted here once, fleet-wide."""
    if old_state != new_state:
        _safely(lambda m: m.transitions.labels(breaker, old_state, new_state).inc())


def record_drill_fault(service: str, kind: str) -> None:
    """A fault a resilience drill injected into a call to ``service``."""
    _safely(lambda m: m.drill_faults.labels(service, kind).inc())


def record_retry(step: str) -> None:
    _safely(lambda m: m.retries.labels(step).inc())


def record_retry_budget(service: str, granted: bool) -> None:
    _safely(lambda m: m.retry_budget.labels(service, "granted" if granted else "refused").inc())


def record_deferral(step: str, cause: str) -> None:
    """A step that waits: ``cause`` is ``circuit_open``, ``rate_limit``, ``bulkhead`` or
    ``retry_budget`` (counted by ``intent_retry_budget_spends_total`` as refused)."""

    def record(m: Metrics) -> None:
        counters = {
            "circuit_open": m.circuit_open_deferrals,
            "rate_limit": m.rate_limit_deferrals,
            "bulkhead": m.bulkhead_deferrals,
        }
        counter = counters.get(cause)
        if counter is not None:
            counter.labels(step).inc()

    _safely(record)


def _finished(m: Metrics, result: IntentResult, now: float) -> None:
    m.finish(result.status, result.submitted_at, now)
    for fallback in result.fallbacks:
        m.degraded.labels(fallback).inc()


def record_finished(result: IntentResult, now: float | None = None) -> None:
    """An analysis came out of its last step (completed or expired)."""
    _safely(lambda m: _finished(m, result, time.time() if now is None else now))


def record_batch_finished(batch: BatchResult, now: float | None = None) -> None:
    """A batch came out of its last step: each item is one analysis, counted as a single
    one would be. A completed or expired item as :func:`record_finished` counts it; a
    failed one as ``failed``, or ``rejected`` when it never started (refused at intake:
    invalid, or over its client's limit)."""

    def record(m: Metrics) -> None:
        at = time.time() if now is None else now
        for item in batch.items:
            if item.status == "failed":
                if item.result is None:
                    m.finish("rejected", None, at)
                else:
                    m.finish("failed", item.result.submitted_at, at)
            elif item.status in ("completed", "expired") and item.result is not None:
                _finished(m, item.result, at)

    _safely(record)


def record_failed(
    status: str = "failed", submitted_at: float | None = None, now: float | None = None
) -> None:
    """An analysis stopped with an error (``rejected``: refused before it started); with
    ``submitted_at``, its duration too."""
    _safely(lambda m: m.finish(status, submitted_at, time.time() if now is None else now))


def clear_directory(directory: str) -> int:
    """Delete the sample files in ``directory`` before a fleet starts (files of processes
    long gone only slow scrapes down); returns how many. Never while workers run."""
    removed = 0
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)
        removed += 1
    return removed
