"""Resilience drills without Redis: the drill model and its strict validation, the
per-process cache (injected clocks), and the client applying a drill's fault inside its
guard, marked as injected."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from intent import cli
from intent.clients import ServiceClient
from intent.drills import MAX_LATENCY, Drill, DrillSource
from intent.errors import ServiceRequestError, ServiceUnavailableError, ValidationError

NOW = 1_700_000_000.0
MAX = 3600.0
SERVICE = "prediction-service"


def parse(body: Any, service: str = SERVICE) -> Drill:
    return Drill.parse(service, body, NOW, MAX)


def status_drill(rate: float = 1.0, **extra: Any) -> Drill:
    return parse({"rate": rate, "kind": "status", "status": 503, "duration": 60, **extra})


# -- the model --------------------------------------------------------------------------


def test_a_status_drill_runs_from_now_for_its_duration() -> None:
    drill = status_drill(0.25, latency=0.5, reason="game day")
    assert (drill.service, drill.kind, drill.status, drill.rate) == (SERVICE, "status", 503, 0.25)
    assert (drill.started_at, drill.expires_at) == (NOW, NOW + 60)
    assert drill.latency == 0.5 and drill.reason == "game day"
    assert drill.describe() == "25% HTTP 503 +0.5 s"
    assert drill.as_dict(now=NOW + 20)["remaining"] == 40


def test_timeout_and_latency_drills() -> None:
    timeout = parse({"rate": 0.1, "kind": "timeout", "duration": 5})
    assert (timeout.kind, timeout.status, timeout.latency) == ("timeout", None, 0.0)
    assert timeout.describe() == "10% timeout"
    latency = parse({"rate": 1, "kind": "latency", "latency": 0.8, "duration": 5})
    assert (latency.kind, latency.latency, latency.describe()) == ("latency", 0.8, "100% +0.8 s")


def test_a_stored_drill_reads_back_and_anything_else_is_refused() -> None:
    drill = status_drill(0.5, latency=1.5)
    assert Drill.loads(drill.dumps()) == drill
    assert Drill.loads(drill.dumps().encode()) == drill
    for raw in ("not json", "[1]", '{"service": "x"}', '{"surprise": 1}'):
        with pytest.raises(ValueError, match="not a stored drill"):
            Drill.loads(raw)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"rate": 1.5, "kind": "timeout", "duration": 5}, "rate", "less than or equal to 1"),
        ({"rate": -0.1, "kind": "timeout", "duration": 5}, "rate", "greater than or equal to 0"),
        ({"rate": True, "kind": "timeout", "duration": 5}, "rate", "a valid number"),
        ({"rate": "0.5", "kind": "timeout", "duration": 5}, "rate", "a valid number"),
        ({"kind": "timeout", "duration": 5}, "rate", "Field required"),
        ({"rate": 0.5, "kind": "explode", "duration": 5}, "kind", "'status', 'timeout' or"),
        ({"rate": 0.5, "duration": 5}, "kind", "Field required"),
        ({"rate": 0.5, "kind": "timeout"}, "duration", "Field required"),
        ({"rate": 0.5, "kind": "timeout", "duration": 0}, "duration", "greater than 0"),
        ({"rate": 0.5, "kind": "timeout", "duration": 3601}, "duration", "INTENT_DRILL_MAX"),
        ({"rate": 0.5, "kind": "timeout", "duration": float("inf")}, "duration", "finite"),
        ({"rate": 0.5, "kind": "status", "duration": 5}, "status", "429 or a status 500..599"),
        ({"rate": 0.5, "kind": "status", "status": 302, "duration": 5}, "status", "than or equal"),
        ({"rate": 0.5, "kind": "status", "status": 404, "duration": 5}, "status", "than or equal"),
        ({"rate": 0.5, "kind": "status", "status": 450, "duration": 5}, "status", "429 or a"),
        ({"rate": 0.5, "kind": "status", "status": 600, "duration": 5}, "status", "than or equal"),
        ({"rate": 0.5, "kind": "status", "status": "503", "duration": 5}, "status", "integer"),
        ({"rate": 0.5, "kind": "timeout", "status": 503, "duration": 5}, "status", "only a"),
        ({"rate": 0.5, "kind": "latency", "duration": 5}, "latency", "seconds above 0"),
        ({"rate": 0.5, "kind": "latency", "latency": 0, "duration": 5}, "latency", "above 0"),
        (
            {"rate": 0.5, "kind": "timeout", "latency": MAX_LATENCY + 1, "duration": 5},
            "latency",
            "less than or equal to 60",
        ),
        ({"rate": 0.5, "kind": "timeout", "duration": 5, "reason": 7}, "reason", "valid string"),
        ({"rate": 0.5, "kind": "timeout", "duration": 5, "reason": "r" * 201}, "reason", "200"),
        ({"rate": 0.5, "kind": "timeout", "duration": 5, "for": 5}, "for", "Extra inputs"),
        ([{"rate": 0.5}], "drill", "must be a JSON object"),
    ],
)
def test_a_bad_drill_is_refused_naming_the_field(body: Any, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse(body)
    assert raised.value.field == field
    assert message in raised.value.message


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        parse({"rate": 1, "kind": "timeout", "duration": 5}, service="billing")
    assert raised.value.field == "service"


def test_a_drill_hits_a_share_of_the_draws() -> None:
    assert not status_drill(0.0).hits(0.0)
    assert status_drill(1.0).hits(0.999999)
    half = status_drill(0.5)
    assert half.hits(0.49) and not half.hits(0.5)


# -- the per-process cache ----------------------------------------------------------------


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 100.0
        self.wall = NOW

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


def source(
    read: Callable[[str], Drill | None],
    clocks: Clocks,
    counted: Callable[[str, str], None] | None = None,
    draw: Callable[[], float] = lambda: 0.0,
) -> DrillSource:
    return DrillSource(
        read, 1.0, counted=counted, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall,
        draw=draw,
    )  # fmt: skip


def test_the_drill_is_read_at_most_once_per_refresh_per_service() -> None:
    clocks, reads = Clocks(), []
    drill = status_drill()

    def read(service: str) -> Drill | None:
        reads.append(service)
        return drill if service == SERVICE else None

    drills = source(read, clocks)
    for _ in range(100):
        assert drills.current(SERVICE) == drill
        assert drills.current("context-service") is None
    assert reads == [SERVICE, "context-service"]
    clocks.advance(0.99)
    drills.current(SERVICE)
    assert len(reads) == 2
    clocks.advance(0.01)
    drills.current(SERVICE)
    assert reads == [SERVICE, "context-service", SERVICE]


def test_a_stop_or_a_new_drill_is_seen_at_the_next_refresh() -> None:
    clocks = Clocks()
    stored: dict[str, Drill | None] = {SERVICE: status_drill()}
    drills = source(stored.get, clocks)
    assert drills.current(SERVICE) is not None
    stored[SERVICE] = None
    assert drills.current(SERVICE) is not None  # the cache, for less than a refresh
    clocks.advance(1.0)
    assert drills.current(SERVICE) is None


def test_a_cached_drill_ends_at_its_expiry_not_at_the_next_refresh() -> None:
    clocks = Clocks()
    drill = parse({"rate": 1, "kind": "timeout", "duration": 0.5})
    drills = source(lambda _: drill, clocks)
    assert drills.current(SERVICE) == drill
    clocks.wall += 0.5  # the wall clock reaches the expiry; the cache is still fresh
    assert drills.current(SERVICE) is None
    assert drills(SERVICE) is None


def test_while_redis_cannot_be_read_there_is_no_drill(caplog: pytest.LogCaptureFixture) -> None:
    clocks, reads = Clocks(), []
    drill = status_drill()
    up = False

    def read(service: str) -> Drill | None:
        reads.append(service)
        if not up:
            raise redis.ConnectionError("refused")
        return drill

    drills = source(read, clocks)
    with caplog.at_level(logging.WARNING, "intent.drills"):
        assert drills.current(SERVICE) is None
        assert drills.current(SERVICE) is None  # the failure is cached too: no read storm
        clocks.advance(1.0)
        assert drills.current(SERVICE) is None
    assert len(reads) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "drills cannot be read (ConnectionError): no drill meanwhile"
    ]
    up = True
    clocks.advance(1.0)
    assert drills.current(SERVICE) == drill


def test_threads_meeting_a_stale_entry_read_once_and_answer_meanwhile() -> None:
    """While one thread refreshes, the others answer from the entry they have: a
    process reads once per refresh however many threads call."""
    clocks, reads = Clocks(), []
    reading, release = threading.Event(), threading.Event()
    first, second = status_drill(0.5), status_drill(1.0)

    def read(service: str) -> Drill | None:
        reads.append(service)
        if len(reads) == 1:
            return first
        reading.set()
        release.wait(5)  # the refresh is slow: the other threads must not wait for it
        return second

    drills = source(read, clocks)
    assert drills.current(SERVICE) == first
    clocks.advance(1.0)
    refresher = threading.Thread(target=drills.current, args=(SERVICE,))
    refresher.start()
    assert reading.wait(5)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: drills.current(SERVICE), range(64)))
    release.set()
    refresher.join(5)
    assert answers == [first] * 64  # the last read, while the refresh ran
    assert len(reads) == 2
    assert drills.current(SERVICE) == second


def test_a_hit_is_counted_by_service_and_kind_and_a_miss_is_not() -> None:
    clocks, counted = Clocks(), []
    draws = iter([0.1, 0.7, 0.2])
    drill = status_drill(0.5)
    drills = source(lambda _: drill, clocks, lambda s, k: counted.append((s, k)), draws.__next__)
    assert [drills(SERVICE) for _ in range(3)] == [drill, None, drill]
    assert counted == [(SERVICE, "status"), (SERVICE, "status")]


def test_no_drill_draws_nothing_and_counts_nothing() -> None:
    def draw() -> float:
        raise AssertionError("no drill: no draw")

    counted: list[tuple[str, str]] = []
    drills = source(lambda _: None, Clocks(), lambda s, k: counted.append((s, k)), draw)
    assert drills(SERVICE) is None and counted == []


# -- the client applies it ------------------------------------------------------------------


class Recorder(requests.adapters.BaseAdapter):
    """Answers 200 {"ok": true} and counts the requests sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        self.sent += 1
        response = requests.Response()
        response.status_code, response._content = 200, b'{"ok": true}'
        return response

    def close(self) -> None:
        pass


