"""Helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import requests

from intent import connections
from intent.embedded import die_with_parent, free_port
from intent.events import EventConsumer, EventPublisher, event_from_fields
from intent.keys import Keys
from intent.models import Event, IntentEvent
from intent.runtime import reset_runtime
from intent.settings import VISIBILITY_MARGIN, Settings, get_settings

# Every setting that is a span of time shaping what the pipeline does (not the Redis client
# socket timeouts, which are about the network). A resilience test may run them all scaled
# by one factor, so every ratio between them stays as users have it.
TIME_SETTINGS = (
    "retry_initial_delay",
    "retry_max_delay",
    "retry_after_max",
    "circuit_recovery_timeout",
    "circuit_half_open_timeout",
    "circuit_failure_window",
    "circuit_throttle_wait",
    "circuit_recheck_interval",
    "circuit_slow_call_duration",
    "circuit_break_max",
    "bulkhead_wait",
    "circuit_redis_probe_interval",
    "max_deferral",
    "defer_jitter",
    "downstream_rate_period",
    "rate_limit_window",
    "analysis_deadline",
    "context_cache_ttl",
    "version_check_interval",
    "context_connect_timeout",
    "context_read_timeout",
    "context_write_timeout",
    "prediction_connect_timeout",
    "prediction_read_timeout",
    "task_soft_time_limit",
    "task_time_limit",
    "broker_restore_interval",
    "broker_reconnect_interval",
    "redis_outage_tolerance",
    "release_interval",
)
# The releaser's tick is a polling period, not a span users tune against the others: scaled,
# but not below this (a tighter loop would only burn the CPU the test needs).
MIN_RELEASE_INTERVAL = 0.02


def scaled_env(factor: float, **overrides: Any) -> dict[str, str]:
    """``INTENT_*`` variables for the defaults with every time setting times ``factor``
    (integer settings rounded up), plus ``overrides`` (by setting name)."""
    fields = Settings.model_fields
    env: dict[str, str] = {}
    for name in TIME_SETTINGS:
        default = fields[name].default  # the documented default, whatever the environment
        value = default * factor
        if name == "release_interval":
            value = max(MIN_RELEASE_INTERVAL, value)
        if isinstance(default, int):
            value = max(1, math.ceil(value))
        env[f"INTENT_{name.upper()}"] = str(round(value, 6))
    hard_limit = fields["task_time_limit"].default
    env["INTENT_VISIBILITY_TIMEOUT"] = str(math.ceil((hard_limit + VISIBILITY_MARGIN) * factor))
    for name, value in overrides.items():
        env[f"INTENT_{name.upper()}"] = str(value)
    Settings.model_validate({k[len("INTENT_") :].lower(): v for k, v in env.items()})
    return env


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` in this process's environment (and a fresh runtime) while inside."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reset_runtime()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_runtime()


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "the condition",
    poll: float = 0.02,
) -> Any:
    """Poll ``condition`` until it returns something true (and return that); fail naming
    ``what`` and the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, (
            f"timed out after {timeout:g} s waiting for {what} (last answer: {value!r})"
        )
        time.sleep(poll)


# -- a fake clock -------------------------------------------------------------------------


