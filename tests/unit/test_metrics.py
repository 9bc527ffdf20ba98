"""Metrics without a broker: the recorders, breaker transitions counted once, the breaker
state collector, the exposition, and multiprocess mode across a fork."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from intent import metrics
from intent.admin import exposition
from intent.breaker import (
    BreakerStatus,
    CircuitAdmin,
    CircuitBreaker,
    CircuitConfig,
    MemoryStore,
    StoreError,
    TransitionListener,
)
from intent.errors import ServiceUnavailableError
from intent.models import BatchItem, BatchResult, ErrorInfo, IntentRequest, IntentResult
from intent.runtime import Runtime
from intent.settings import load_settings


@pytest.fixture
def fresh() -> Iterator[metrics.Metrics]:
    """This process's metrics, rebuilt from the (clean) settings: in-process mode."""
    metrics.reset_metrics()
    yield metrics.metrics()
    metrics.reset_metrics()


def sample(m: metrics.Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def parse(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_requests_are_counted_by_service_endpoint_and_status(fresh: metrics.Metrics) -> None:
    metrics.observe_request("context-service", "get_context", 200, 0.004)
    metrics.observe_request("context-service", "get_context", 200, 0.2)
    metrics.observe_request("context-service", "get_context", "timeout", 5.0)
    metrics.observe_request("prediction-service", "predict", 503, 0.01)

    ctx = {"service": "context-service", "endpoint": "get_context"}
    assert sample(fresh, "intent_service_requests_total", **ctx, status="200") == 2
    assert sample(fresh, "intent_service_requests_total", **ctx, status="timeout") == 1
    assert sample(fresh, "intent_service_request_duration_seconds_count", **ctx) == 3
    assert sample(fresh, "intent_service_request_duration_seconds_sum", **ctx) == pytest.approx(
        5.204
    )
    assert sample(fresh, "intent_service_request_duration_seconds_bucket", **ctx, le="0.005") == 1
    assert sample(fresh, "intent_service_request_duration_seconds_bucket", **ctx, le="0.25") == 2
    prediction = {"service": "prediction-service", "endpoint": "predict"}
    assert sample(fresh, "intent_service_requests_total", **prediction, status="503") == 1


def test_finished_analyses_count_status_fallbacks_and_duration(fresh: metrics.Metrics) -> None:
    request = IntentRequest(client_id="web", context_id="c1", pattern_id="checkout")
    started = IntentResult(request=request, submitted_at=1000.0)
    completed = started.model_copy(update={"status": "completed"})
    degraded = completed.degrade("context", "stale").degrade("predictions", "last known")
    expired = started.model_copy(update={"status": "expired"})

    metrics.record_finished(completed, now=1000.8)
    metrics.record_finished(degraded, now=1003.0)
    metrics.record_finished(expired, now=1400.0)
    metrics.record_finished(IntentResult(request=request, status="completed"))  # no start time
    metrics.record_failed()
    metrics.record_failed("rejected")

    assert sample(fresh, "intent_analyses_finished_total", status="completed") == 3
    assert sample(fresh, "intent_analyses_finished_total", status="expired") == 1
    assert sample(fresh, "intent_analyses_finished_total", status="failed") == 1
    assert sample(fresh, "intent_analyses_finished_total", status="rejected") == 1
    assert sample(fresh, "intent_analyses_degraded_total", fallback="context") == 1
    assert sample(fresh, "intent_analyses_degraded_total", fallback="predictions") == 1
    # Every outcome has its duration, by status; one without a start time has none.
    duration = "intent_analysis_duration_seconds"
    assert sample(fresh, f"{duration}_count", status="completed") == 2
    assert sample(fresh, f"{duration}_sum", status="completed") == pytest.approx(0.8 + 3.0)
    assert sample(fresh, f"{duration}_bucket", status="completed", le="1.0") == 1
    assert sample(fresh, f"{duration}_sum", status="expired") == pytest.approx(400.0)
    metrics.record_failed("failed", submitted_at=1000.0, now=1012.5)
    assert sample(fresh, f"{duration}_sum", status="failed") == pytest.approx(12.5)


def test_a_batch_counts_each_item_as_an_analysis(fresh: metrics.Metrics) -> None:
    def item(index: int, status: str, result: IntentResult | None) -> BatchItem:
        error = None if status != "failed" else ErrorInfo(type="E", message="m")
        return BatchItem(
            index=index, request_id=f"r{index}", status=status, result=result, error=error
        )  # type: ignore[arg-type]

    request = IntentRequest(client_id="web", context_id="c1", pattern_id="checkout")
    started = IntentResult(request=request, submitted_at=1000.0)
    done = started.model_copy(update={"status": "completed"})
    batch = BatchResult(
        batch_id="b1",
        items=[
            item(0, "completed", done),
            item(1, "completed", done.degrade("context", "stale")),
            item(2, "expired", started.model_copy(update={"status": "expired"})),
            item(3, "failed", started.degrade("predictions", "last known")),  # at a step
            item(4, "failed", None),  # refused at intake
        ],
        status="completed",
    )
    metrics.record_batch_finished(batch, now=1002.0)

    assert sample(fresh, "intent_analyses_finished_total", status="completed") == 2
    assert sample(fresh, "intent_analyses_finished_total", status="expired") == 1
    assert sample(fresh, "intent_analyses_finished_total", status="failed") == 1
    assert sample(fresh, "intent_analyses_finished_total", status="rejected") == 1
    # A failed analysis counts no fallback, as a single one; its duration, as failed.
    assert sample(fresh, "intent_analyses_degraded_total", fallback="context") == 1
    assert sample(fresh, "intent_analyses_degraded_total", fallback="predictions") == 0
    duration = "intent_analysis_duration_seconds"
    assert sample(fresh, f"{duration}_count", status="completed") == 2
    assert sample(fresh, f"{duration}_count", status="expired") == 1
    assert sample(fresh, f"{duration}_count", status="failed") == 1
    assert sample(fresh, f"{duration}_count", status="rejected") == 0  # never started
    assert sample(fresh, f"{duration}_sum", status="completed") == pytest.approx(4.0)


def test_retries_and_deferrals_by_step(fresh: metrics.Metrics) -> None:
    metrics.record_retry("fetch_context")
    metrics.record_retry("fetch_context")
    metrics.record_deferral("predict", "circuit_open")
    metrics.record_deferral("fetch_context", "rate_limit")
    metrics.record_deferral("fetch_context", "bulkhead")
    metrics.record_deferral("fetch_context", "retry_budget")  # counted by the budget's family

    assert sample(fresh, "intent_task_retries_total", step="fetch_context") == 2
    assert sample(fresh, "intent_circuit_open_deferrals_total", step="predict") == 1
    assert sample(fresh, "intent_rate_limit_deferrals_total", step="fetch_context") == 1
    assert sample(fresh, "intent_rate_limit_deferrals_total", step="predict") == 0
    # a bulkhead's wait is its own, and a budget's is not a rate limit's
    assert sample(fresh, "intent_bulkhead_deferrals_total", step="fetch_context") == 1


def test_each_transition_is_counted_once_by_the_process_that_made_it(
    fresh: metrics.Metrics,
) -> None:
    store = MemoryStore()
    config = CircuitConfig(failure_threshold=2, min_throughput=2, recovery_timeout=60)
    # As the runtime wires them: the breakers and the operators' view report to metrics.
    listening = [TransitionListener(metrics.record_transition)]
    breaker = CircuitBreaker("svc-a", config, store=store, listeners=listening)
    other = CircuitBreaker("svc-a", config, store=store, listeners=listening)  # elsewhere

    def fail() -> None:
        raise ServiceUnavailableError("svc-a", "down")

    for b in (breaker, other):
        with pytest.raises(ServiceUnavailableError):
            b.call(fail)
    assert store.snapshot("svc-a").state == "open"
    admin = CircuitAdmin(store, on_transition=metrics.record_transition)
    admin.reset("svc-a", "test")
    admin.reset("svc-a", "again: already closed")  # no state change

    def transitions(old: str, new: str) -> float:
        return sample(
            fresh,
            "intent_circuit_breaker_transitions_total",
            breaker="svc-a",
            from_state=old,
            to_state=new,
        )

    assert transitions("closed", "open") == 1
    assert transitions("open", "closed") == 1
    assert transitions("closed", "closed") == 0


def test_breaker_state_is_read_from_the_store_at_scrape_time() -> None:
    store = MemoryStore()
    admin = CircuitAdmin(store)
    admin.force_open("context-service", "maintenance")
    admin.reset("prediction-service", "seen")
    collected = parse_collector(exposition.BreakerStateCollector(lambda: admin))

    def state(breaker: str, name: str) -> float:
        return collected[("intent_circuit_breaker_state", (("breaker", breaker), ("state", name)))]

    assert collected[("intent_circuit_breaker_store_up", ())] == 1
    assert state("context-service", "open") == 1
    assert state("context-service", "closed") == 0
    assert state("context-service", "half-open") == 0
    assert state("prediction-service", "closed") == 1

    admin.reset("context-service", "over")  # the next scrape sees the change
    assert (
        parse_collector(exposition.BreakerStateCollector(lambda: admin))[
            ("intent_circuit_breaker_state", (("breaker", "context-service"), ("state", "closed")))
        ]
        == 1
    )


def test_an_unreadable_store_is_reported_not_raised() -> None:
    class Broken(CircuitAdmin):
        def list(self) -> list[BreakerStatus]:
            raise StoreError("redis unreachable")

    collected = parse_collector(exposition.BreakerStateCollector(lambda: Broken(MemoryStore())))
    assert collected == {("intent_circuit_breaker_store_up", ()): 0}


def parse_collector(
    collector: exposition.BreakerStateCollector,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_exposition_in_process_mode_is_parseable_and_complete(fresh: metrics.Metrics) -> None:
    runtime = Runtime(load_settings())
    runtime.breaker_store = MemoryStore()  # no Redis URL: a private store, asked for
    CircuitAdmin(runtime.breaker_store).force_open("context-service", "test")
    metrics.observe_request("context-service", "get_context", 200, 0.01)

    body, content_type = exposition.exposition(runtime)
    assert content_type.startswith("text/plain")
    samples = parse(body)
    key = (("endpoint", "get_context"), ("service", "context-service"), ("status", "200"))
    assert samples[("intent_service_requests_total", key)] == 1
    assert samples[
        ("intent_circuit_breaker_state", (("breaker", "context-service"), ("state", "open")))
    ]
    assert samples[("intent_circuit_breaker_store_up", ())] == 1

    body, content_type = exposition.exposition(runtime, accept="application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# A fresh interpreter: prometheus_client is imported *before* the settings name a
# directory, then the parent records, forks, and the child records too.
MULTIPROCESS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import prometheus_client  # first, without PROMETHEUS_MULTIPROC_DIR
    os.environ["INTENT_METRICS_DIR"] = sys.argv[1]
    from intent import metrics
    metrics.observe_request("context-service", "get_context", 200, 0.01)
    pid = os.fork()
    if pid == 0:
        metrics.observe_request("context-service", "get_context", 200, 0.01)
        metrics.observe_request("context-service", "get_context", 200, 0.01)
        metrics.record_retry("predict")
        os._exit(0)
    os.waitpid(pid, 0)
    print(os.getpid(), pid)
    """
)


def test_multiprocess_mode_whoever_imported_prometheus_first(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    parent, child = out.stdout.split()
    files = {p.name for p in directory.iterdir()}
    host = metrics.host_name()
    assert {f"counter_{host}-{parent}.db", f"counter_{host}-{child}.db"} <= files

    runtime = Runtime(load_settings(metrics_dir=str(directory)))
    samples = parse(exposition.exposition(runtime)[0])
    key = (("endpoint", "get_context"), ("service", "context-service"), ("status", "200"))
    assert samples[("intent_service_requests_total", key)] == 3  # 1 + 2, the parent's not doubled
    labels = (("endpoint", "get_context"), ("service", "context-service"))
    assert samples[("intent_service_request_duration_seconds_count", labels)] == 3
    assert samples[("intent_task_retries_total", (("step", "predict"),))] == 1

    assert metrics.clear_directory(str(directory)) == len(files)
    assert list(directory.iterdir()) == []


# One container's process: pid 4242 in its own pid namespace, on the host (container) name
# given. It records, waits for a line on stdin, and records again.
CONTAINER_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys
    os.getpid = lambda: 4242  # before prometheus_client binds it as its default identifier
    socket.gethostname = lambda: sys.argv[2]
    import prometheus_client
    os.environ["INTENT_METRICS_DIR"] = sys.argv[1]
    from intent import metrics
    metrics.observe_request("context-service", "get_context", 200, 0.01)
    print("recorded", flush=True)
    sys.stdin.readline()
    metrics.observe_request("context-service", "get_context", 200, 0.01)
    print("done", flush=True)
    """
)


def test_two_containers_with_the_same_pid_keep_files_of_their_own(tmp_path: Path) -> None:
    """Two containers on one metrics volume, each with a process of pid 4242, recording
    while the other runs: named by pid alone they would share ``counter_4242.db`` and
    each overwrite the other's count."""
    directory = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}

    def start(host: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", CONTAINER_SCRIPT, str(directory), host],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdout is not None and process.stdout.readline() == "recorded\n"
        return process

    first = start("worker-a1")
    second = start("worker-b2")  # both running, one sample each
    for process in (first, second):  # each records once more, in turn
        out, _ = process.communicate("go\n", timeout=60)
        assert out == "done\n" and process.returncode == 0

    files = {p.name for p in directory.iterdir()}
    assert {"counter_worker-a1-4242.db", "counter_worker-b2-4242.db"} <= files
    samples = parse(exposition.exposition(Runtime(load_settings(metrics_dir=str(directory))))[0])
    key = (("endpoint", "get_context"), ("service", "context-service"), ("status", "200"))
    assert samples[("intent_service_requests_total", key)] == 4
    labels = (("endpoint", "get_context"), ("service", "context-service"))
    assert samples[("intent_service_request_duration_seconds_count", labels)] == 4


def test_the_process_identifier_is_a_safe_file_name_part(monkeypatch: pytest.MonkeyPatch) -> None:
    # prometheus_client splits file names on "_"; a name must not leave the directory.
    monkeypatch.setattr(socket, "gethostname", lambda: "build_host/../x")
    identify = metrics.ProcessIdentifier()
    assert identify() == f"build-host-..-x-{os.getpid()}"
    monkeypatch.setattr(socket, "gethostname", lambda: "renamed")
    assert identify() == f"build-host-..-x-{os.getpid()}"  # looked up once per process


def test_known_label_values_are_there_before_any_event(fresh: metrics.Metrics) -> None:
    """A rate over a label value is defined from the first scrape, not the first event."""
    samples = parse(generate_latest(fresh.registry))
    assert samples[("intent_task_retries_total", (("step", "predict"),))] == 0
    assert samples[("intent_analyses_finished_total", (("status", "rejected"),))] == 0
    assert samples[("intent_analyses_degraded_total", (("fallback", "context"),))] == 0
    transition = (("breaker", "context-service"), ("from_state", "closed"), ("to_state", "open"))
    assert samples[("intent_circuit_breaker_transitions_total", transition)] == 0
    request = (("endpoint", "get_context"), ("service", "context-service"), ("status", "200"))
    assert samples[("intent_service_requests_total", request)] == 0
    count = ("intent_analysis_duration_seconds_count", (("status", "failed"),))
    assert samples[count] == 0


def test_every_family_is_prefixed_and_every_recorded_one_is_declared(
    fresh: metrics.Metrics,
) -> None:
    assert all(f.name.startswith("intent_") for f in metrics.FAMILIES)
    recorded = {family.name for family in fresh.registry.collect()}
    declared = {f.name for f in metrics.FAMILIES if not f.collected}
    assert recorded == declared


def test_the_readme_metrics_table_is_the_declared_families() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Metrics and logs", 1)[1].split("\n\n", 2)[2]
    rows = [line for line in section.splitlines() if line.startswith("| `intent_")]
    table = {}
    for row in rows:
        name, labels, _ = (cell.strip() for cell in row.strip("|").split("|", 2))
        table[name.strip("`")] = tuple(label.strip() for label in labels.split(",") if label)
    declared = {f.exposed: f.labels for f in metrics.FAMILIES}
    assert table == declared
