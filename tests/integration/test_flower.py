"""``intent flower`` against the test Redis and a live prefork worker: Flower sees the
pipeline's tasks by name through its HTTP API, and keeps its basic auth."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from intent.dev.stack import WorkerProcess
from intent.embedded import EmbeddedRedis, free_port
from intent.reference import ReferenceControl
from intent.runtime import get_runtime
from intent.settings import get_settings
from tasks import submit
from tests.helpers import (
    AUTH,
    PASSWORD,
    SECOND_PASSWORD,
    SECOND_USER,
    USER,
    FlowerProcess,
    assert_flower_lists_the_worker,
    assert_flower_shows_the_pipeline,
    production_env,
    request,
    run_analyses,
    running_flower,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]


@pytest.fixture(scope="module")
def flower(
    prefork_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowerProcess]:
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with running_flower(production_env(), log) as process:
        process.wait_for_worker(prefork_worker.name)
        yield process


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

    answer = wait_until(done, 30, "the analysis's result under its request_id", poll=0.2)
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
    retry = wait_until(
        lambda: shown(f"{retried.request_id}.fetch_context"), 30, "the retry", poll=0.2
    )
    circuits.force_open("context-service", "drill")
    deferred = submit(request(context_id="ctx-deferred"))

    try:
        wait = wait_until(
            lambda: shown(f"{deferred.request_id}.fetch_context"), 30, "the deferral", poll=0.2
        )
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
