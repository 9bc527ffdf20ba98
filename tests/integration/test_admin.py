"""The admin endpoint over real HTTP, against the test Redis, the reference services and a
prefork worker: health snapshots (a service down, an incompatible version, an open
breaker, a stale snapshot), breaker and rate-limit routes, and the bearer token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import requests

from intent import schemas
from intent.admin import AdminApp
from intent.breaker import CircuitAdmin
from intent.dev.stack import WorkerProcess
from intent.health import RECHECK_DOWN_AFTER, HealthChecker
from intent.keys import Keys
from intent.reference import ReferenceControl
from intent.runtime import get_runtime, reset_runtime
from intent.serving import TornadoWsgiServer as WsgiServer  # as `intent admin` runs it
from tasks.health import ping_workers

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]

TOKEN = "s3cret-admin-token"
CONTEXT = "context-service"
MUTATIONS = [
    f"/admin/circuits/{CONTEXT}/reset",
    f"/admin/circuits/{CONTEXT}/open",
    f"/admin/circuits/{CONTEXT}/close",
    "/admin/ratelimits/intake/reset",
]


def _serve(token: str | None) -> Iterator[str]:
    rt = get_runtime()
    circuits = rt.circuits
    app = AdminApp(
        health=HealthChecker(rt.settings, rt.redis, rt.keys, ping_workers, circuits),
        circuits=circuits,
        rate_limits=rt.rate_limits,
        metrics=lambda: (b"# no metrics in this test\n", "text/plain"),
        token=token,
    )
    with WsgiServer(app) as server:
        yield server.url


@pytest.fixture
def admin(clean: redis.Redis) -> Iterator[str]:
    """The admin endpoint with a bearer token configured."""
    yield from _serve(TOKEN)


@pytest.fixture
def admin_without_token(clean: redis.Redis) -> Iterator[str]:
    yield from _serve(None)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_is_200_when_everything_answers(
    admin: str, prefork_worker: WorkerProcess, clean: redis.Redis
) -> None:
    response = requests.get(admin + "/health", timeout=10)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["failing"] == []
    assert body["context_service"]["status"] == "ok"
    assert body["context_service"]["version"] == "1.0.0"
    assert body["prediction_service"]["status"] == "ok"
    assert body["redis"]["status"] == "ok"
    assert body["circuit_breakers"]["status"] == "ok"
    assert prefork_worker.name in body["workers"]["answered"]
    # Stored for the next caller, with a TTL.
    stored = json.loads(clean.get(Keys().health_snapshot) or "null")
    assert stored["checked_at"] == body["checked_at"]
    assert 0 < clean.ttl(Keys().health_snapshot) <= 3 * get_runtime().settings.health_interval


def test_a_service_down_makes_health_503_naming_it(
    admin: str, prediction_service: ReferenceControl
) -> None:
    prediction_service.set_faults(down=True, include_health=True)

    response = requests.get(admin + "/health", timeout=10)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["failing"] == ["prediction_service"]
    assert body["prediction_service"]["status"] == "down"
    assert "unreachable" in body["prediction_service"]["error"]
    assert body["context_service"]["status"] == "ok"


def test_an_incompatible_context_service_version_is_down(
    admin: str, context_service: ReferenceControl
) -> None:
    context_service.set_version("2.1.0")
    try:
        response = requests.get(admin + "/health", timeout=10)
    finally:
        context_service.set_version("1.0.0")

    assert response.status_code == 503
    component = response.json()["context_service"]
    assert response.json()["failing"] == ["context_service"]
    assert component["version"] == "2.1.0"
    assert "incompatible version 2.1.0: requires 1.0.0" in component["error"]


def test_an_open_breaker_is_degraded_not_down(admin: str) -> None:
    get_runtime().circuits.force_open(CONTEXT, "maintenance")

    response = requests.get(admin + "/health", timeout=10)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["circuit_breakers"]["status"] == "degraded"
    assert body["circuit_breakers"]["refusing"] == [CONTEXT]
    breaker = body["circuit_breakers"]["breakers"][CONTEXT]
    assert (breaker["state"], breaker["forced"]) == ("open", "open")


def test_a_fresh_snapshot_is_served_and_a_stale_one_is_checked_anew(
    admin: str, clean: redis.Redis
) -> None:
    first = requests.get(admin + "/health", timeout=10).json()
    again = requests.get(admin + "/health", timeout=10).json()
    assert again["checked_at"] == first["checked_at"]  # served from Redis

    stale = {**first, "checked_at": time.time() - 3 * get_runtime().settings.health_interval}
    clean.set(Keys().health_snapshot, json.dumps(stale))
    renewed = requests.get(admin + "/health", timeout=10).json()
    assert renewed["checked_at"] > first["checked_at"]


def test_a_down_snapshot_is_checked_again_after_a_few_seconds(
    admin: str, clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    prediction_service.set_faults(down=True, include_health=True)
    down = requests.get(admin + "/health", timeout=10)
    assert down.status_code == 503
    prediction_service.clear_faults()
    assert requests.get(admin + "/health", timeout=10).status_code == 503  # still fresh

    # Aged past the recheck time, though well within the interval's freshness.
    aged = {**down.json(), "checked_at": time.time() - RECHECK_DOWN_AFTER - 0.5}
    clean.set(Keys().health_snapshot, json.dumps(aged))
    assert requests.get(admin + "/health", timeout=10).status_code == 200


def test_a_status_change_is_logged_once_however_many_checkers_see_it(
    clean: redis.Redis, prediction_service: ReferenceControl, caplog: pytest.LogCaptureFixture
) -> None:
    rt = get_runtime()
    checkers = [
        HealthChecker(rt.settings, rt.redis, rt.keys, ping_workers, rt.circuits) for _ in range(3)
    ]
    checkers[0].run()
    prediction_service.set_faults(down=True, include_health=True)
    caplog.clear()
    with caplog.at_level("INFO", logger="intent.health"):
        for checker in checkers:
            checker.run()
    changes = [r for r in caplog.records if getattr(r, "component", None)]

    assert [(r.component, r.old_status, r.new_status) for r in changes] == [  # type: ignore[attr-defined]
        ("prediction_service", "ok", "down")
    ]


def test_circuits_route_lists_the_shared_breakers(admin: str) -> None:
    get_runtime().circuits.force_open(CONTEXT, "drill")

    body = requests.get(admin + "/admin/circuits", timeout=5).json()

    (context,) = [c for c in body["circuits"] if c["name"] == CONTEXT]
    assert (context["state"], context["forced"]) == ("open", "open")
    assert "drill" in context["reason"]


@pytest.mark.parametrize("path", MUTATIONS)
def test_mutating_routes_are_refused_without_a_configured_token(
    admin_without_token: str, path: str
) -> None:
    circuits = get_runtime().circuits
    circuits.force_open(CONTEXT, "before")
    rt = get_runtime()
    rt.rate_limits["intake"].hit("web-1")

    for headers in ({}, auth(), auth("")):
        response = requests.post(admin_without_token + path, headers=headers, timeout=5)
        assert response.status_code == 403
        assert "INTENT_ADMIN_TOKEN" in response.json()["error"]
    # Nothing changed.
    assert circuits.status(CONTEXT).forced == "open"
    assert rt.rate_limits["intake"].status("web-1").current == 1


@pytest.mark.parametrize("path", MUTATIONS)
def test_mutating_routes_need_the_right_bearer_token(admin: str, path: str) -> None:
    get_runtime().circuits.force_open(CONTEXT, "before")
    for headers in ({}, auth("wrong"), {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        response = requests.post(admin + path, headers=headers, timeout=5)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert get_runtime().circuits.status(CONTEXT).forced == "open"

    assert requests.post(admin + path, headers=auth(), timeout=5).status_code == 200


def test_circuit_actions_change_the_shared_state(admin: str) -> None:
    circuits = get_runtime().circuits
    url = f"{admin}/admin/circuits/{CONTEXT}"

    opened = requests.post(
        url + "/open", json={"reason": "deploy"}, headers=auth(), timeout=5
    ).json()
    assert (opened["state"], opened["forced"]) == ("open", "open")
    assert circuits.status(CONTEXT).forced == "open"
    assert "deploy" in circuits.status(CONTEXT).reason

    closed = requests.post(url + "/close", headers=auth(), timeout=5).json()
    assert (closed["state"], closed["forced"]) == ("closed", "closed")
    reset = requests.post(url + "/reset", headers=auth(), timeout=5).json()
    assert (reset["state"], reset["forced"]) == ("closed", None)
    assert circuits.status(CONTEXT).forced is None


def test_a_bad_body_is_refused_naming_it_and_changes_nothing(admin: str) -> None:
    url = f"{admin}/admin/circuits/{CONTEXT}/open"
    for body in ("not json", "[1, 2]", '{"reason": 5}'):
        response = requests.post(url, data=body, headers=auth(), timeout=5)
        assert response.status_code == 422, body
        assert response.json()["error"].startswith(("body:", "reason:"))
    assert get_runtime().circuits.status(CONTEXT).forced is None


def test_unknown_breaker_or_limit_is_404_naming_the_known_ones(admin: str) -> None:
    response = requests.post(admin + "/admin/circuits/nope/open", headers=auth(), timeout=5)
    assert response.status_code == 404
    assert CONTEXT in response.json()["error"]
    assert "nope" not in get_runtime().circuits.names()

    response = requests.post(admin + "/admin/ratelimits/nope/reset", headers=auth(), timeout=5)
    assert response.status_code == 404
    assert "intake" in response.json()["error"]


def test_ratelimits_route_shows_and_resets_a_clients_intake(admin: str) -> None:
    intake = get_runtime().rate_limits["intake"]
    for _ in range(3):
        intake.hit("web-7")

    listed = requests.get(admin + "/admin/ratelimits", params={"id": "web-7"}, timeout=5).json()
    (row,) = [r for r in listed["ratelimits"] if r["name"] == "intake"]
    assert row["current"] == 3
    assert row["amount"] == get_runtime().settings.max_requests_per_window

    reset = requests.post(
        admin + "/admin/ratelimits/intake/reset", params={"id": "web-7"}, headers=auth(), timeout=5
    )
    assert reset.status_code == 200
    assert reset.json()["current"] == 0
    assert intake.status("web-7").current == 0


def test_health_check_task_on_the_worker_stores_the_snapshot(clean: redis.Redis) -> None:
    from tasks.app import app

    app.send_task("intent.health_check")
    deadline = time.monotonic() + 20
    while clean.get(Keys().health_snapshot) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    snapshot = json.loads(clean.get(Keys().health_snapshot) or "null")

    assert snapshot is not None, "the worker stored no snapshot"
    assert snapshot["status"] == "ok"
    # Checked from the worker's pool process, which found itself among the workers.
    assert snapshot["workers"]["count"] >= 1


def test_an_expired_health_check_is_dropped_not_run(
    clean: redis.Redis, prefork_worker: WorkerProcess
) -> None:
    from tasks.app import app

    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = app.send_task("intent.health_check", expires=past)
    # The worker takes it off the queue and marks it revoked as expired, rather than running it.
    deadline = time.monotonic() + 20
    revoked: list[str] = []
    while expired.id not in revoked and time.monotonic() < deadline:
        time.sleep(0.2)
        found = app.control.inspect(destination=[prefork_worker.name], timeout=5).revoked() or {}
        revoked = found.get(prefork_worker.name, [])
    assert expired.id in revoked

    # Had the check run, it would have stored a snapshot within its ping timeout.
    deadline = time.monotonic() + 2 * get_runtime().settings.health_timeout + 1
    while time.monotonic() < deadline:
        assert clean.get(Keys().health_snapshot) is None
        time.sleep(0.2)


def test_the_beat_schedule_runs_the_check_every_interval_with_expiry() -> None:
    from tasks.app import app

    interval = get_runtime().settings.health_interval
    entry = app.conf.beat_schedule["health-check"]
    assert entry["task"] == "intent.health_check"
    assert entry["schedule"] == interval
    assert entry["options"]["expires"] == interval
    assert app.conf.beat_scheduler == "tasks.beat:Scheduler"
    assert "intent.health_check" in app.tasks


def test_the_wired_admin_app_reads_its_token_from_settings_and_serves_metrics(
    clean: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from intent.ops.admin import build_app

    monkeypatch.setenv("INTENT_ADMIN_TOKEN", TOKEN)
    reset_runtime()
    get_runtime().circuits.force_open(CONTEXT, "drill")
    try:
        with WsgiServer(build_app()) as server:
            url = f"{server.url}/admin/circuits/{CONTEXT}/reset"
            assert requests.post(url, timeout=5).status_code == 401
            assert requests.post(url, headers=auth(), timeout=5).status_code == 200
            metrics = requests.get(server.url + "/metrics", timeout=10)
    finally:
        monkeypatch.delenv("INTENT_ADMIN_TOKEN")
        reset_runtime()

    assert metrics.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    states = {
        s.labels["state"]: s.value
        for s in families["intent_circuit_breaker_state"].samples
        if s.labels["breaker"] == CONTEXT
    }
    assert states["closed"] == 1  # the reset above, read from Redis at the scrape


def test_a_half_open_breaker_is_degraded(admin: str) -> None:
    get_runtime().breaker(CONTEXT).half_open()

    body = requests.get(admin + "/health", timeout=10).json()

    assert body["circuit_breakers"]["breakers"][CONTEXT]["state"] == "half-open"
    assert body["circuit_breakers"]["refusing"] == [CONTEXT]
    assert body["status"] == "degraded"


def test_no_worker_answering_is_down(clean: redis.Redis) -> None:
    from tasks.app import app

    def nobody(timeout: float) -> list[str]:
        replies = app.control.ping(destination=["nobody@nowhere"], timeout=timeout) or []
        return [name for reply in replies for name in reply]

    rt = get_runtime()
    snapshot = HealthChecker(rt.settings, rt.redis, rt.keys, nobody, rt.circuits).run()

    assert snapshot["status"] == "down"
    assert snapshot["failing"] == ["workers"]
    assert snapshot["workers"]["answered"] == []
    assert "no worker answered" in snapshot["workers"]["error"]


def test_redis_down_is_503_naming_it_without_its_password(reference: object) -> None:
    from intent.embedded import free_port
    from intent.ratelimit import RateLimits
    from intent.runtime import Runtime
    from intent.settings import load_settings

    dead = f"redis://:hunter2-pw@127.0.0.1:{free_port()}/0"
    settings = load_settings(redis_url=dead)
    runtime = Runtime(settings)
    client, circuits = runtime.redis, runtime.circuits
    app = AdminApp(
        health=HealthChecker(settings, client, Keys(), ping_workers, circuits),
        circuits=circuits,
        rate_limits=RateLimits(settings, Keys()),
        metrics=lambda: (b"", "text/plain"),
        token=TOKEN,
    )
    with WsgiServer(app) as server:
        health = requests.get(server.url + "/health", timeout=20)
        circuits_answer = requests.get(server.url + "/admin/circuits", timeout=20)

    assert health.status_code == 503
    body = health.json()
    assert body["failing"] == ["redis", "circuit_breakers"]
    assert body["workers"]["status"] == "ok"  # the broker is another Redis here
    assert circuits_answer.status_code == 503
    assert "hunter2-pw" not in health.text + circuits_answer.text


@pytest.fixture
def served_admin(clean: redis.Redis) -> Iterator[str]:
    """The admin app on the server `intent admin` runs (Tornado, with its body limit)."""
    from intent.admin.app import MAX_BODY_BYTES
    from intent.serving import TornadoWsgiServer

    rt = get_runtime()
    circuits = rt.circuits
    app = AdminApp(
        health=HealthChecker(rt.settings, rt.redis, rt.keys, ping_workers, circuits),
        circuits=circuits,
        rate_limits=rt.rate_limits,
        metrics=lambda: (b"# no metrics in this test\n", "text/plain"),
        token=TOKEN,
    )
    with TornadoWsgiServer(app, max_body=MAX_BODY_BYTES) as server:
        yield server.url


def _raw_exchange(url: str, head: bytes, body: bytes) -> bytes:
    """Send a request's head and the start of its body; the answer the server gives."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_large_unauthenticated_body_is_refused_before_it_is_read(served_admin: str) -> None:
    """A 95 MiB body announced, a kilobyte sent: the answer (413) comes at once, without
    the server waiting for (or buffering) the rest, and before authentication."""
    head = (
        b"POST /admin/circuits/context-service/open HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 99614720\r\n\r\n"
    )
    answer = _raw_exchange(served_admin, head, b"x" * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]


