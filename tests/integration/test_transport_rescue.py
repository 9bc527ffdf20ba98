"""A message the worker takes as its Redis broker goes away (tasks/transport.py).

kombu's Redis transport takes a message with ``BRPOP`` and records it as unacknowledged
with a second write. A Redis restarted between the two (append-only, as production Redis
runs: the pop is kept, the record was never written) held the message nowhere: the queue,
the unacked hash and the visibility sweep all came back without it. The consumer keeps it
now and puts it back at the head of its queue once Redis answers; a worker stopping while
Redis is still away puts it back at shutdown, or names each lost task id in an error.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from intent.embedded import EmbeddedRedis
from tasks import transport
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[EmbeddedRedis]:
    transport.install()  # what tasks.app does: redis:// is the mended transport
    server = EmbeddedRedis(appendonly=True).start()
    try:
        yield server
    finally:
        transport.RESCUED.take()  # whatever a failed test left in this process
        server.close()


def _queue() -> kombu.Queue:
    name = f"rescue-{uuid.uuid4().hex[:8]}"
    return kombu.Queue(name, kombu.Exchange(name), routing_key=name)


def _publish(url: str, queue: kombu.Queue, task_id: str) -> None:
    with kombu.Connection(url) as connection:
        connection.Producer().publish(
            {"task": task_id},
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            serializer="json",
            headers={"id": task_id},
        )


def _consume(
    url: str, queue: kombu.Queue, received: list[kombu.Message], declare: bool = True
) -> None:
    """One message delivered on ``queue``, acknowledged (the channel still open); without
    ``declare`` the queue is not declared again (a write)."""

    def handle(_: Any, message: kombu.Message) -> None:
        received.append(message)
        message.ack()

    with (
        kombu.Connection(url) as connection,
        connection.Consumer(queue, callbacks=[handle], accept=["json"], auto_declare=declare),
    ):
        connection.drain_events(timeout=10)


def _take_as_redis_restarts(
    broker: EmbeddedRedis, queue: kombu.Queue, monkeypatch: pytest.MonkeyPatch
) -> list[kombu.Message]:
    """One message taken by BRPOP, Redis stopped before its unacked record is written."""
    record = kombu_redis.QoS.append
    stopped: list[bool] = []

    def redis_stops_before_the_record(qos: Any, message: Any, delivery_tag: Any) -> None:
        if not stopped:
            broker.stop()  # SIGTERM: the append-only file keeps the pop
            stopped.append(True)
        record(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", redis_stops_before_the_record)
    received: list[kombu.Message] = []
    with pytest.raises((redis.ConnectionError, OSError)):
        _consume(broker.url, queue, received)
    monkeypatch.setattr(kombu_redis.QoS, "append", record)
    assert stopped and received == []
    return received


def test_a_message_taken_as_redis_restarts_goes_back_on_its_queue(
    broker: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, task_id = _queue(), f"task-{uuid.uuid4().hex[:8]}"
    _publish(broker.url, queue, task_id)
    received = _take_as_redis_restarts(broker, queue, monkeypatch)
    assert transport.RESCUED.task_ids() == [task_id]  # neither run nor recorded: held here

    broker.start()
    client = redis.Redis.from_url(broker.url)
    try:
        # Redis came back without it: not on the queue, not unacknowledged.
        assert client.llen(queue.name) == 0
        assert not any(task_id.encode() in v for v in client.hvals("unacked"))
        _consume(broker.url, queue, received)
        assert [m.payload for m in received] == [{"task": task_id}]
        assert received[0].headers["id"] == task_id
        assert received[0].delivery_info["redelivered"] is True
        assert len(transport.RESCUED) == 0
        assert client.lrange(queue.name, 0, -1) == [] and client.hlen("unacked") == 0
    finally:
        client.close()


def test_a_message_taken_while_redis_refuses_writes_goes_back_once_it_takes_them(
    broker: EmbeddedRedis,
) -> None:
    """Out of memory (noeviction), Redis still pops (BRPOP takes no memory) and refuses
    the record (HSET does): kombu lost the message, and the refusal, an error reply, ended
    the worker. Now it is kept, the consumer sees a connection error (and connects
    again), the put-back is refused too and keeps it, until Redis takes writes again."""
    queue, task_id = _queue(), f"task-{uuid.uuid4().hex[:8]}"
    _publish(broker.url, queue, task_id)
    client = redis.Redis.from_url(broker.url)
    received: list[kombu.Message] = []
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
        with pytest.raises(redis.ConnectionError, match=r"refused a write: .*maxmemory"):
            _consume(broker.url, queue, received, declare=False)
        assert received == [] and client.llen(queue.name) == 0  # popped, not recorded
        assert transport.RESCUED.task_ids() == [task_id]
        with pytest.raises(redis.ConnectionError, match=r"refused a write: .*maxmemory"):
            _consume(broker.url, queue, received, declare=False)  # put-back refused: kept
        assert transport.RESCUED.task_ids() == [task_id]

        client.config_set("maxmemory", "0")
        _consume(broker.url, queue, received)
        assert [m.headers["id"] for m in received] == [task_id]
        assert received[0].delivery_info["redelivered"] is True
        assert len(transport.RESCUED) == 0
        assert client.llen(queue.name) == 0 and client.hlen("unacked") == 0
    finally:
        client.config_set("maxmemory", "0")
        client.close()


def test_a_worker_stopping_while_redis_is_away_names_what_it_loses_or_puts_it_back(
    broker: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue, task_id = _queue(), f"task-{uuid.uuid4().hex[:8]}"
    _publish(broker.url, queue, task_id)
    _take_as_redis_restarts(broker, queue, monkeypatch)
    app = SimpleNamespace(connection_for_write=lambda: kombu.Connection(broker.url))

    with caplog.at_level(logging.ERROR, logger="intent.worker"):
        transport.put_back_at_shutdown(app)  # Redis still away
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and task_id in errors[0], errors
    assert "could not put back 1 message" in errors[0] and transport.RESCUED.where() in errors[0]
    assert transport.RESCUED.task_ids() == [task_id]

    broker.start()
    transport.put_back_at_shutdown(app)  # Redis back: on its queue again
    assert len(transport.RESCUED) == 0
    client = redis.Redis.from_url(broker.url)
    try:
        wait_until(lambda: client.llen(queue.name) == 1, 5, "the message on its queue")
        assert task_id.encode() in client.lindex(queue.name, -1)  # the head: taken next
    finally:
        client.close()


def test_a_stopping_worker_puts_back_what_it_holds() -> None:
    """The worker's shutdown runs the put-back above (tasks/signals.py)."""
    from celery import signals

    import tasks.app  # noqa: F401  # connects the worker's signals
    from tasks.signals import _put_back_rescued

    assert _put_back_rescued in [ref() for _, ref in signals.worker_shutdown.receivers]