class FakeClock:
    """Epoch-like time that moves only when told to (also usable as monotonic and sleep)."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    sleep = advance


# -- bad input ---------------------------------------------------------------------------

GOOD = {"request_id": "r-1", "client_id": "web", "context_id": "ctx-1", "pattern_id": "p1"}
CAP = 65536


def nested(levels: int) -> dict:
    data: dict = {"leaf": 1}
    for _ in range(levels):
        data = {"d": data}
    return data


def without(field: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != field}


# (payload, the field the error must name)
MALFORMED: list[tuple[object, str]] = [
    (without("client_id"), "client_id"),
    (without("pattern_id"), "pattern_id"),
    (without("context_id"), "context_id"),  # neither context_id nor data
    ({**GOOD, "data": {"a": 1}}, "context_id"),  # both
    ({**without("context_id"), "data": {}}, "data"),
    ({**without("context_id"), "data": [1, 2]}, "data"),
    ({**GOOD, "client_id": 42}, "client_id"),
    ({**GOOD, "pattern_id": None}, "pattern_id"),
    ({**GOOD, "request_id": ["r"]}, "request_id"),
    ({**GOOD, "context_id": "../../etc/passwd"}, "context_id"),
    ({**GOOD, "context_id": "ctx 1"}, "context_id"),
    ({**GOOD, "client_id": "web\x00admin"}, "client_id"),
    ({**GOOD, "pattern_id": "p1*"}, "pattern_id"),
    ({**GOOD, "request_id": "{intent:cb:x}"}, "request_id"),
    ({**GOOD, "context_id": "ctx\r\nX-Injected: 1"}, "context_id"),
    ({**GOOD, "client_id": "é" * 5}, "client_id"),
    ({**GOOD, "client_id": "$(rm -rf /)"}, "client_id"),
    ({**GOOD, "request_id": "r" * 129}, "request_id"),
    ({**GOOD, "context_id": ""}, "context_id"),
    ({**GOOD, "signals": {"k": {"nested": 1}}}, "signals.k"),
    ({**GOOD, "signals": ["a"]}, "signals"),
    ({**GOOD, "signals": {f"s{i}": i for i in range(65)}}, "signals"),
    ({**GOOD, "unexpected": 1}, "unexpected"),
    ({**without("context_id"), "data": {"blob": "x" * (CAP + 1)}}, "data.blob"),
    # Bounded and strict while decoding: depth, Unicode, numbers, no type markers.
    ({**without("context_id"), "data": nested(500)}, "data" + ".d" * 31),  # level 33
    ('{"client_id": "web", "pattern_id": "p", "data": ' + "[" * 1000 + "]" * 1000 + "}", "request"),
    ({**without("context_id"), "data": {"name": "\ud800"}}, "data.name"),
    ('{"client_id": "web", "pattern_id": "p", "data": {"name": "\\ud800"}}', "data.name"),
    ({**without("context_id"), "data": {"x": float("nan")}}, "data.x"),
    ('{"client_id": "web", "pattern_id": "p", "data": {"x": NaN}}', "data.x"),
    ('{"client_id": "web", "pattern_id": "p", "data": {"x": 1e400}}', "data.x"),
    ('{"client_id": "web", "pattern_id": "p", "data": {"x": ' + "9" * 5000 + "}}", "request"),
    ({**without("context_id"), "data": {"x": 10**5000}}, "data.x"),
    (
        {**without("context_id"), "data": {"b": {"__type__": "bytes", "__value__": "eA=="}}},
        "data.b",
    ),
    ({**GOOD, "deadline": "4102444800"}, "deadline"),
    ({**GOOD, "deadline": True}, "deadline"),
    ({**GOOD, "signals": {"k": float("inf")}}, "signals.k"),
    ("this is not json", "request"),
    ('{"client_id": ', "request"),
    (b"\xff\xfe", "request"),
    ([GOOD], "request"),
    (None, "request"),
    (42, "request"),
]


# -- analyses ----------------------------------------------------------------------------


def request(**overrides: object) -> dict:
    base = {
        "request_id": f"t-{uuid.uuid4().hex[:12]}",
        "client_id": "web",
        "context_id": "ctx-42",
        "pattern_id": "checkout",
    }
    return {**base, **overrides}


def stream_events(client: redis.Redis, request_id: str | None = None) -> list:
    events = [event_from_fields(f) for _, f in client.xrange(get_settings().key_prefix + "events")]
    return [e for e in events if request_id is None or e.request_id == request_id]


# -- event consumers ---------------------------------------------------------------------

KEYS = Keys()


def make_event(index: int, kind: IntentEvent = IntentEvent.CONTEXT_CHANGED, **data: Any) -> Event:
    return Event(
        id=f"evt_{index:04d}",
        type=kind,
        pattern_id="checkout",
        data={"context_id": f"ctx-{index}", **data},
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=f"req-{index}",
    )


def publish(client: redis.Redis, events: list[Event]) -> list[str]:
    return EventPublisher(client, KEYS, maxlen=100_000, dedup_ttl=600).publish(events)


class Running:
    def __init__(self, consumer: EventConsumer):
        self.consumer = consumer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run(install_signal_handlers=False)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the consumer did not stop"

    @property
    def stats(self) -> Any:
        return self.consumer.stats


StartConsumer = Callable[..., Running]


def consumer_client(url: str, socket_timeout: float = 5) -> redis.Redis:
    """A client as a consumer needs: decoded replies, undecodable bytes kept (of the Redis or
    Redis Cluster ``url`` names)."""
    return connections.redis_client(
        url, decode_responses=True, encoding_errors="surrogateescape", socket_timeout=socket_timeout
    )


def settled(client: redis.Redis, group: str = "g") -> bool:
    """Every entry of the stream was delivered to the group and acknowledged."""
    try:
        groups = client.xinfo_groups(KEYS.events_stream)
    except redis.ResponseError:
        return False
    info = next((g for g in groups if g["name"] == group), None)
    return info is not None and info["lag"] == 0 and info["pending"] == 0


# -- Flower ------------------------------------------------------------------------------

USER, PASSWORD = "ops", f"pw-{uuid.uuid4().hex}"
SECOND_USER, SECOND_PASSWORD = "oncall", f"pw-{uuid.uuid4().hex}"
AUTH = (USER, PASSWORD)
STEPS = ("intent.fetch_context", "intent.predict", "intent.detect_pattern", "intent.emit_events")


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

        wait_until(answers, timeout, "Flower to answer /healthcheck", poll=0.2)

    def wait_for_worker(self, name: str, timeout: float = 60.0) -> None:
        """Until Flower has a heartbeat event of ``name``: its event consumer is live."""
        wait_until(
            lambda: self.api("/api/workers", status=1).get(name),
            timeout,
            f"an event of worker {name} in Flower",
            poll=0.2,
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


def run_analyses(client: redis.Redis) -> dict[str, Any]:
    """Two analyses by submit(), one by name, and the by-name one resubmitted."""
    from tasks import submit  # the Celery app, for the tests that run a worker only
    from tasks.app import app

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

        what = f"Flower to list {sorted(ids)} as {name} SUCCESS"
        tasks = wait_until(found, 30, what, poll=0.2)
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
