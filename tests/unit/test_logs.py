"""Structured logs: the JSON and text formats, the bound task context, and masking of every
credentialed URL wherever it appears in a line."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import tasks.signals
from intent.logs import (
    JsonFormatter,
    TextFormatter,
    bind,
    bound,
    configure_logging,
    current_context,
    mask_secrets,
    mask_url,
    unbind,
)
from intent.models import IntentRequest, IntentResult
from intent.settings import load_settings


class Capture:
    """A logger whose lines go through one formatter into a buffer."""

    def __init__(self, formatter: logging.Formatter):
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(formatter)
        self.logger = logging.getLogger(f"intent.test.{id(self)}")
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        # A traceback stays inside its JSON object: one object per line, always.
        return [json.loads(line) for line in self.lines()]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)


@pytest.fixture
def json_log() -> Iterator[Capture]:
    capture = Capture(JsonFormatter("worker"))
    yield capture
    capture.close()


def test_a_json_line_has_the_standard_fields_and_the_extra_ones(json_log: Capture) -> None:
    json_log.logger.info(
        "%s GET %s -> %s",
        "context-service",
        "/api/v1/context/c1",
        200,
        extra={
            "service": "context-service",
            "endpoint": "get_context",
            "status": 200,
            "duration": 0.0123,
            "nested": {"ids": ["a", "b"]},
        },
    )
    (line,) = json_log.records()
    assert line["message"] == "context-service GET /api/v1/context/c1 -> 200"
    assert line["level"] == "INFO"
    assert line["logger"] == json_log.logger.name
    assert line["process"] == "worker"
    assert isinstance(line["pid"], int)
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert line["service"] == "context-service"
    assert line["endpoint"] == "get_context"
    assert line["status"] == 200
    assert line["duration"] == 0.0123
    assert line["nested"] == {"ids": ["a", "b"]}


def test_bound_context_reaches_every_line_until_unbound(json_log: Capture) -> None:
    with bound(request_id="req-1", task_id="req-1.fetch_context"):
        json_log.logger.info("inside")
        with bound(step="fetch_context"):
            json_log.logger.info("nested")
        json_log.logger.info("after nested", extra={"task_id": "explicit"})
    json_log.logger.info("outside")

    inside, nested, after, outside = json_log.records()
    assert (inside["request_id"], inside["task_id"]) == ("req-1", "req-1.fetch_context")
    assert nested["step"] == "fetch_context" and nested["request_id"] == "req-1"
    assert "step" not in after
    assert after["task_id"] == "explicit"  # an explicit extra wins over the context
    assert "request_id" not in outside and "task_id" not in outside
    assert dict(current_context()) == {}


def test_context_is_per_thread(json_log: Capture) -> None:
    token = bind(request_id="main-thread")
    try:
        thread = threading.Thread(target=lambda: json_log.logger.info("other thread"))
        thread.start()
        thread.join()
        json_log.logger.info("main thread")
    finally:
        unbind(token)
    other, main = json_log.records()
    assert "request_id" not in other
    assert main["request_id"] == "main-thread"


URL_CASES = [
    # (url, as logged, the secret that must not appear)
    ("redis://user:hunter2@redis:6379/0", "redis://user:***@redis:6379/0", "hunter2"),
    ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0", "hunter2"),
    ("rediss://:hunter2@redis.example:6380/1", "rediss://:***@redis.example:6380/1", "hunter2"),
    ("amqp://guest:guest-pw@rabbit:5672//", "amqp://guest:***@rabbit:5672//", "guest-pw"),
    ("amqps://app:s%40cret@mq/vhost", "amqps://app:***@mq/vhost", "s%40cret"),
    ("redis://:p@ss@w0rd@host:6379", "redis://:***@host:6379", "ss@w0rd"),  # a raw "@"
    ("https://ghp_TOKEN123@github.com/x", "https://***@github.com/x", "ghp_TOKEN123"),
    ("redis://h:6379/0?password=hunter2&db=1", "redis://h:6379/0?password=***&db=1", "hunter2"),
    ("sentinel://h?sentinel_password=pw9&x=1", "sentinel://h?sentinel_password=***&x=1", "pw9"),
    ("redis://redis:6379/0", "redis://redis:6379/0", None),
    ("http://127.0.0.1:8001/api/v1/context/a@b", "http://127.0.0.1:8001/api/v1/context/a@b", None),
]


@pytest.mark.parametrize(("url", "masked", "secret"), URL_CASES)
def test_mask_url(url: str, masked: str, secret: str | None) -> None:
    assert mask_url(url) == masked
    if secret is not None:
        assert secret not in mask_url(url)


def test_mask_secrets_in_longer_text() -> None:
    text = "broker amqp://u:pw1@mq//, backend redis://:pw2@r:6379/0; done (user@example.com)"
    assert mask_secrets(text) == (
        "broker amqp://u:***@mq//, backend redis://:***@r:6379/0; done (user@example.com)"
    )
    assert mask_secrets("{'url': 'redis://:pw3@r/0'}") == "{'url': 'redis://:***@r/0'}"
    assert mask_url(None) == ""


def test_secrets_are_masked_in_message_args_extras_and_tracebacks(json_log: Capture) -> None:
    url = "redis://admin:TopSecret1@db.internal:6379/0"
    json_log.logger.warning("connecting to %s", url, extra={"target": url, "urls": [url]})
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        json_log.logger.exception("failed", extra={"config": {"redis_url": url}})
    with bound(broker="amqp://guest:TopSecret1@mq//"):
        json_log.logger.info("bound")

    assert "TopSecret1" not in json_log.buffer.getvalue()
    warning, failure, bound_line = json_log.records()
    assert warning["message"] == "connecting to redis://admin:***@db.internal:6379/0"
    assert warning["target"] == warning["urls"][0] == "redis://admin:***@db.internal:6379/0"
    assert failure["config"]["redis_url"] == "redis://admin:***@db.internal:6379/0"
    assert "Traceback" in failure["exception"]
    assert "cannot reach redis://admin:***@db.internal:6379/0" in failure["exception"]
    assert bound_line["broker"] == "amqp://guest:***@mq//"


def test_text_format_is_one_readable_line_with_fields_and_masked() -> None:
    capture = Capture(TextFormatter("admin"))
    try:
        with bound(request_id="r-9"):
            capture.logger.info("using %s", "redis://:pw-9z@h/0", extra={"status": 503})
        try:
            raise RuntimeError("amqp://u:pw-9z@mq//")
        except RuntimeError:
            capture.logger.exception("boom")
    finally:
        capture.close()
    text = capture.buffer.getvalue()
    assert "pw-9z" not in text
    first = capture.lines()[0]
    assert " INFO " in first and "[admin]" in first
    assert "using redis://:***@h/0" in first
    assert "request_id=r-9" in first and "status=503" in first
    assert "Traceback" in text and "amqp://u:***@mq//" in text


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_restored")
def test_configure_logging_follows_the_settings(tmp_path: Any) -> None:
    path = tmp_path / "admin.log"
    configure_logging(
        load_settings(log_format="text", log_level="WARNING"), "admin", logfile=str(path)
    )
    handler = configure_logging(load_settings(log_level="WARNING"), "admin", logfile=str(path))
    root = logging.getLogger()
    assert root.handlers == [handler]  # reconfigured, not duplicated
    assert root.level == logging.WARNING
    logging.getLogger("intent.somewhere").info("dropped: below the level")
    logging.getLogger("intent.somewhere").warning("kept")
    handler.flush()
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["message"] == "kept"

    text = configure_logging(load_settings(log_format="text"), "beat", logfile=str(path))
    assert isinstance(text.formatter, TextFormatter)
    assert root.level == logging.INFO  # INTENT_LOG_LEVEL's default


@pytest.mark.usefixtures("root_restored")
def test_celery_setup_logging_hook_prefers_an_explicit_intent_log_level(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from intent.settings import get_settings

    path = str(tmp_path / "worker.log")
    get_settings.cache_clear()
    tasks.signals._setup_logging(loglevel=logging.WARNING, logfile=path)
    assert logging.getLogger().level == logging.WARNING  # --loglevel, no INTENT_LOG_LEVEL
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)

    monkeypatch.setenv("INTENT_LOG_LEVEL", "DEBUG")
    get_settings.cache_clear()
    try:
        tasks.signals._setup_logging(loglevel=logging.WARNING, logfile=path)
        assert logging.getLogger().level == logging.DEBUG
    finally:
        get_settings.cache_clear()


STEP_TEXT = IntentResult(
    request=IntentRequest(request_id="r-4", client_id="c", context_id="x", pattern_id="p")
).model_dump_json()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"request": {"request_id": "r-1"}, "context": None}, {"request_id": "r-1"}),
        ({"request_id": "r-2", "client_id": "c"}, {"request_id": "r-2"}),  # intent.analyze
        ({"batch_id": "b-1", "items": []}, {"batch_id": "b-1"}),
        (STEP_TEXT, {"request_id": "r-4"}),  # between steps the analysis is JSON text
        ('{"data": {"request_id": "r-3"}}', {}),  # other JSON text: not parsed, not guessed
    ],
)
def test_task_ids_bound_around_a_real_celery_task_run(
    json_log: Capture, payload: Any, expected: dict[str, str]
) -> None:
    app = Celery("logs-test", set_as_current=False)

    @app.task(name="intent.test_logging", shared=False)  # not added to other apps
    def logs_something(payload: Any) -> None:
        json_log.logger.info("inside the task")

    logs_something.apply(args=(payload,), task_id="task-42")
    json_log.logger.info("after the task")

    inside, after = json_log.records()
    assert inside["task_id"] == "task-42"
    assert inside["task"] == "intent.test_logging"
    assert {k: inside[k] for k in ("request_id", "batch_id") if k in inside} == expected
    assert "task_id" not in after and "request_id" not in after
