"""Structured logs of a real prefork worker: JSON lines with the task's request_id and
task_id on every downstream request, retry, deferral and breaker transition, against a
password-protected Redis whose password appears in no line of the log or the console."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from celery import Celery

from intent.embedded import EmbeddedRedis, die_with_parent
from intent.reference import ReferenceControl
from tests.integration.conftest import FAST_RETRY_ENV, ReferenceServices

pytestmark = [pytest.mark.integration]

PASSWORD = f"pw-{uuid.uuid4().hex}"
REQUEST_FIELDS = ("service", "endpoint", "duration", "status", "request_id", "task_id")


@dataclass
class LoggedWorker:
    process: subprocess.Popen[bytes]
    app: Celery
    queue: str
    logfile: Path
    console: Path
    redis: EmbeddedRedis

    def analyse(self, **request: Any) -> dict[str, Any]:
        """One analysis by task name, as a web application sends it; its result."""
        payload = {"client_id": "web", "pattern_id": "checkout", **request}
        result = self.app.send_task("intent.analyze", args=[payload], queue=self.queue)
        answer: dict[str, Any] = result.get(timeout=60)
        return answer

    def lines(self) -> list[dict[str, Any]]:
        # Every line of the worker's log is one JSON object, Celery's own lines included.
        return [json.loads(line) for line in self.logfile.read_text().splitlines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def worker(
    reference: ReferenceServices, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoggedWorker]:
    logdir = tmp_path_factory.mktemp("logs")
    queue = f"intent-logs-{uuid.uuid4().hex[:8]}"
    name = f"{queue}@localhost"
    with EmbeddedRedis(password=PASSWORD) as server:
        env = {
            **os.environ,
            **FAST_RETRY_ENV,
            "INTENT_REDIS_URL": server.url,
            "INTENT_QUEUE": queue,
            "INTENT_LOG_FORMAT": "json",
            "INTENT_LOG_LEVEL": "DEBUG",  # every request line (answered ones are DEBUG)
            # A breaker that trips on two failures and tries again after a second.
            "INTENT_CIRCUIT_FAILURE_THRESHOLD": "2",
            "INTENT_CIRCUIT_MIN_THROUGHPUT": "2",
            "INTENT_CIRCUIT_RECOVERY_TIMEOUT": "1",
            "INTENT_DEFER_JITTER": "0.2",
        }
        console = logdir / "console.txt"
        logfile = logdir / "worker.log"
        with console.open("wb") as out:
            # Not --quiet: Celery's banner, which shows the broker URL, is checked too.
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tasks.app",
                    "worker",
                    "-P",
                    "prefork",
                    "-c",
                    "2",
                    "-Q",
                    queue,
                    "-n",
                    name,
                    "--loglevel",
                    "WARNING",
                    "--logfile",
                    str(logfile),
                    "--without-gossip",
                    "--without-mingle",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        app = Celery("logs-client", broker=server.url, backend=server.url, set_as_current=False)
        app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
        )
        logged = LoggedWorker(process, app, queue, logfile, console, server)
        try:
            deadline = time.monotonic() + 60
            while not app.control.ping(destination=[name], timeout=0.5):
                assert process.poll() is None, console.read_text()
                assert time.monotonic() < deadline, "the worker did not answer a ping"
            yield logged
        finally:
            logged.stop()
            app.close()


def test_downstream_requests_and_retries_carry_their_fields(
    worker: LoggedWorker, context_service: ReferenceControl
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [f"logs-{tag}-{i}" for i in range(3)]
    context_service.set_faults(status=503, count=1)  # the first context call fails once
    results = [worker.analyse(request_id=rid, context_id=f"ctx-l-{rid}") for rid in ids]
    assert all(r["status"] == "completed" for r in results)

    everything = worker.lines()
    # Every downstream request of this worker, whatever its analysis, has every field.
    for line in everything:
        if line["logger"] == "intent.clients":
            assert all(field in line for field in REQUEST_FIELDS), line
            assert line["task_id"].startswith(line["request_id"] + ".")
            assert line["duration"] >= 0
    lines = [line for line in everything if line.get("request_id") in ids]
    requests = [line for line in lines if line["logger"] == "intent.clients"]
    seen = {(line["request_id"], line["endpoint"], line["task_id"]) for line in requests}
    for rid in ids:
        assert (rid, "get_context", f"{rid}.fetch_context") in seen
        assert (rid, "predict", f"{rid}.predict") in seen
    failed = [line for line in requests if line["status"] == 503]
    assert [(line["service"], line["endpoint"]) for line in failed] == [
        ("context-service", "get_context")
    ]

    (retry,) = [line for line in lines if line["message"].startswith("retrying")]
    assert retry["level"] == "WARNING"
    assert retry["request_id"] == failed[0]["request_id"]
    assert retry["task_id"] == failed[0]["task_id"]
    assert (retry["step"], retry["service"], retry["retry"]) == (
        "fetch_context",
        "context-service",
        1,
    )
    assert retry["error"] == "ServiceUnavailableError"
    assert 0 < retry["countdown"] <= 0.2


def test_breaker_transitions_and_deferrals_carry_their_fields(
    worker: LoggedWorker, prediction_service: ReferenceControl
) -> None:
    rid = f"logs-b-{uuid.uuid4().hex[:8]}"
    later = f"{rid}-later"
    prediction_service.set_faults(status=503, count=2)  # two failures trip the breaker
    first = worker.app.send_task(
        "intent.analyze",
        args=[
            {
                "client_id": "web",
                "pattern_id": "checkout",
                "request_id": rid,
                "context_id": f"ctx-l-{rid}",
            }
        ],
        queue=worker.queue,
    )
    deadline = time.monotonic() + 20
    while not any(
        line.get("new_state") == "open" for line in worker.lines() if line.get("request_id") == rid
    ):
        assert time.monotonic() < deadline, "the breaker never opened"
        time.sleep(0.02)
    # An analysis reaching the open breaker waits for it: a deferral, not a retry.
    result = worker.analyse(request_id=later, context_id=f"ctx-l-{later}")
    assert result["status"] == "completed"
    assert first.get(timeout=30)["status"] == "completed"

    lines = [line for line in worker.lines() if line.get("request_id") in (rid, later)]
    transitions = [line for line in lines if line["logger"] == "intent.breaker"]
    assert [(t["old_state"], t["new_state"]) for t in transitions] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    for line in transitions:
        assert line["breaker"] == "prediction-service"
        assert line["reason"]
        assert line["task_id"] in (f"{rid}.predict", f"{later}.predict")
    deferrals = [line for line in lines if line["message"].startswith("deferring")]
    # The call whose failure opened the breaker waits for it too: a deferral, not a retry.
    assert [d["request_id"] for d in deferrals] == [rid, later]
    deferral = deferrals[1]
    assert deferral["step"] == "predict"
    assert deferral["service"] == "prediction-service"
    assert deferral["error"] == "CircuitOpenError"
    assert deferral["task_id"] == f"{later}.predict"
    assert deferral["countdown"] > 0


def test_the_redis_password_appears_nowhere(worker: LoggedWorker) -> None:
    """Stops the worker first, so its shutdown lines are read too (keep this test last)."""
    worker.analyse(context_id="ctx-secret-check")
    worker.stop()
    console = worker.console.read_text()
    log = worker.logfile.read_text()

    for text in (console, log):
        assert PASSWORD not in text
        assert quote(PASSWORD, safe="") not in text
    hostport = f"{worker.redis.host}:{worker.redis.port}"
    # The URLs were shown, with the password masked: by Celery's banner, by Celery's log
    # line (re-masked by the formatter), and by the worker's own start-up line.
    assert f"transport:   redis://:**@{hostport}/0" in console
    lines = worker.lines()
    messages = [line["message"] for line in lines]
    assert f"Connected to redis://:***@{hostport}/0" in messages
    (ready,) = [line for line in lines if line["message"].startswith("worker ready")]
    assert ready["redis"] == ready["broker"] == f"redis://:***@{hostport}/0"


def test_at_info_an_analysis_logs_one_line(
    clean: Any, reference: ReferenceServices, tmp_path: Path
) -> None:
    """INFO is an operator's level: an analysis that went well is one line (its outcome and
    duration), not Celery's two lines per task and one per downstream request."""
    from intent.dev.stack import WorkerProcess
    from tasks import submit
    from tasks.signals import PER_TASK_LOGGERS
    from tests.helpers import request

    logfile = tmp_path / "worker.log"
    env = {"INTENT_LOG_LEVEL": "INFO", "INTENT_LOG_FORMAT": "json"}
    worker = WorkerProcess(2, env=env, loglevel="INFO", logfile=str(logfile))
    ids = [f"info-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    try:
        worker.wait_ready()
        handles = [submit(request(request_id=rid, context_id=f"ctx-{rid}")) for rid in ids]
        assert all(h.get(timeout=30).status == "completed" for h in handles)
        time.sleep(0.5)  # the last step's line is written after its result
    finally:
        worker.stop()
    lines = [json.loads(line) for line in logfile.read_text().splitlines() if line[:1] == "{"]
    for rid in ids:
        mine = [line for line in lines if line.get("request_id") == rid]
        assert [(line["logger"], line["level"]) for line in mine] == [("intent.tasks", "INFO")]
        assert mine[0]["message"].startswith(f"analysis {rid} completed in ")
        assert mine[0]["status"] == "completed" and mine[0]["duration"] > 0
    assert not [line for line in lines if line["logger"] in PER_TASK_LOGGERS]
