"""The core pipeline tests once more, on RabbitMQ quorum queues (``INTENT_QUEUE_TYPE=quorum``):
the worker's queue a quorum queue, per-consumer prefetch, a countdown waiting in the
broker's delayed-delivery queues, and a message on its last delivery refused, not dropped.

The broker is found as in ``test_pipeline_amqp`` (``INTENT_TEST_AMQP_URL``: unreachable,
every test fails; unset, the local RabbitMQ if it answers, else skipped). The run has a
place of its own on it (``tests/integration/rabbitmq.py``), removed at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Queue

from celeryqueues import DELIVERY_LIMIT, queue_settings
from intent.dev.stack import WorkerProcess, running_worker
from intent.poison import DeadTasks
from intent.reference import ReferenceControl, ReferenceServices
from intent.runtime import get_runtime
from intent.settings import get_settings
from tasks import submit
from tasks.app import app
from tests.helpers import request, stream_events, wait_until
from tests.integration import test_pipeline_inprocess, test_pipeline_prefork
from tests.integration.conftest import FAST_RETRY_ENV
from tests.integration.rabbitmq import (
    delayed_delivery_topology,
    own_place,
    quorum_broker,
)
from tests.integration.test_pipeline_amqp import amqp_url  # noqa: F401  # the broker fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]


@pytest.fixture(scope="module")
def quorum_queue() -> str:
    return f"intent-test-quorum-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def quorum_url(amqp_url: str, quorum_queue: str) -> Iterator[str]:  # noqa: F811
    with own_place(amqp_url, [quorum_queue, f"{quorum_queue}-spent"]) as url:
        yield url


@pytest.fixture(scope="module")
def prefork_worker(
    reference: ReferenceServices, quorum_url: str, quorum_queue: str
) -> Iterator[WorkerProcess]:
    """A prefork worker on the quorum queue, with this process's client pointed there too."""
    with (
        quorum_broker(quorum_url, quorum_queue),
        running_worker(concurrency=2, env=FAST_RETRY_ENV, loglevel="INFO") as worker,
    ):
        yield worker


def _declare(url: str, queue: str, **arguments: object) -> None:
    with Connection(url, connect_timeout=5) as conn:
        conn.default_channel.queue_declare(
            queue, durable=True, auto_delete=False, arguments=arguments
        )


def _ready(url: str, queue: str) -> int:
    with Connection(url, connect_timeout=5) as conn:
        _, ready, _ = conn.default_channel.queue_declare(queue, passive=True)
    return int(ready)


def test_the_pipeline_runs_on_quorum_queues(
    clean: redis.Redis, prefork_worker: WorkerProcess, quorum_url: str, quorum_queue: str
) -> None:
    inspect = app.control.inspect([prefork_worker.name], timeout=5)
    (queue,) = (inspect.active_queues() or {})[prefork_worker.name]
    assert queue["name"] == quorum_queue
    assert queue["queue_arguments"]["x-queue-type"] == "quorum"
    assert queue["exchange"]["type"] == "topic"
    # The broker has it as a quorum queue: declaring it classic is refused.
    with pytest.raises(Exception, match="x-queue-type"):
        _declare(quorum_url, quorum_queue, **{"x-queue-type": "classic"})
    _declare(quorum_url, quorum_queue, **queue["queue_arguments"])  # as the worker did
    # Celery's delayed-delivery topology is there, its queues quorum queues too.
    queues, _ = delayed_delivery_topology()
    assert all(_ready(quorum_url, name) == 0 for name in queues)
    vhost = _private_vhost(quorum_url)
    if vhost is not None:
        types = dict(
            line.split() for line in _rabbitmqctl("list_queues", "-p", vhost, "name", "type")
        )
        assert {types[name] for name in [quorum_queue, *queues]} == {"quorum"}, types

    result = submit(request()).get(timeout=60)
    assert result.status == "completed"
    assert _ready(quorum_url, quorum_queue) == 0


def _private_vhost(url: str) -> str | None:
    """The run's own vhost (``rabbitmq.own_place`` made it with rabbitmqctl), else None."""
    vhost = url.rsplit("/", 1)[-1]
    return vhost if vhost.startswith("intent-test-") and shutil.which("rabbitmqctl") else None


