"""``intent up``: the whole stack as child processes, output prefixed by name, a clean stop.

Each full run starts real processes (Valkey or the test's own Redis, the reference
services, a prefork worker, beat, the admin endpoint and Flower) and checks from outside:
what answers on which port, that analyses complete, what the combined output holds, and
that nothing from the process tree survives the stop (pids taken from /proc while it ran).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from intent.dev.up import Supervisor
from intent.embedded import EmbeddedRedis, free_port

pytestmark = pytest.mark.integration

NAMES = ("reference", "worker", "beat", "admin", "flower")
START = 240.0  # seconds for a stack to come up on a busy 2-core machine
STOP = 60.0  # seconds for it to stop (the grace period is 10 s per tier)


# --- processes, from /proc ----------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> dict[int, int]:
    """Every process below ``pid``, with its start time (to tell a reused pid apart)."""
    tree: dict[int, int] = {}
    pending = _children(pid)
    while pending:
        child = pending.pop()
        started = _start_time(child)
        if started is not None and child not in tree:
            tree[child] = started
            pending += _children(child)
    return tree


def survivors(tree: dict[int, int], settle: float = 5.0) -> list[str]:
    """The processes of ``tree`` still running. A process SIGKILLed a moment ago may still
    be tearing down (its command line already empty): it is given ``settle`` seconds to go."""

    def left() -> list[str]:
        found = []
        for pid, started in tree.items():
            if _start_time(pid) == started:
                try:
                    line = Path(f"/proc/{pid}/cmdline").read_text().replace(chr(0), " ")
                except OSError:
                    continue
                found.append(f"{pid} {line}")
        return found

    deadline = time.monotonic() + settle
    while (found := left()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


# --- one run of `intent up` ---------------------------------------------------------


class UpRun:
    """``intent up`` as a subprocess, its combined output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.admin_port, self.flower_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "intent.cli",
                "up",
                "--concurrency",
                "2",
                "--admin-port",
                str(self.admin_port),
                "--flower-port",
                str(self.flower_port),
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal for it reaches it alone
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.tree: dict[int, int] = {}

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = START) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"intent up exited ({self.process.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} within {timeout:.0f} s:\n{self.output}")
            time.sleep(0.2)

    def record_tree(self) -> dict[int, int]:
        self.tree = descendants(self.process.pid)
        return self.tree

    def finish(self, timeout: float = STOP) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """Whatever happened in the test: nothing of this run is left behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid, started in self.tree.items():
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up_runs() -> Iterator[list[UpRun]]:
    runs: list[UpRun] = []
    yield runs
    for run in runs:
        run.kill()


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the test session's INTENT_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    return {**env, **extra}


def ready_block(run: UpRun) -> dict[str, str]:
    """The ``name  url`` lines printed after ``intent up: ready``."""
    start = next(i for i, line in enumerate(run.lines) if line == "intent up: ready")
    block = {}
    for line in run.lines[start + 1 :]:
        if not line.startswith("  "):
            break
        name, _, url = line.strip().partition(" ")
        block[name] = url.strip()
    return block


def prefixed(run: UpRun, name: str) -> list[str]:
    return [line for line in run.lines if re.match(rf"^{name}\s*\| ", line)]


def wait_http(url: str, ok: Any, timeout: float = 90.0, **kwargs: Any) -> requests.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = response = requests.get(url, timeout=5, **kwargs)
            if ok(response):
                return response
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{url}: no good answer within {timeout:.0f} s (last: {last!r})")


def run_analyses(redis_url: str, count: int) -> list[dict[str, Any]]:
    """Submit by task name, as a web application that does not import this code would."""
    from celery import Celery

    app = Celery("up-client", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
    try:
        payloads = [
            {
                "request_id": f"up-{n}-{time.time_ns()}",
                "client_id": "up-test",
                "context_id": f"ctx-up-{n}",
                "pattern_id": "checkout",
            }
            for n in range(count)
        ]
        results = [app.send_task("intent.analyze", args=[r], queue="intent") for r in payloads]
        return [result.get(timeout=120) for result in results]
    finally:
        app.close()


# --- the tests ----------------------------------------------------------------------

REDIS_PASSWORD = "RedisPw4UpTest9c1e"
ADMIN_TOKEN = "AdminTok4UpTest7b2d"
FLOWER_PASSWORD = "FlowerPw4UpTest3a8f"


def test_up_runs_the_stack_on_a_password_redis_stops_on_sigint_and_leaks_no_secret(
    up_runs: list[UpRun],
) -> None:
    flower_auth = ("ops", FLOWER_PASSWORD)
    with EmbeddedRedis(password=REDIS_PASSWORD) as server:  # this test's own Redis
        env = clean_env(
            INTENT_REDIS_URL=server.url,
            INTENT_ADMIN_TOKEN=ADMIN_TOKEN,
            INTENT_FLOWER_BASIC_AUTH=f"ops:{FLOWER_PASSWORD}",
            INTENT_ENVIRONMENT="production",  # set by the user: Flower keeps basic auth
            INTENT_LOG_LEVEL="DEBUG",  # the most the processes ever write
        )
        run = UpRun(env, "--loglevel", "DEBUG")
        up_runs.append(run)
        run.wait_for("intent up: ready")
        admin = f"http://127.0.0.1:{run.admin_port}"
        flower = f"http://127.0.0.1:{run.flower_port}"

        block = ready_block(run)
        assert block["admin"] == admin and block["flower"] == flower
        assert block["redis"].startswith("redis://") and f":{server.port}/0" in block["redis"]
        assert REDIS_PASSWORD not in block["redis"]
        metrics_dir = Path(block["metrics"])
        assert metrics_dir.is_dir()

        # The admin sees every component well: services, Redis, breakers, the worker.
        health = wait_http(admin + "/health", lambda r: r.status_code == 200, 150).json()
        assert health["workers"]["status"] == "ok" and health["redis"]["status"] == "ok"
        # A mutating route takes the token (and refuses a request without it).
        assert (
            requests.post(admin + "/admin/circuits/context-service/reset", timeout=10).status_code
            == 401
        )
        reset = requests.post(
            admin + "/admin/circuits/context-service/reset",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        assert reset.status_code == 200, reset.text

        # Flower: basic auth on (INTENT_ENVIRONMENT=production was the user's choice).
        assert requests.get(flower + "/api/workers", timeout=10).status_code == 401
        workers = wait_http(
            flower + "/api/workers?refresh=1", lambda r: r.ok and r.json(), auth=flower_auth
        ).json()
        assert any(name.startswith("celery@") for name in workers)

        results = run_analyses(server.url, 2)
        assert [r["status"] for r in results] == ["completed", "completed"]

        # The worker's samples reach the admin through the metrics directory they share.
        def counted(response: requests.Response) -> bool:
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    if (
                        sample.name == "intent_analyses_finished_total"
                        and sample.labels.get("status") == "completed"
                    ):
                        return sample.value >= 2
            return False

        wait_http(admin + "/metrics", counted, timeout=30)

        tree = run.record_tree()
        pids = {name: [pid for pid in tree if name in " ".join(cmdline(pid))] for name in NAMES}
        assert all(pids.values()), pids
        run.process.send_signal(signal.SIGINT)
        assert run.finish() == 0, run.output

    assert survivors(tree) == [], run.output
    assert not metrics_dir.exists()  # the temporary directory it made is gone
    for name in NAMES:
        assert prefixed(run, name), f"no '{name} | ' line:\n{run.output}"
    assert not prefixed(run, "redis")  # INTENT_REDIS_URL was set: no embedded server
    assert "intent up: SIGINT: stopping" in run.lines
    # No secret anywhere in the combined output of the whole run.
    basic = base64.b64encode(f"ops:{FLOWER_PASSWORD}".encode()).decode()
    for secret in (REDIS_PASSWORD, ADMIN_TOKEN, FLOWER_PASSWORD, basic):
        leaks = [line for line in run.lines if secret in line]
        assert leaks == [], f"secret in the output: {leaks}"


def test_up_starts_its_own_redis_and_stops_everything_when_a_child_dies(
    up_runs: list[UpRun],
) -> None:
    run = UpRun(clean_env())  # no INTENT_* at all: embedded Valkey, development Flower
    up_runs.append(run)
    run.wait_for("intent up: ready")
    block = ready_block(run)
    assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", block["redis"]), block
    assert prefixed(run, "redis")
    # Flower in local development: no credentials needed.
    flower = f"http://127.0.0.1:{run.flower_port}"
    assert wait_http(flower + "/api/workers", lambda r: r.status_code == 200).ok

    tree = run.record_tree()
    worker = [
        pid
        for pid in _children(run.process.pid)
        if "celery" in cmdline(pid) and "worker" in cmdline(pid)
    ]
    assert len(worker) == 1, {pid: cmdline(pid) for pid in tree}
    assert _children(worker[0]), "the prefork worker has pool processes"
    valkey = [pid for pid in tree if "valkey-server" in " ".join(cmdline(pid))]
    assert valkey

    os.kill(worker[0], signal.SIGKILL)
    assert run.finish() == 1, run.output
    assert any("worker exited unexpectedly (killed by SIGKILL)" in line for line in run.lines), (
        run.output
    )
    assert survivors(tree) == [], run.output  # its pool, Valkey and the others too


def test_a_child_that_ignores_sigterm_is_killed_with_what_it_started() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out)
    assert supervisor.colour is False  # not a terminal: no colour codes
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "sub = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "print('started', sub.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    child = supervisor.start("stubborn", [sys.executable, "-c", code], dict(os.environ))
    deadline = time.monotonic() + 30
    while "started" not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.05)
    grandchild = int(re.search(r"started (\d+)", out.getvalue()).group(1))  # type: ignore[union-attr]
    tree = {child.pid: _start_time(child.pid), grandchild: _start_time(grandchild)}

    supervisor.stop(grace=1.0)

    assert child.returncode == -signal.SIGKILL
    assert survivors({pid: t for pid, t in tree.items() if t is not None}) == []
    text = out.getvalue()
    assert re.search(r"^stubborn\s*\| started \d+$", text, re.MULTILINE), text
    assert "stubborn did not stop within 1 s: killed" in text
    assert "\x1b[" not in text
    assert "\x1b[" in Supervisor(io.StringIO(), colour=True)._prefix("worker")


def test_children_get_sigterm_when_intent_up_itself_dies() -> None:
    # A parent that is SIGKILLed cannot stop anything: die_with_parent has Linux do it.
    code = (
        "import os, sys, time\n"
        "from intent.dev.up import Supervisor\n"
        "s = Supervisor(sys.stdout)\n"
        "c = s.start('sleeper', [sys.executable, '-c', 'import time; time.sleep(300)'],"
        " dict(os.environ))\n"
        "print('child', c.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        child = int(line.split()[1])
        started = _start_time(child)
        assert started is not None
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _start_time(child) == started:
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
        if "child" in locals() and _start_time(child) is not None:
            os.kill(child, signal.SIGKILL)