class Guard:
    """A guard that remembers what each call it wrapped raised (the breaker's view)."""

    def __init__(self) -> None:
        self.seen: list[BaseException | None] = []

    def __call__(self, send: Callable[[], Any]) -> Any:
        try:
            result = send()
        except Exception as exc:
            self.seen.append(exc)
            raise
        self.seen.append(None)
        return result


def drilled(drill: Drill | None) -> tuple[ServiceClient, Recorder, Guard]:
    guard, recorder = Guard(), Recorder()
    client = ServiceClient("http://svc.test", guard=guard, drill=lambda service: drill)
    client.service = SERVICE
    client.session.mount("http://", recorder)
    return client, recorder, guard


def test_a_status_fault_raises_inside_the_guard_without_sending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, recorder, guard = drilled(status_drill())
    with (
        caplog.at_level(logging.INFO, "intent.clients"),
        pytest.raises(ServiceUnavailableError) as raised,
    ):
        client._request("POST", "/api/v1/predict", endpoint="predict")  # fmt: skip
    assert recorder.sent == 0
    assert "HTTP 503 on POST /api/v1/predict: injected by a drill (100% HTTP 503)" in str(
        raised.value
    )
    assert guard.seen == [raised.value]
    (record,) = caplog.records
    assert record.injected is True  # type: ignore[attr-defined]
    assert record.drill == "100% HTTP 503"  # type: ignore[attr-defined]
    assert (record.kind, record.endpoint) == ("status", "predict")  # type: ignore[attr-defined]