def _rabbitmqctl(*args: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_the_worker_sets_its_prefetch_per_consumer(
    prefork_worker: WorkerProcess, quorum_url: str, quorum_queue: str
) -> None:
    """Quorum queues refuse global QoS: the worker's consumer has its own prefetch (the
    concurrency times worker_prefetch_multiplier 1), its channels no global one."""
    vhost = _private_vhost(quorum_url)
    if vhost is None:
        pytest.skip("the broker's consumers are read with rabbitmqctl, in the run's own vhost")
    consumers = [
        line.split()
        for line in _rabbitmqctl("list_consumers", "-p", vhost, "queue_name", "prefetch_count")
    ]
    assert [row for row in consumers if row[0] == quorum_queue] == [[quorum_queue, "2"]], consumers
    channels = [
        line.split() for line in _rabbitmqctl("list_channels", "vhost", "global_prefetch_count")
    ]
    ours = [row for row in channels if row[0] == vhost]
    assert ours and all(row[1] == "0" for row in ours), channels


def test_a_countdown_waits_in_the_broker_not_in_the_worker(
    clean: redis.Redis,
    prefork_worker: WorkerProcess,
    quorum_url: str,
    prediction_service: ReferenceControl,
) -> None:
    """A plain client's countdown (send_task by name): the message waits in the
    delayed-delivery queues, no worker holds it unacked meanwhile, and it runs once due;
    a retry of it (parked in Redis, released into the queue) runs as any other."""
    countdown = 3
    prediction_service.set_faults(status=503, count=1)
    payload = request()
    sent = time.time()
    handle = app.send_task("intent.analyze", args=[payload], countdown=countdown)
    queues, _ = delayed_delivery_topology()
    wait_until(
        lambda: sum(_ready(quorum_url, q) for q in queues) == 1, countdown, "the delayed message"
    )
    inspect = app.control.inspect([prefork_worker.name], timeout=5)
    assert (inspect.scheduled() or {}).get(prefork_worker.name) == []
    assert (inspect.reserved() or {}).get(prefork_worker.name) == []
    result = handle.get(timeout=60)
    assert time.time() - sent >= countdown
    assert result["status"] == "completed"
    assert result["retries"] == {"predict": 1}
    assert len(stream_events(clean, payload["request_id"])) == len(result["events"]) > 0


def test_a_message_on_its_last_delivery_is_refused_not_dropped(
    clean: redis.Redis, quorum_url: str, quorum_queue: str
) -> None:
    """A message that came back DELIVERY_LIMIT times (here rejected with requeue by a bare
    consumer, as Celery rejects one whose pool process died) reaches a worker once more:
    the gate refuses it, its sender gets the error and it is kept with the dead tasks. One
    more return and the broker would have dropped it unseen: shown on a second message."""
    spent = f"{quorum_queue}-spent"
    arguments = queue_settings(get_settings())["task_queues"][0].queue_arguments
    kept, dropped = request(), request()
    with app.connection_for_write() as conn:
        target = Queue(spent, routing_key=spent, queue_arguments=arguments).bind(conn)
        target.declare()

        def returned(payload: dict[str, object], times: int) -> tuple[Any, Any]:
            handle = app.send_task("intent.analyze", args=[payload], queue=target)
            for _ in range(times):
                message = wait_until(lambda: target.get(no_ack=False), 10, "the message")
                assert message.headers["id"] == handle.id
                count = message.headers.get("x-delivery-count")
                message.reject(requeue=True)
            return handle, count

        # One return more than the limit: the broker drops the message.
        lost, count = returned(dropped, DELIVERY_LIMIT + 1)
        assert count == DELIVERY_LIMIT
        assert _ready(quorum_url, spent) == 0
        # At the limit: it is delivered once more, its count saying so.
        handle, count = returned(kept, DELIVERY_LIMIT)
        assert count == DELIVERY_LIMIT - 1
    assert _ready(quorum_url, spent) == 1

    worker = WorkerProcess(1, env={**FAST_RETRY_ENV, "INTENT_QUEUE": spent}, loglevel="INFO")
    try:
        worker.wait_ready()
        with pytest.raises(Exception) as info:
            handle.get(timeout=30)
    finally:
        worker.stop()
    assert "x-delivery-count" in str(info.value)
    assert f"delivered {DELIVERY_LIMIT + 1} times" in str(info.value)
    rt = get_runtime()
    (dead,) = [
        d
        for d in DeadTasks(rt.redis, rt.keys, rt.settings.events_maxlen).list()
        if d.task_id == handle.id
    ]
    assert dead.field == "headers.x-delivery-count"
    assert _ready(quorum_url, spent) == 0
    assert stream_events(clean, kept["request_id"]) == []  # it never ran
    assert not lost.ready()  # dropped by the broker: no answer will ever come


# The core tests, collected again in this module: here they run on quorum queues.
for _module in (test_pipeline_inprocess, test_pipeline_prefork):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test):
            globals()[_name] = _test
