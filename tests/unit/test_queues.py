"""INTENT_QUEUE_TYPE: the queues Celery declares for each type, the broker it needs, and the
gate's refusal of a quorum queue's message on its last delivery."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from inspect import signature
from typing import Any

import pytest

from celeryqueues import DELIVERY_COUNT_HEADER, DELIVERY_LIMIT, queue_settings
from intent import codec
from intent.messages import Checked, Refusal, inspect
from intent.settings import Settings, SettingsError, load_settings
from tasks.consumer import last_delivery

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def test_classic_queues_are_a_plain_celery_clients() -> None:
    conf = queue_settings(Settings(broker_url=AMQP))
    assert set(conf) == {"task_queues"}
    queues = {q.name: q for q in conf["task_queues"]}
    assert list(queues) == ["intent", "celery"]
    for name, queue in queues.items():
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
            name,
            "direct",
            name,
        )
        assert not queue.queue_arguments
        assert queue.durable


def test_quorum_queues_on_topic_exchanges_with_the_delivery_limit() -> None:
    conf = queue_settings(Settings(broker_url=AMQP, queue_type="quorum", queue="work"))
    queues = {q.name: q for q in conf["task_queues"]}
    assert list(queues) == ["work", "celery"]
    for name, queue in queues.items():
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
        }
        # Native delayed delivery cannot bind a direct exchange.
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
            name,
            "topic",
            name,
        )
        assert queue.durable
    assert conf["task_default_queue_type"] == conf["task_create_missing_queue_type"] == "quorum"
    assert conf["task_default_exchange_type"] == "topic"
    assert conf["task_create_missing_queue_exchange_type"] == "topic"
    assert conf["worker_detect_quorum_queues"] is True
    assert conf["broker_native_delayed_delivery_queue_type"] == "quorum"


@pytest.mark.parametrize("scheme", ["amqp", "amqps", "pyamqp"])
def test_quorum_queues_on_rabbitmq(scheme: str) -> None:
    settings = load_settings(queue_type="quorum", broker_url=f"{scheme}://u:p@h:5672/v")
    assert settings.queue_type == "quorum"


@pytest.mark.parametrize(
    ("overrides", "found"),
    [
        ({"broker_url": "redis://h:6379/0"}, "INTENT_BROKER_URL is redis://"),
        (
            {"redis_url": "redis://h:6379/0"},
            "INTENT_BROKER_URL is unset, so the broker is INTENT_REDIS_URL (redis://)",
        ),
        ({}, "INTENT_BROKER_URL is unset"),
        ({"broker_url": "sentinel://h:26379"}, "INTENT_BROKER_URL is sentinel://"),
    ],
)
def test_quorum_queues_on_another_broker_are_refused(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str], found: str
) -> None:
    for name in ("INTENT_BROKER_URL", "INTENT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError) as info:
        load_settings(queue_type="quorum", **overrides)
    message = str(info.value)
    assert "INTENT_QUEUE_TYPE=quorum needs a RabbitMQ broker (amqp://)" in message
    assert found in message


def test_an_unknown_queue_type_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_QUEUE_TYPE", "lazy")
    with pytest.raises(SettingsError, match="INTENT_QUEUE_TYPE"):
        load_settings(broker_url=AMQP)


def _headers(**extra: Any) -> dict[str, Any]:
    return {"id": "req-1.fetch_context", "task": "intent.fetch_context", **extra}


CHECKED = Checked(
    [{"request_id": "req-1"}],
    {},
    {"chain": [{"task": "intent.predict", "options": {"task_id": "req-1.predict"}}]},
)


@pytest.mark.parametrize("count", [None, 0, 1, DELIVERY_LIMIT - 1, True, "99"])
def test_a_message_before_its_last_delivery_runs(count: Any) -> None:
    headers = _headers() if count is None else _headers(**{DELIVERY_COUNT_HEADER: count})
    assert last_delivery(headers, CHECKED) is None


@pytest.mark.parametrize("count", [DELIVERY_LIMIT, DELIVERY_LIMIT + 3])
def test_a_message_on_its_last_delivery_is_refused_and_its_sender_answered(count: int) -> None:
    refusal = last_delivery(_headers(**{DELIVERY_COUNT_HEADER: count}), CHECKED)
    assert refusal is not None
    assert refusal.field == "headers.x-delivery-count"
    assert f"delivered {count + 1} times" in refusal.reason
    assert f"delivery limit is {DELIVERY_LIMIT}" in refusal.reason
    assert (refusal.task_id, refusal.task) == ("req-1.fetch_context", "intent.fetch_context")
    assert refusal.chain == ({"task": "intent.predict", "options": {"task_id": "req-1.predict"}},)
    assert refusal.args == [{"request_id": "req-1"}]


def _inspected(headers: dict[str, Any]) -> Checked | Refusal:
    def run(request: Any) -> None: ...

    body = json.dumps([[{"request_id": "req-1"}], {}, {}])
    limits = codec.Limits(max_bytes=65536, max_depth=16, max_string=65536)
    return inspect(headers, "application/json", "utf-8", body, limits, lambda name: signature(run))


def test_the_headers_rabbitmq_adds_pass_the_gate() -> None:
    """A countdown's message comes out of the delayed-delivery queues with ``x-death``
    (AMQP timestamps, not JSON), a quorum queue's redelivery with ``x-delivery-count``."""
    death = {"count": 1, "queue": "celery_delayed_0", "time": datetime.now(UTC)}
    headers = _headers(
        **{
            "x-death": [death],
            "x-first-death-queue": "celery_delayed_1",
            "x-last-death-reason": "expired",
            DELIVERY_COUNT_HEADER: 1,
        }
    )
    assert isinstance(_inspected(headers), Checked)


def test_a_senders_header_that_is_not_json_is_still_refused() -> None:
    refusal = _inspected(_headers(stamp=datetime.now(UTC)))
    assert isinstance(refusal, Refusal) and refusal.field == "headers.stamp"


def test_the_configuration_loads_nothing_of_the_tasks_package() -> None:
    """Celery's default loader imports celeryconfig before the app: a ``tasks`` import from
    it loaded the app and the runtime inside the loader (a gevent worker's control channel
    then answered no ping for a minute)."""
    import subprocess
    import sys

    code = (
        "import sys, celeryconfig, celeryqueues\n"
        "loaded = sorted(m for m in sys.modules if m == 'tasks' or m.startswith('tasks.'))\n"
        "assert not loaded, loaded\n"
    )
    env = {"INTENT_REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