def test_a_chunked_body_over_the_limit_is_refused_when_it_passes_it(served_admin: str) -> None:
    from intent.admin.app import MAX_BODY_BYTES

    head = (
        b"POST /admin/circuits/context-service/open HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 8192
    body = b"".join(
        b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // 8192 + 2)
    )
    answer = _raw_exchange(served_admin, head, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]


@pytest.mark.parametrize(
    "body",
    ['{"reason": "\\ud800"}', '{"reason": ' + "[" * 100 + "]" * 100 + "}", '{"reason": NaN}'],
    ids=["lone surrogate", "nested", "NaN"],
)
def test_a_bad_body_with_a_valid_token_is_422_not_500(served_admin: str, body: str) -> None:
    url = f"{served_admin}/admin/circuits/{CONTEXT}/open"
    response = requests.post(url, data=body.encode(), headers=auth(), timeout=5)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(("body", "reason"))
    assert CircuitAdmin(get_runtime().breaker_store).status(CONTEXT).forced is None


def test_the_admin_serves_the_published_json_schemas(admin: str) -> None:
    index = requests.get(admin + "/schemas", timeout=10).json()
    assert set(index) == set(schemas.NAMES)
    for name, path in index.items():
        response = requests.get(admin + path, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/schema+json")
        assert response.json() == schemas.schema(name)
    missing = requests.get(admin + "/schemas/nothing.json", timeout=10)
    assert missing.status_code == 404 and "request" in missing.json()["error"]
