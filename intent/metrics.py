"""Prometheus metrics of the pipeline, correct across prefork worker processes.

With ``INTENT_METRICS_DIR`` set, every process writes its samples to files in that
directory (prometheus_client's multiprocess mode, the files named by host and pid: see
:class:`ProcessIdentifier`) and :func:`exposition` merges them;
without it, metrics live in this process's registry. Breaker state is read from the shared
store when scraped, so it is the fleet's state, not one process's last sight of it.

The metrics are built on first use in each process: a prefork child builds its own after
the fork, and multiprocess mode is switched on from the settings just before, whatever
imported ``prometheus_client`` first.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from intent.settings import Settings, get_settings

if TYPE_CHECKING:
    from intent.breaker.admin import CircuitAdmin
    from intent.models import BatchResult, IntentResult
    from intent.runtime import Runtime

log = logging.getLogger("intent.metrics")

BREAKER_STATES = ("closed", "open", "half-open")
# An analysis can wait for breakers and limits up to max_deferral (600 s by default).
ANALYSIS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class Metrics:
    """The service's metrics in one registry. Hot-path recorders cache their labelled
    children: ``labels()`` costs as much again as the increment itself."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter(
            "service_requests", "Downstream HTTP requests by logical endpoint and outcome "
            "(HTTP status, or timeout / connection_error).",
            ["service", "endpoint", "status"], registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "service_request_duration_seconds", "Downstream HTTP request duration, failures "
            "included.", ["service", "endpoint"], registry=registry,
        )  # fmt: skip
        self.transitions = Counter(
            "circuit_breaker_transitions", "Breaker state changes, counted once fleet-wide "
            "(by the process that performed each).",
            ["breaker", "from_state", "to_state"], registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            "task_retries", "Steps re-scheduled after a transient failure.", ["step"],
            registry=registry,
        )  # fmt: skip
        self.rate_limit_deferrals = Counter(
            "rate_limit_deferrals", "Steps re-scheduled because a downstream rate limit was "
            "full (not retries).", ["step"], registry=registry,
        )  # fmt: skip
        self.circuit_open_deferrals = Counter(
            "circuit_open_deferrals", "Steps re-scheduled because their service's breaker "
            "was open and no fallback answered (not retries).", ["step"], registry=registry,
        )  # fmt: skip
        self.degraded = Counter(
            "analyses_degraded", "Finished analyses that used a fallback (stale context, "
            "last known predictions), by fallback.", ["fallback"], registry=registry,
        )  # fmt: skip
        self.finished = Counter(
            "analyses_finished", "Analyses that reached their end: completed, expired "
            "(deadline passed), failed, or rejected at intake.", ["status"], registry=registry,
        )  # fmt: skip
        self.analysis_duration = Histogram(
            "analysis_duration_seconds", "From submission to the end of emit_events.",
            buckets=ANALYSIS_BUCKETS, registry=registry,
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, int | str], tuple[Any, Any]] = {}

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


_metrics: Metrics | None = None
_metrics_pid = 0
_lock = threading.Lock()


def _host_name() -> str:
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
            self._value = f"{_host_name()}-{pid}"
            self._pid = pid
        return self._value


def _use_directory(directory: str) -> None:
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
                _use_directory(directory)
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
    _safely(lambda m: m.transitions.labels(breaker, old_state, new_state).inc())


def record_retry(step: str) -> None:
    _safely(lambda m: m.retries.labels(step).inc())


def record_deferral(step: str, circuit_open: bool) -> None:
    def record(m: Metrics) -> None:
        counter = m.circuit_open_deferrals if circuit_open else m.rate_limit_deferrals
        counter.labels(step).inc()

    _safely(record)


def _finished(m: Metrics, result: IntentResult, now: float) -> None:
    m.finished.labels(result.status).inc()
    for fallback in result.fallbacks:
        m.degraded.labels(fallback).inc()
    if result.submitted_at is not None:
        m.analysis_duration.observe(max(0.0, now - result.submitted_at))


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
                m.finished.labels("rejected" if item.result is None else "failed").inc()
            elif item.status in ("completed", "expired") and item.result is not None:
                _finished(m, item.result, at)

    _safely(record)


