"""``intent flower`` against the test Redis and a live prefork worker: Flower sees the
pipeline's tasks by name through its HTTP API, and keeps its basic auth."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import requests

from intent.dev.stack import WorkerProcess
from intent.embedded import EmbeddedRedis, die_with_parent, free_port
from intent.reference import ReferenceControl
from intent.runtime import get_runtime
from intent.settings import get_settings
from tasks import submit
from tasks.app import app
from tests.integration.test_pipeline_inprocess import request

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]

USER, PASSWORD = "ops", f"pw-{uuid.uuid4().hex}"
SECOND_USER, SECOND_PASSWORD = "oncall", f"pw-{uuid.uuid4().hex}"
AUTH = (USER, PASSWORD)
STEPS = ("intent.fetch_context", "intent.predict", "intent.detect_pattern", "intent.emit_events")

T = TypeVar("T")


def until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f} s (last answer: {last!r})")


class FlowerProcess:
    """``intent flower --port N`` as a child process; its output goes to ``log``."""

    def __init__(self, env: Mapping[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "intent.cli", "flower", "--port", str(self.port)],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, auth: tuple[str, str] | None = AUTH, **params: Any) -> Any:
        return requests.get(self.url + path, auth=auth, params=params, timeout=10)

    def api(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        response.raise_for_status()
        return response.json()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower exited ({self.process.returncode}):\n{self.output()}")
            with contextlib.suppress(requests.RequestException):
                return self.get("/healthcheck", auth=None).ok
            return False

        until(answers, timeout, "Flower did not answer /healthcheck")

    def wait_for_worker(self, name: str, timeout: float = 60.0) -> None:
        """Until Flower has a heartbeat event of ``name``: its event consumer is live."""
        until(
            lambda: self.api("/api/workers", status=1).get(name),
            timeout,
            f"Flower saw no event of worker {name}",
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextlib.contextmanager
def running_flower(env: Mapping[str, str], log: Path) -> Iterator[FlowerProcess]:
    flower = FlowerProcess(env, log)
    try:
        flower.wait_ready()
        yield flower
    finally:
        flower.stop()


def production_env() -> dict[str, str]:
    return {
        "INTENT_ENVIRONMENT": "production",
        "INTENT_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD},{SECOND_USER}:{SECOND_PASSWORD}",
    }


@pytest.fixture(scope="module")
def flower(
    prefork_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowerProcess]:
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with running_flower(production_env(), log) as process:
        process.wait_for_worker(prefork_worker.name)
        yield process


def run_analyses(client: redis.Redis) -> dict[str, Any]:
    """Two analyses by submit(), one by name, and the by-name one resubmitted."""
    by_submit = [request(context_id=f"ctx-{n}") for n in (11, 12)]
    for payload in by_submit:
        assert submit(payload).get(timeout=30).status == "completed"
    by_name = request(context_id="ctx-13")
    analysis = app.send_task("intent.analyze", args=[by_name])
    assert analysis.get(timeout=30)["status"] == "completed"
    again = app.send_task("intent.analyze", args=[by_name])
    assert again.get(timeout=30)["status"] == "duplicate"
    return {
        "request_ids": [p["request_id"] for p in (*by_submit, by_name)],
        "analysis_ids": [p["request_id"] for p in by_submit] + [analysis.id],
        "by_name": by_name["request_id"],
        "by_name_id": analysis.id,
        "duplicate_id": again.id,
    }


def expected_tasks(run: dict[str, Any]) -> dict[str, set[str]]:
    """Task name -> the ids Flower must show for it, all SUCCESS."""
    expected = {
        step: {f"{rid}.{step.removeprefix('intent.')}" for rid in run["request_ids"]}
        for step in STEPS[:-1]
    }
    # An analysis's result id is its last step's: the request_id, or for one submitted by
    # name the intent.analyze task's own id (Celery's replace hands it to the chain).
    expected["intent.emit_events"] = set(run["analysis_ids"])
    # A resubmitted request_id by name: intent.analyze answers "duplicate" itself.
    expected["intent.analyze"] = {run["duplicate_id"]}
    return expected


def assert_flower_shows_the_pipeline(flower: FlowerProcess, worker: str, run: dict) -> None:
    for name, ids in expected_tasks(run).items():

        def found(name: str = name, ids: set[str] = ids) -> dict[str, Any] | None:
            tasks = flower.api("/api/tasks", taskname=name, state="SUCCESS")
            return tasks if ids <= set(tasks) else None

        tasks = until(found, 30, f"Flower did not list {sorted(ids)} as {name} SUCCESS")
        for task_id in ids:
            assert tasks[task_id]["name"] == name
            assert tasks[task_id]["state"] == "SUCCESS"
            assert tasks[task_id]["worker"] == worker

    # The by-name analysis: its chain hangs off the intent.analyze task Flower saw.
    first = flower.api(f"/api/task/info/{run['by_name']}.fetch_context")
    assert first["parent_id"] == first["root_id"] == run["by_name_id"]
    final = flower.api(f"/api/task/info/{run['by_name_id']}")
    assert final["state"] == "SUCCESS" and final["worker"] == worker
    duplicate = flower.api(f"/api/task/info/{run['duplicate_id']}")
    assert duplicate["name"] == "intent.analyze" and duplicate["state"] == "SUCCESS"
    assert "duplicate" in duplicate["result"] and run["by_name_id"] in duplicate["result"]


def assert_flower_lists_the_worker(flower: FlowerProcess, worker: str, transport: str) -> None:
    workers = flower.api("/api/workers", refresh=1)
    assert worker in workers, sorted(workers)
    info = workers[worker]
    assert set(STEPS) | {"intent.analyze"} <= set(info["registered"])
    assert sorted(q["name"] for q in info["active_queues"]) == sorted(get_settings().worker_queues)
    assert info["stats"]["broker"]["transport"] == transport


def test_flower_finds_the_pipeline_tasks_by_name(
    clean: redis.Redis, prefork_worker: WorkerProcess, flower: FlowerProcess
) -> None:
    run = run_analyses(clean)
    assert_flower_shows_the_pipeline(flower, prefork_worker.name, run)


def test_an_analysis_sent_over_flowers_http_api_is_read_back_by_its_request_id(
    clean: redis.Redis, flower: FlowerProcess
) -> None:
    """The README's plain-HTTP example: send-task by name (no queue), result by request_id."""
    payload = request(context_id="ctx-1001")
    sent = requests.post(
        f"{flower.url}/api/task/send-task/intent.analyze",
        json={"args": [payload]},
        auth=AUTH,
        timeout=10,
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["task-id"] != payload["request_id"]

    def done() -> dict[str, Any] | None:
        answer = flower.api(f"/api/task/result/{payload['request_id']}")
        return answer if answer["state"] == "SUCCESS" else None

    answer = until(done, 30, "the analysis's result under its request_id")
    assert answer["result"]["status"] == "completed"
    assert answer["result"]["request"]["request_id"] == payload["request_id"]


def test_flower_tells_a_deferral_from_a_retry(
    clean: redis.Redis, flower: FlowerProcess, context_service: ReferenceControl
) -> None:
    """A step waiting for an open breaker shows as RETRY with Deferred(...) and the wait's
    own traceback; a real retry shows its error. Both analyses then complete."""
    circuits = get_runtime().circuits
    context_service.set_faults(status=503, count=1, match="ctx-retried")
    retried = submit(request(context_id="ctx-retried"))

    def shown(task_id: str) -> dict[str, Any] | None:
        info = flower.get(f"/api/task/info/{task_id}")
        return info.json() if info.status_code == 200 and info.json().get("exception") else None

    # The retried step must meet its 503 before the breaker is forced open, or it is deferred.
    retry = until(lambda: shown(f"{retried.request_id}.fetch_context"), 30, "the retry")
    circuits.force_open("context-service", "drill")
    deferred = submit(request(context_id="ctx-deferred"))

    try:
        wait = until(lambda: shown(f"{deferred.request_id}.fetch_context"), 30, "the deferral")
    finally:
        circuits.reset("context-service", "drill over")
    assert wait["exception"].startswith("Deferred("), wait["exception"]
    assert "fetch_context" in wait["exception"] and "context-service" in wait["exception"]
    assert "During handling of the above exception" not in (wait["traceback"] or "")
    assert retry["exception"].startswith("ServiceUnavailableError("), retry["exception"]
    assert deferred.get(timeout=60).deferrals == {"fetch_context": 1}
    assert retried.get(timeout=60).retries == {"fetch_context": 1}


def test_flower_lists_the_worker_and_the_queue(
    prefork_worker: WorkerProcess, flower: FlowerProcess
) -> None:
    assert_flower_lists_the_worker(flower, prefork_worker.name, "redis")
    # Broker information: Flower reads the queue's length from the Redis broker.
    queues = flower.api("/api/queues/length")["active_queues"]
    assert sorted(q["name"] for q in queues) == sorted(get_settings().worker_queues)
    assert isinstance(queues[0]["messages"], int)


@pytest.mark.parametrize("path", ["/api/tasks", "/api/workers", "/"])
def test_flower_refuses_requests_without_valid_credentials(
    flower: FlowerProcess, path: str
) -> None:
    assert flower.get(path, auth=None).status_code == 401
    assert flower.get(path, auth=(USER, "wrong")).status_code == 401
    assert flower.get(path, auth=(SECOND_USER, PASSWORD)).status_code == 401
    assert flower.get(path, auth=AUTH).status_code == 200
    assert flower.get(path, auth=(SECOND_USER, SECOND_PASSWORD)).status_code == 200


def test_flower_keeps_its_credentials_out_of_its_command_line(flower: FlowerProcess) -> None:
    cmdline = Path(f"/proc/{flower.process.pid}/cmdline").read_bytes().decode()
    assert "flower" in cmdline  # intent flower became Flower in the same process
    assert PASSWORD not in cmdline and SECOND_PASSWORD not in cmdline
    output = flower.output()
    assert PASSWORD not in output and SECOND_PASSWORD not in output


def test_flower_shows_a_password_broker_url_masked(tmp_path: Path) -> None:
    broker_password = f"pw-{uuid.uuid4().hex}"
    with EmbeddedRedis(password=broker_password) as server:  # the test Redis has none
        env = {**production_env(), "INTENT_REDIS_URL": server.url}
        with running_flower(env, tmp_path / "flower.log") as flower:
            # Flower reads the queue's length from this Redis: the password works.
            queues = flower.api("/api/queues/length")["active_queues"]
            assert sorted(queues, key=lambda q: q["name"]) == [
                {"name": name, "messages": 0} for name in sorted(get_settings().worker_queues)
            ]
        output = flower.output()

    assert f"Broker: redis://:**@127.0.0.1:{server.port}/0" in output, output
    assert broker_password not in output


def test_flower_in_production_without_credentials_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.pop("INTENT_FLOWER_BASIC_AUTH", None)
    env["INTENT_ENVIRONMENT"] = "production"
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", "flower", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "INTENT_FLOWER_BASIC_AUTH" in out.stderr


def test_flower_in_development_serves_its_api_without_credentials(
    prefork_worker: WorkerProcess, tmp_path: Path
) -> None:
    env = {"INTENT_ENVIRONMENT": "development", "INTENT_FLOWER_BASIC_AUTH": ""}
    with running_flower(env, tmp_path / "flower.log") as open_flower:
        response = open_flower.get("/api/workers", auth=None, status=1)
        assert response.status_code == 200
        cmdline = Path(f"/proc/{open_flower.process.pid}/cmdline").read_bytes()
        assert b"--address=127.0.0.1" in cmdline  # an open Flower listens on loopback only
