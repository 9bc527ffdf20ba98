"""Resilience drills against the test Redis and the real reference services: a drill
injects at its rate, client-side (the injected calls never reach the service), marked as
injected in the log and the metrics; the breaker sees its faults as real ones; it expires
by itself; the admin routes need the token and validate; the CLI starts, lists, stops."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from intent import metrics
from intent.admin import AdminApp
from intent.breaker import OPEN, breaker_redis_client
from intent.clients import ServiceClients
from intent.drills import DrillSource, DrillStore
from intent.embedded import free_port
from intent.errors import CircuitOpenError, ServiceUnavailableError
from intent.health import HealthChecker
from intent.keys import Keys
from intent.reference import ReferenceControl
from intent.runtime import Runtime
from intent.serving import TornadoWsgiServer
from intent.settings import load_settings
from tests.integration.conftest import api_calls

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PREDICTION = "prediction-service"
TOKEN = "drill-admin-token"
CONTEXT = {"page": "checkout", "items": 2}


@pytest.fixture
def runtime(clean: redis.Redis) -> Iterator[Runtime]:
    """A runtime that reads the drills every 50 ms (the tests wait less)."""
    rt = Runtime(load_settings(drill_refresh=0.05))
    yield rt
    rt.close()


def faults(kind: str) -> float:
    value = metrics.metrics().registry.get_sample_value(
        "intent_drill_faults_total", {"service": PREDICTION, "kind": kind}
    )
    return value or 0.0


def test_a_half_rate_drill_injects_about_half_the_calls_client_side(
    runtime: Runtime, prediction_service: ReferenceControl, caplog: pytest.LogCaptureFixture
) -> None:
    runtime.drill_store.start(
        PREDICTION, {"rate": 0.5, "kind": "status", "status": 503, "duration": 60}
    )
    # No breaker here: every call meets the drill (the breaker's view is the next test's).
    clients = ServiceClients(runtime.settings, drill=runtime.drills)
    before = faults("status")
    calls, injected = 200, []
    with caplog.at_level(logging.INFO, "intent.clients"):
        for _ in range(calls):
            try:
                clients.prediction.get_predictions("checkout", CONTEXT)
            except ServiceUnavailableError as exc:
                injected.append(str(exc))
    clients.close()

    # Binomial(200, 0.5): sd 7.1; 60..140 is more than 5.6 sd either side.
    assert 60 <= len(injected) <= 140
    assert all("HTTP 503 on POST /api/v1/predict: injected by a drill" in e for e in injected)
    # Injected client-side: only the others reached the service.
    assert len(api_calls(prediction_service)) == calls - len(injected)
    marked = [r for r in caplog.records if getattr(r, "injected", False)]
    assert len(marked) == len(injected)
    assert {getattr(r, "drill", None) for r in marked} == {"50% HTTP 503"}
    assert faults("status") - before == len(injected)


def test_the_breaker_sees_injected_faults_and_trips_on_them(
    runtime: Runtime, prediction_service: ReferenceControl
) -> None:
    runtime.drill_store.start(
        PREDICTION, {"rate": 1.0, "kind": "status", "status": 503, "duration": 60}
    )
    before = faults("status")
    outcomes = []
    for _ in range(runtime.settings.circuit_failure_threshold + 3):
        try:
            runtime.clients.prediction.get_predictions("checkout", CONTEXT)
        except (ServiceUnavailableError, CircuitOpenError) as exc:
            outcomes.append(type(exc).__name__)

    threshold = runtime.settings.circuit_failure_threshold
    assert runtime.circuits.status(PREDICTION).state == OPEN
    # The tripping failure raises the breaker's error; the calls after it are refused by
    # the breaker before the drill is asked, so only those it admitted were injected.
    assert outcomes == ["ServiceUnavailableError"] * (threshold - 1) + ["CircuitOpenError"] * 4
    assert faults("status") - before == threshold
    assert api_calls(prediction_service) == []


def test_a_latency_drill_delays_the_real_call(
    runtime: Runtime, prediction_service: ReferenceControl
) -> None:
    runtime.drill_store.start(
        PREDICTION, {"rate": 1, "kind": "latency", "latency": 0.3, "duration": 60}
    )
    started = time.perf_counter()
    answer = runtime.clients.prediction.get_predictions("checkout", CONTEXT)
    assert time.perf_counter() - started >= 0.3
    assert answer["pattern_id"] == "checkout"
    assert len(api_calls(prediction_service)) == 1


def test_a_drill_expires_by_itself_fleet_wide_and_in_a_cached_copy(
    runtime: Runtime, clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    drill = runtime.drill_store.start(PREDICTION, {"rate": 1, "kind": "timeout", "duration": 0.8})
    key = Keys().drill(PREDICTION)
    assert 0 < clean.pttl(key) <= 800
    # A process that read it just now and would not read it again for a minute.
    cached = DrillSource(runtime.drill_store.get, refresh=60.0)
    clients = ServiceClients(runtime.settings, drill=cached)
    with pytest.raises(ServiceUnavailableError, match="timeout on POST /api/v1/predict: injected"):
        clients.prediction.get_predictions("checkout", CONTEXT)

    time.sleep(max(0.0, drill.expires_at - time.time()) + 0.05)
    assert not clean.exists(key)  # gone from Redis: no process reads it again
    assert clients.prediction.get_predictions("checkout", CONTEXT)["pattern_id"] == "checkout"
    assert runtime.drill_store.list() == []
    clients.close()


def test_an_unreachable_redis_is_no_drill_at_once(runtime: Runtime) -> None:
    dead = breaker_redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.25)
    source = DrillSource(DrillStore(dead, Keys(), 3600).get, refresh=1.0)
    started = time.perf_counter()
    assert source(PREDICTION) is None
    assert time.perf_counter() - started < 1.0


# -- the admin endpoint -----------------------------------------------------------------


def _serve(runtime: Runtime, token: str | None) -> Iterator[str]:
    circuits = runtime.circuits
    app = AdminApp(
        health=HealthChecker(runtime.settings, runtime.redis, runtime.keys, lambda _: [], circuits),
        circuits=circuits,
        rate_limits=runtime.rate_limits,
        metrics=lambda: (b"", "text/plain"),
        token=token,
        drills=runtime.drill_store,
    )
    with TornadoWsgiServer(app) as server:
        yield server.url


@pytest.fixture
def admin(runtime: Runtime) -> Iterator[str]:
    yield from _serve(runtime, TOKEN)


@pytest.fixture
def admin_without_token(runtime: Runtime) -> Iterator[str]:
    yield from _serve(runtime, None)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
DRILL = {"rate": 0.2, "kind": "status", "status": 503, "duration": 300}


def test_the_drill_routes_are_refused_without_a_configured_token(
    admin_without_token: str, clean: redis.Redis
) -> None:
    url = f"{admin_without_token}/admin/drills/{PREDICTION}"
    for method in ("PUT", "DELETE"):
        answer = requests.request(method, url, json=DRILL, headers=AUTH, timeout=10)
        assert answer.status_code == 403, method
        assert "INTENT_ADMIN_TOKEN" in answer.json()["error"]
    assert not clean.exists(Keys().drill(PREDICTION))
    assert requests.get(admin_without_token + "/admin/drills", timeout=10).json() == {"drills": []}


def test_the_drill_routes_need_the_bearer_token(admin: str, clean: redis.Redis) -> None:
    url = f"{admin}/admin/drills/{PREDICTION}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method in ("PUT", "DELETE"):
            answer = requests.request(method, url, json=DRILL, headers=headers, timeout=10)
            assert answer.status_code == 401, (method, headers)
    assert not clean.exists(Keys().drill(PREDICTION))


def test_a_drill_is_started_listed_and_stopped_through_the_admin(
    admin: str, clean: redis.Redis
) -> None:
    url = f"{admin}/admin/drills/{PREDICTION}"
    started = requests.put(url, json={**DRILL, "reason": "game day"}, headers=AUTH, timeout=10)
    assert started.status_code == 200, started.text
    body = started.json()
    assert (body["service"], body["rate"], body["kind"], body["status"]) == (
        PREDICTION,
        0.2,
        "status",
        503,
    )
    assert 299 <= body["remaining"] <= 300 and body["reason"] == "game day"
    assert 0 < clean.ttl(Keys().drill(PREDICTION)) <= 300

    (listed,) = requests.get(admin + "/admin/drills", timeout=10).json()["drills"]
    assert listed["service"] == PREDICTION and listed["expires_at"] == body["expires_at"]

    stopped = requests.delete(url, headers=AUTH, timeout=10)
    assert stopped.json() == {"service": PREDICTION, "stopped": True}
    assert not clean.exists(Keys().drill(PREDICTION))
    again = requests.delete(url, headers=AUTH, timeout=10)
    assert again.status_code == 200 and again.json()["stopped"] is False


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({**DRILL, "rate": 1.5}, "rate: Input should be less than or equal to 1"),
        ({**DRILL, "rate": "0.5"}, "rate: Input should be a valid number"),
        ({**DRILL, "kind": "explode"}, "kind: Input should be 'status', 'timeout' or 'latency'"),
        ({k: v for k, v in DRILL.items() if k != "duration"}, "duration: Field required"),
        (
            {**DRILL, "duration": 3601},
            "duration: must be at most 3600 s (INTENT_DRILL_MAX_SECONDS)",
        ),
        ({**DRILL, "status": 200}, "status: Input should be greater than or equal to 429"),
        ({**DRILL, "status": 404}, "status: Input should be greater than or equal to 429"),
        ({**DRILL, "kind": "timeout"}, "status: only a status drill takes one"),
        ({**DRILL, "extra": 1}, "extra: Extra inputs are not permitted"),
        ([DRILL], "drill: must be a JSON object"),
    ],
)
def test_a_bad_drill_is_a_400_naming_the_field(
    admin: str, clean: redis.Redis, body: object, error: str
) -> None:
    answer = requests.put(f"{admin}/admin/drills/{PREDICTION}", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(error)
    assert not clean.exists(Keys().drill(PREDICTION))


def test_a_missing_or_broken_body_and_an_unknown_service(admin: str) -> None:
    url = f"{admin}/admin/drills/{PREDICTION}"
    empty = requests.put(url, headers=AUTH, timeout=10)
    assert empty.status_code == 400 and empty.json()["error"].startswith("drill: a JSON body")
    broken = requests.put(url, data=b"{not json", headers=AUTH, timeout=10)
    assert broken.status_code == 400 and broken.json()["error"].startswith("drill")
    for method in ("PUT", "DELETE"):
        unknown = requests.request(
            method, f"{admin}/admin/drills/billing", json=DRILL, headers=AUTH, timeout=10
        )
        assert unknown.status_code == 404
        assert "no service 'billing'" in unknown.json()["error"]


# -- the command line ---------------------------------------------------------------------


def _intent(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "intent.cli", "drills", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_the_cli_starts_lists_and_stops_a_drill(clean: redis.Redis) -> None:
    started = _intent("start", PREDICTION, "--rate", "0.2", "--status", "503", "--for", "300")
    assert started.returncode == 0, started.stderr
    assert "20% HTTP 503" in started.stdout
    stored = json.loads(clean.get(Keys().drill(PREDICTION)) or "null")
    assert (stored["rate"], stored["kind"], stored["status"]) == (0.2, "status", 503)
    assert 0 < clean.ttl(Keys().drill(PREDICTION)) <= 300

    listed = _intent("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (drill,) = json.loads(listed.stdout)
    assert drill["service"] == PREDICTION and drill["expires_at"] == stored["expires_at"]
    assert PREDICTION in _intent().stdout  # `intent drills` alone lists

    too_long = _intent("start", PREDICTION, "--rate", "1", "--timeout", "--for", "99999")
    assert too_long.returncode == 2 and "duration: must be at most 3600 s" in too_long.stderr

    stopped = _intent("stop", PREDICTION)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not clean.exists(Keys().drill(PREDICTION))
    assert "no drill is running" in _intent("list").stdout