def test_a_429_fault_is_transient_as_a_real_one() -> None:
    client, recorder, _ = drilled(
        parse({"rate": 1, "kind": "status", "status": 429, "duration": 5})
    )
    with pytest.raises(ServiceUnavailableError) as raised:
        client._request("GET", "/api/v1/context/c1")
    assert (
        raised.value.reason
        == "HTTP 429 on GET /api/v1/context/c1: injected by a drill (100% HTTP 429)"
    )
    assert recorder.sent == 0


def test_a_timeout_fault_is_the_error_a_real_timeout_raises() -> None:
    client, recorder, guard = drilled(parse({"rate": 1, "kind": "timeout", "duration": 5}))
    with pytest.raises(ServiceUnavailableError) as raised:
        client._request("GET", "/x")
    assert raised.value.reason == "timeout on GET /x: injected by a drill (100% timeout)"
    assert recorder.sent == 0 and guard.seen == [raised.value]


def test_latency_alone_delays_then_sends_the_real_request(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("intent.clients.time.sleep", slept.append)
    client, recorder, guard = drilled(
        parse({"rate": 1, "kind": "latency", "latency": 0.3, "duration": 5})
    )
    assert client._request("GET", "/x") == {"ok": True}
    assert slept == [0.3] and recorder.sent == 1 and guard.seen == [None]


def test_latency_comes_before_the_error_it_is_given_with(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("intent.clients.time.sleep", slept.append)
    client, recorder, _ = drilled(status_drill(latency=0.2))
    with pytest.raises(ServiceUnavailableError):
        client._request("GET", "/x")
    assert slept == [0.2] and recorder.sent == 0


def test_without_a_hit_the_call_is_the_real_one() -> None:
    client, recorder, guard = drilled(None)
    assert client._request("GET", "/x") == {"ok": True}
    assert recorder.sent == 1 and guard.seen == [None]


def test_a_real_error_status_maps_as_before() -> None:
    """The status-to-error mapping the drills share: 5xx and 429 transient, 4xx not."""
    client, _, _ = drilled(None)
    assert isinstance(client._status_error(503, "GET /x: busy", 7.0), ServiceUnavailableError)
    assert client._status_error(429, "GET /x: slow down").retry_after is None  # type: ignore[attr-defined]
    refused = client._status_error(422, "GET /x: bad")
    assert isinstance(refused, ServiceRequestError) and refused.status == 422
    assert str(client._status_error(500, "GET /x: boom")).endswith("HTTP 500 on GET /x: boom")


def test_a_seeded_drill_at_half_rate_hits_about_half_the_calls() -> None:
    rng = random.Random(15)
    drills = DrillSource(lambda _: status_drill(0.5), 1.0, wall=lambda: NOW, draw=rng.random)
    hits = sum(drills(SERVICE) is not None for _ in range(1000))
    assert 430 <= hits <= 570  # 1000 draws: mean 500, sd 15.8


# -- the command line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["drills", "start"], "needs a SERVICE"),
        (["drills", "start", SERVICE, "--for", "5", "--timeout"], "needs --rate and --for"),
        (["drills", "start", SERVICE, "--rate", "1", "--for", "5"], "--status, --timeout or"),
        (["drills", "stop"], "needs a SERVICE"),
        (["drills", "start", "billing"], "invalid choice"),
        (["drills", "start", SERVICE, "--status", "503", "--timeout"], "not allowed with"),
    ],
)
def test_the_cli_refuses_an_incomplete_drill(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    assert error in capsys.readouterr().err


def test_the_cli_options_are_the_admin_body() -> None:
    from intent.cli.drills import _body
    from intent.cli.main import build_parser

    def body(*options: str) -> dict[str, Any]:
        return _body(build_parser().parse_args(["drills", "start", SERVICE, *options]))

    assert body("--rate", "0.2", "--status", "503", "--for", "300") == {
        "rate": 0.2,
        "duration": 300,
        "kind": "status",
        "status": 503,
    }
    assert body("--rate", "1", "--timeout", "--latency", "2", "--for", "9", "--reason", "r") == {
        "rate": 1,
        "duration": 9,
        "kind": "timeout",
        "latency": 2,
        "reason": "r",
    }
    assert body("--rate", "0.5", "--latency", "0.5", "--for", "60")["kind"] == "latency"
    parse(body("--rate", "0.5", "--latency", "0.5", "--for", "60"))  # valid as given


def test_a_latency_drill_must_end_within_a_calls_lease() -> None:
    # A delay that, with the slowest call, outlives the call's lease in the breaker would
    # let the bulkhead admit more than its limit and the slow-call rule lose the call.
    from intent.drills import Drill
    from intent.errors import ValidationError
    from intent.settings import Settings

    settings = Settings()
    limit = settings.drill_max_latency
    assert limit == settings.circuit_half_open_timeout - settings.slowest_call > 0
    body = {"rate": 1.0, "kind": "latency", "latency": limit, "duration": 60}
    with pytest.raises(ValidationError) as refused:
        Drill.parse("context-service", body, 1000.0, 3600, max_latency=limit)
    assert refused.value.field == "latency"
    under = {**body, "latency": limit - 0.5}
    assert (
        Drill.parse("context-service", under, 1000.0, 3600, max_latency=limit).latency
        == limit - 0.5
    )