def record_failed(status: str = "failed") -> None:
    """An analysis stopped with an error (``rejected``: refused before it started)."""
    _safely(lambda m: m.finished.labels(status).inc())


# -- exposition -------------------------------------------------------------------------


class BreakerStateCollector:
    """The breakers' state as the shared store holds it, read at each scrape:
    ``circuit_breaker_state{breaker,state}`` is 1 for the current state, 0 for the others."""

    def __init__(self, admin: Callable[[], CircuitAdmin]):
        self._admin = admin

    def collect(self) -> Iterator[Metric]:
        from intent.breaker.store import StoreError

        up = GaugeMetricFamily(
            "circuit_breaker_store_up", "Whether the shared breaker state could be read."
        )
        try:
            statuses = self._admin().list()
        except StoreError as exc:
            log.warning("metrics: breaker state unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        state = GaugeMetricFamily(
            "circuit_breaker_state", "1 for the breaker's current state, fleet-wide.",
            labels=["breaker", "state"],
        )  # fmt: skip
        failures = GaugeMetricFamily(
            "circuit_breaker_window_failures", "Failures in the breaker's current window.",
            labels=["breaker"],
        )  # fmt: skip
        calls = GaugeMetricFamily(
            "circuit_breaker_window_calls", "Calls in the breaker's current window.",
            labels=["breaker"],
        )  # fmt: skip
        for status in statuses:
            for name in BREAKER_STATES:
                state.add_metric([status.name, name], 1 if status.state == name else 0)
            failures.add_metric([status.name], status.failures)
            calls.add_metric([status.name], status.calls)
        yield from (state, failures, calls)


class WaitingCollector:
    """Steps parked until they may run again, per lane, read at each scrape:
    ``waiting_steps{lane}`` (during an outage, what the fleet will do once it recovers)."""

    def __init__(self, depth: Callable[[], dict[str, int]]):
        self._depth = depth

    def collect(self) -> Iterator[Metric]:
        try:
            depth = self._depth()
        except Exception as exc:  # the store_up gauge already says Redis is away
            log.warning("metrics: waiting steps unreadable: %s", exc)
            return
        gauge = GaugeMetricFamily(
            "waiting_steps", "Steps parked until they may run again (a retry's backoff, an "
            "open breaker, a full rate limit), per lane.", labels=["lane"],
        )  # fmt: skip
        for lane, count in depth.items():
            gauge.add_metric([lane], count)
        yield gauge


class _Merged:
    """Several collectors as one, for the encoders."""

    def __init__(self, collectors: Iterable[Any]):
        self._collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def shared_admin(runtime: Runtime) -> CircuitAdmin:
    """Operators' view over the shared store itself: not the in-memory fallback, which
    would show this process's private state as the fleet's."""
    from intent.breaker import CircuitAdmin, FallbackStore

    store = runtime.breaker_store
    return CircuitAdmin(store.primary if isinstance(store, FallbackStore) else store)


def exposition(
    runtime: Runtime, accept: str | None = None, circuits: CircuitAdmin | None = None
) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type (Prometheus text; OpenMetrics when
    ``accept`` asks for it): every process's samples plus the breakers' state, read through
    ``circuits`` (default: over the runtime's shared store)."""
    directory = runtime.settings.metrics_dir
    sources: list[Any] = []
    if directory:
        os.makedirs(directory, exist_ok=True)
        sources.append(MultiProcessCollector(None, path=directory))
    else:
        sources.append(metrics(runtime.settings).registry)
    sources.append(BreakerStateCollector(lambda: circuits or shared_admin(runtime)))
    sources.append(WaitingCollector(lambda: runtime.waiting.depth()))
    encode, content_type = choose_encoder(accept or "")
    return encode(_Merged(sources)), content_type


def clear_directory(directory: str) -> int:
    """Delete the sample files in ``directory`` before a fleet starts (files of processes
    long gone only slow scrapes down); returns how many. Never while workers run."""
    removed = 0
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)
        removed += 1
    return removed