def test_a_message_held_by_a_worker_killed_meanwhile_goes_back_from_its_disk(
    broker: EmbeddedRedis,
) -> None:
    """The worker took the message as the broker refused writes, then was SIGKILLed
    while it waited for them: the file it kept the message in lets the next consumer on
    the host (this process here) put it back. Without it, the message was lost."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    queue, task_id = _queue(), f"task-{uuid.uuid4().hex[:8]}"
    _publish(broker.url, queue, task_id)
    client = redis.Redis.from_url(broker.url)
    spool = Path(os.environ["INTENT_RESCUE_DIR"])
    worker = (
        "import os, signal, sys, kombu\n"
        "from tasks import transport\n"
        "transport.install()\n"
        "url, name = sys.argv[1:3]\n"
        "queue = kombu.Queue(name, kombu.Exchange(name), routing_key=name)\n"
        "try:\n"
        "    with kombu.Connection(url) as c, c.Consumer(queue, accept=['json'],"
        " auto_declare=False):\n"
        "        c.drain_events(timeout=10)\n"
        "except Exception as exc:\n"
        "    print('held', transport.RESCUED.task_ids(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    received: list[kombu.Message] = []
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
        done = subprocess.run(
            [sys.executable, "-c", worker, broker.url, queue.name],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert f"held ['{task_id}']" in done.stdout, done.stderr[-2000:]
        assert client.llen(queue.name) == 0 and client.hlen("unacked") == 0  # nowhere in Redis
        kept = [p for p in spool.rglob("*.json.*") if task_id in p.read_text()]
        assert len(kept) == 1, kept  # on the killed worker's disk

        client.config_set("maxmemory", "0")
        _consume(broker.url, queue, received)
        assert [m.headers["id"] for m in received] == [task_id]
        assert received[0].delivery_info["redelivered"] is True
        assert not kept[0].exists() and not any(
            task_id in p.read_text() for p in spool.rglob("*.json.*")
        )
    finally:
        client.config_set("maxmemory", "0")
        client.close()
