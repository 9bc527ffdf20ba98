"""The reference Context and Prediction services over real HTTP: deterministic answers,
bulk routes, input validation, the admin routes and every kind of injected fault."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from intent.reference import (
    ReferenceControl,
    ReferenceServer,
    ReferenceServices,
    ServiceState,
    make_context_app,
)
from intent.reference.app import MAX_BULK_ITEMS
from intent.reference.data import LABELS, context_for, predictions_for

pytestmark = pytest.mark.integration

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def services() -> Iterator[ReferenceServices]:
    with ReferenceServices() as running:
        yield running


@pytest.fixture
def ctx(services: ReferenceServices) -> Iterator[ReferenceControl]:
    """Control of the Context Service, reset before and after each test."""
    control = ReferenceControl(services.context_url)
    _reset(control)
    yield control
    _reset(control)
    control.close()


@pytest.fixture
def pred(services: ReferenceServices) -> Iterator[ReferenceControl]:
    control = ReferenceControl(services.prediction_url)
    _reset(control)
    yield control
    _reset(control)
    control.close()


def _reset(control: ReferenceControl) -> None:
    control.clear_faults()
    control.clear_requests()
    control.set_version("1.0.0")
    control.set_bulk(True)


def get(url: str) -> requests.Response:
    return requests.get(url, timeout=TIMEOUT)


def post(url: str, body: Any = None, data: str | None = None) -> requests.Response:
    return requests.post(url, json=body, data=data, timeout=TIMEOUT)


# -- deterministic answers --------------------------------------------------------------


def test_context_is_deterministic(services: ReferenceServices, ctx: ReferenceControl) -> None:
    first = get(f"{services.context_url}/api/v1/context/user-1")
    second = get(f"{services.context_url}/api/v1/context/user-1")
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/json"
    body = first.json()
    assert body == second.json()
    assert body["context_id"] == "user-1"
    assert body["version"] == 1
    assert body["updated_at"].endswith("Z")
    assert set(body["attributes"]) == {"segment", "sessions", "cart_value", "region", "last_page"}
    assert get(f"{services.context_url}/api/v1/context/user-2").json() != body


def test_bumped_context_has_new_attributes(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    url = f"{services.context_url}/api/v1/context/bump-me"
    before = get(url).json()
    assert ctx.bump_context("bump-me") == 2
    after = get(url).json()
    assert after["version"] == 2
    assert after["attributes"] != before["attributes"]
    assert after["updated_at"] > before["updated_at"]
    assert ctx.bump_context("bump-me") == 3


def test_context_from_data(services: ReferenceServices, ctx: ReferenceControl) -> None:
    url = f"{services.context_url}/api/v1/context"
    data = {"page": "/cart", "items": 3}
    first = post(url, {"data": data})
    assert first.status_code == 200
    body = first.json()
    assert body == post(url, {"data": {"items": 3, "page": "/cart"}}).json()  # key order
    assert body["context_id"].startswith("ctx-")
    assert body["version"] == 1
    assert body["attributes"]["input"] == data
    assert post(url, {"data": {"page": "/"}}).json()["context_id"] != body["context_id"]


def test_missing_context_is_404(services: ReferenceServices, ctx: ReferenceControl) -> None:
    response = get(f"{services.context_url}/api/v1/context/missing-42")
    assert response.status_code == 404
    assert response.json() == {"error": "context not found", "context_id": "missing-42"}


def test_predictions_are_deterministic(services: ReferenceServices, pred: ReferenceControl) -> None:
    url = f"{services.prediction_url}/api/v1/predict"
    context = context_for("user-1", 1)
    first = post(url, {"pattern_id": "checkout", "context": context})
    assert first.status_code == 200
    body = first.json()
    assert body == post(url, {"pattern_id": "checkout", "context": context}).json()
    assert body["pattern_id"] == "checkout"
    assert body["model_version"] == "ref-1.0.0"
    predictions = body["predictions"]
    assert 3 <= len(predictions) <= 5
    assert {p["label"] for p in predictions} <= set(LABELS)
    confidences = [p["confidence"] for p in predictions]
    assert confidences == sorted(confidences, reverse=True)
    assert all(c == round(c, 3) and 0 <= c <= 1 for c in confidences)
    # Only the attributes count: the same attributes at another timestamp, same answer.
    restamped = {**context, "updated_at": "2030-01-01T00:00:00Z"}
    assert post(url, {"pattern_id": "checkout", "context": restamped}).json() == body
    changed = context_for("user-1", 2)
    assert post(url, {"pattern_id": "checkout", "context": changed}).json() != body


def test_prediction_spread() -> None:
    tops = [
        predictions_for("p", context_for(f"c{i}", 1))["predictions"][0]["confidence"]
        for i in range(600)
    ]
    assert min(tops) >= 0.3 and max(tops) <= 0.95
    # About two thirds of contexts reach the detection threshold.
    assert 0.58 <= sum(top >= 0.6 for top in tops) / len(tops) <= 0.75


# -- bulk routes --------------------------------------------------------------------------


def test_bulk_contexts_answer_each_id_in_order(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    ctx.bump_context("bulk-2")
    ids = ["bulk-1", "missing-7", "bulk-2", "-bad", "bulk-1"]
    response = post(f"{services.context_url}/api/v1/context/batch", {"context_ids": ids})
    assert response.status_code == 200
    contexts = response.json()["contexts"]
    single = f"{services.context_url}/api/v1/context/"
    assert contexts[0] == get(single + "bulk-1").json() == contexts[4]
    assert contexts[2] == get(single + "bulk-2").json()
    assert contexts[2]["version"] == 2
    assert contexts[1] == {
        "context_id": "missing-7",
        "error": {"status": 404, "detail": "context not found"},
    }
    assert contexts[3]["context_id"] == "-bad"
    assert contexts[3]["error"]["status"] == 422
    assert contexts[3]["error"]["field"] == "context_id"


def test_bulk_predictions_answer_each_request_in_order(
    services: ReferenceServices, pred: ReferenceControl
) -> None:
    good = [
        {"pattern_id": "checkout", "context": context_for("user-1", 1)},
        {"pattern_id": "support", "context": context_for("user-2", 3)},
    ]
    bad = [{"pattern_id": "bad id!", "context": {}}, {"pattern_id": "p"}, "not an object"]
    requests_ = [good[0], bad[0], good[1], bad[1], bad[2]]
    response = post(f"{services.prediction_url}/api/v1/predict/batch", {"requests": requests_})
    assert response.status_code == 200
    results = response.json()["results"]
    single = f"{services.prediction_url}/api/v1/predict"
    assert results[0] == post(single, good[0]).json()
    assert results[2] == post(single, good[1]).json()
    errors = [results[1]["error"], results[3]["error"], results[4]["error"]]
    assert [e["status"] for e in errors] == [422, 422, 422]
    assert [e["field"] for e in errors] == ["pattern_id", "context", "body"]
    assert all(e["detail"] for e in errors)


@pytest.mark.parametrize(
    ("path", "body", "raw", "field"),
    [
        ("/api/v1/context/batch", {}, None, "context_ids"),
        ("/api/v1/context/batch", {"context_ids": []}, None, "context_ids"),
        ("/api/v1/context/batch", {"context_ids": "a"}, None, "context_ids"),
        (
            "/api/v1/context/batch",
            {"context_ids": ["a"] * (MAX_BULK_ITEMS + 1)},
            None,
            "context_ids",
        ),
        ("/api/v1/context/batch", None, "{", "context_ids"),
        ("/api/v1/predict/batch", {"requests": {}}, None, "requests"),
        ("/api/v1/predict/batch", [], None, "requests"),
        ("/api/v1/predict/batch", None, "nope", "requests"),
    ],
)
def test_invalid_bulk_bodies_are_422_naming_the_field(
    services: ReferenceServices, path: str, body: Any, raw: str | None, field: str
) -> None:
    base = services.context_url if "context" in path else services.prediction_url
    response = post(base + path, body, raw)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_a_fault_applies_to_the_bulk_request_as_a_whole(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    url = f"{services.context_url}/api/v1/context/batch"
    ctx.set_faults(status=503, count=1, retry_after=1)
    failed = post(url, {"context_ids": ["a", "b", "c"]})
    assert (failed.status_code, failed.headers["Retry-After"]) == (503, "1")
    assert ctx.faults()["remaining"] == 0  # counted once for three ids
    assert len(post(url, {"context_ids": ["a", "b", "c"]}).json()["contexts"]) == 3
    assert [(e["path"], e["status"]) for e in ctx.requests_log()] == [
        ("/api/v1/context/batch", 503),
        ("/api/v1/context/batch", 200),
    ]


def test_bulk_routes_can_be_switched_off(
    services: ReferenceServices, ctx: ReferenceControl, pred: ReferenceControl
) -> None:
    assert ctx.bulk_enabled() and pred.bulk_enabled()
    ctx.set_bulk(False)
    pred.set_bulk(False)
    assert not ctx.bulk_enabled()
    contexts = post(f"{services.context_url}/api/v1/context/batch", {"context_ids": ["a"]})
    predictions = post(
        f"{services.prediction_url}/api/v1/predict/batch",
        {"requests": [{"pattern_id": "p", "context": {}}]},
    )
    unknown = post(f"{services.prediction_url}/api/v1/unknown", {})
    for response in (contexts, predictions):
        # Exactly what a route that does not exist answers.
        assert response.status_code == 404
        assert response.json() == {"error": "not found", "path": response.request.path_url}
    assert unknown.json()["error"] == "not found"
    # The single routes are untouched, and GET of a context named "batch" still works.
    assert get(f"{services.context_url}/api/v1/context/batch").json()["context_id"] == "batch"
    ctx.set_bulk(True)
    assert post(f"{services.context_url}/api/v1/context/batch", {"context_ids": ["a"]}).ok
    bad = requests.put(f"{services.context_url}/_admin/bulk", json={"enabled": 1}, timeout=5)
    assert (bad.status_code, bad.json()["field"]) == (422, "enabled")


# -- validation, routing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "raw", "field"),
    [
        ("/api/v1/context", {}, None, "data"),
        ("/api/v1/context", {"data": {}}, None, "data"),
        ("/api/v1/context", {"data": [1, 2]}, None, "data"),
        ("/api/v1/context", [1], None, "data"),
        ("/api/v1/context", None, "not json", "data"),
        ("/api/v1/predict", {"context": {}}, None, "pattern_id"),
        ("/api/v1/predict", {"pattern_id": "bad id!", "context": {}}, None, "pattern_id"),
        ("/api/v1/predict", {"pattern_id": "p"}, None, "context"),
        ("/api/v1/predict", {"pattern_id": "p", "context": "x"}, None, "context"),
        ("/api/v1/predict", None, "{", "body"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(
    services: ReferenceServices, path: str, body: Any, raw: str | None, field: str
) -> None:
    base = services.context_url if "context" in path else services.prediction_url
    response = post(base + path, body, raw)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert response.json()["error"]


@pytest.mark.parametrize("context_id", ["-leading-dash", "a" * 129, "sp%20ace"])
def test_invalid_context_id_is_422(services: ReferenceServices, context_id: str) -> None:
    response = get(f"{services.context_url}/api/v1/context/{context_id}")
    assert response.status_code == 422
    assert response.json()["field"] == "context_id"


def test_unknown_route_and_wrong_method(services: ReferenceServices) -> None:
    missing = get(f"{services.prediction_url}/api/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not found"
    wrong = get(f"{services.prediction_url}/api/v1/predict")
    assert wrong.status_code == 405
    assert "POST" in wrong.headers["Allow"]
    assert wrong.json()["error"] == "method not allowed"


def test_health_and_version(
    services: ReferenceServices, ctx: ReferenceControl, pred: ReferenceControl
) -> None:
    for base in (services.context_url, services.prediction_url):
        body = get(f"{base}/health").json()
        assert (body["status"], body["version"], body["api"]) == ("ok", "1.0.0", "v1")
    ctx.set_version("2.0.0")
    assert get(f"{services.context_url}/health").json()["version"] == "2.0.0"
    assert get(f"{services.prediction_url}/health").json()["version"] == "1.0.0"
    assert services.context_state.version == "2.0.0"


# -- faults -----------------------------------------------------------------------------


def test_status_with_count_faults_exactly_n(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    config = ctx.set_faults(status=503, count=2)
    assert config["remaining"] == 2
    url = f"{services.context_url}/api/v1/context/user-1"
    statuses = [get(url).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert ctx.faults()["remaining"] == 0


def test_count_is_exact_under_concurrency(
    services: ReferenceServices, pred: ReferenceControl
) -> None:
    pred.set_faults(status=500, count=5)
    url = f"{services.prediction_url}/api/v1/predict"
    body = {"pattern_id": "p", "context": {"a": 1}}
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(url, body).status_code, range(24)))
    assert statuses.count(500) == 5
    assert statuses.count(200) == 19


def test_injected_error_body(services: ReferenceServices, ctx: ReferenceControl) -> None:
    ctx.set_faults(status=500)
    response = get(f"{services.context_url}/api/v1/context/user-1")
    assert response.status_code == 500
    assert response.json() == {"error": "injected fault"}
    assert "Retry-After" not in response.headers


def test_error_rate_is_reproducible_with_a_seed(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    url = f"{services.context_url}/api/v1/context/user-1"

    def run(seed: int) -> list[int]:
        ctx.set_faults(error_rate=0.5, seed=seed)
        return [get(url).status_code for _ in range(16)]

    first = run(7)
    assert set(first) == {200, 503}  # the default status of an error_rate fault
    assert run(7) == first
    assert run(8) != first


def test_latency_delays_the_answer(services: ReferenceServices, ctx: ReferenceControl) -> None:
    ctx.set_faults(latency_ms=150)
    started = time.perf_counter()
    response = get(f"{services.context_url}/api/v1/context/user-1")
    assert time.perf_counter() - started >= 0.15
    assert response.status_code == 200
    # Latency alone with a count: only that many requests are delayed.
    ctx.set_faults(latency_ms=50, count=1)
    get(f"{services.context_url}/api/v1/context/user-1")
    assert ctx.faults()["remaining"] == 0


def test_trickle_sends_the_answer_a_byte_at_a_time(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    """Every byte arrives well within a read timeout (0.5 s here, never reached); the whole
    answer takes far longer (a byte each 20 ms)."""
    url = f"{services.context_url}/api/v1/context/user-1"
    whole = get(url).content
    ctx.set_faults(trickle_ms=20, count=1)
    started = time.perf_counter()
    with requests.get(url, stream=True, timeout=(2, 0.5)) as response:
        assert response.headers["Content-Length"] == str(len(whole))
        body = response.content
    assert time.perf_counter() - started >= 0.02 * len(whole) > 0.5
    assert body == whole
    assert ctx.faults()["remaining"] == 0
    assert get(url).content == whole  # the count spent: the next answer at once


def test_down_drops_the_connection(services: ReferenceServices, ctx: ReferenceControl) -> None:
    ctx.set_faults(down=True, count=1)
    url = f"{services.context_url}/api/v1/context/user-1"
    with pytest.raises(requests.ConnectionError):
        get(url)
    assert get(url).status_code == 200
    assert [entry["status"] for entry in ctx.requests_log()] == [None, 200]


def test_health_is_faulted_only_when_asked(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    ctx.set_faults(down=True)
    assert get(f"{services.context_url}/health").status_code == 200
    ctx.set_faults(down=True, include_health=True)
    with pytest.raises(requests.ConnectionError):
        get(f"{services.context_url}/health")


def test_match_restricts_the_faulted_paths(
    services: ReferenceServices, ctx: ReferenceControl
) -> None:
    ctx.set_faults(status=500, match="/api/v1/context/")
    assert get(f"{services.context_url}/api/v1/context/user-1").status_code == 500
    assert post(f"{services.context_url}/api/v1/context", {"data": {"a": 1}}).status_code == 200


def test_retry_after_header(services: ReferenceServices, ctx: ReferenceControl) -> None:
    url = f"{services.context_url}/api/v1/context/user-1"
    ctx.set_faults(status=429, retry_after=2)
    response = get(url)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "2")
    ctx.set_faults(status=503, retry_after=0.5)
    assert get(url).headers["Retry-After"] == "0.5"


def test_admin_routes_are_never_faulted(services: ReferenceServices, ctx: ReferenceControl) -> None:
    ctx.set_faults(down=True, latency_ms=500, match="/")
    started = time.perf_counter()
    assert ctx.faults()["down"] is True
    ctx.set_version("1.2.3")
    assert ctx.bump_context("admin-ok") == 2
    assert ctx.requests_log() == []
    ctx.clear_faults()
    assert time.perf_counter() - started < 1.0  # five calls: 2.5 s if they were delayed
    assert get(f"{services.context_url}/api/v1/context/user-1").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"error_rate": 2}, "error_rate"),
        ({"latency_ms": "slow"}, "latency_ms"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"trickle_ms": -1}, "trickle_ms"),
        ({"status": True}, "status"),
        ({"status": 99}, "status"),
        ({"count": -1}, "count"),
        ({"down": "yes"}, "down"),
        ({"match": 3}, "match"),
        ({"bogus": 1}, "bogus"),
        ([], "body"),
    ],
)
def test_invalid_fault_bodies_are_422(
    services: ReferenceServices, ctx: ReferenceControl, body: Any, field: str
) -> None:
    response = requests.put(f"{services.context_url}/_admin/faults", json=body, timeout=TIMEOUT)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert ctx.faults()["down"] is False  # the previous configuration stands


# -- request log ------------------------------------------------------------------------


def test_request_log(services: ReferenceServices, pred: ReferenceControl) -> None:
    started = time.time()
    post(f"{services.prediction_url}/api/v1/predict", {"pattern_id": "p", "context": {}})
    get(f"{services.prediction_url}/health")
    post(f"{services.prediction_url}/api/v1/predict", {})
    finished = time.time()
    log = pred.requests_log()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/api/v1/predict", 200),
        ("GET", "/health", 200),
        ("POST", "/api/v1/predict", 422),
    ]
    times = [entry["time"] for entry in log]
    assert times == sorted(times)
    assert started <= times[0] and times[-1] <= finished
    pred.clear_requests()
    assert pred.requests_log() == []


# -- servers ----------------------------------------------------------------------------


def test_server_lifecycle() -> None:
    state = ServiceState("solo")
    with ReferenceServer(make_context_app(state)) as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert get(f"{server.url}/health").json()["service"] == "solo"
        # A taken port is an OSError, not werkzeug's sys.exit.
        with pytest.raises(OSError):
            ReferenceServer(make_context_app(state), port=server.port).start()
    with pytest.raises(requests.ConnectionError):
        get(f"{server.url}/health")


def test_services_on_given_ports() -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    with ReferenceServices(context_port=ports[0], prediction_port=ports[1]) as running:
        assert running.context_url.endswith(f":{ports[0]}")
        assert running.prediction_url.endswith(f":{ports[1]}")
        assert get(f"{running.prediction_url}/health").json()["service"] == "prediction"
