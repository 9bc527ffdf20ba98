"""RabbitMQ for the quorum-queue tests: a broker place of the test's own, and this process
put on it with ``INTENT_QUEUE_TYPE=quorum``.

A worker on quorum queues declares Celery's delayed-delivery topology (``celery_delayed_0``
to ``celery_delayed_27`` and ``celery_delayed_delivery``) under fixed names, shared by every
Celery app of the vhost. So the tests run in a virtual host of their own, made with
``rabbitmqctl`` and deleted afterwards with all that is in it. Where ``rabbitmqctl`` cannot
make one (a broker on another host), they run in the URL's vhost and delete afterwards
only what they made: their own queues and exchanges, and the delayed-delivery topology if
it was not there before (its queues only when empty).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

from kombu import Connection
from kombu.transport.native_delayed_delivery import (
    CELERY_DELAYED_DELIVERY_EXCHANGE,
    MAX_LEVEL,
    level_name,
)

from tests.integration.test_pipeline_amqp import broker

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _with_vhost(url: str, vhost: str) -> str:
    return urlsplit(url)._replace(path="/" + quote(vhost, safe="")).geturl()


def _exists(url: str, exchange: str) -> bool:
    with Connection(url, connect_timeout=5) as conn:
        try:
            conn.channel().exchange_declare(exchange, "topic", passive=True)
        except conn.channel_errors:
            return False
        return True


def delayed_delivery_topology() -> tuple[list[str], list[str]]:
    """The queues and exchanges of Celery's native delayed delivery."""
    levels = [level_name(level) for level in range(MAX_LEVEL + 1)]
    return levels, [*levels, CELERY_DELAYED_DELIVERY_EXCHANGE]


@contextlib.contextmanager
def own_place(url: str, names: list[str]) -> Iterator[str]:
    """The broker URL to run on, and everything made there undone afterwards: a private
    vhost when ``rabbitmqctl`` can make one, else the URL's vhost, from which ``names``
    (queues and exchanges of the run) and a delayed-delivery topology the run made go."""
    parts = urlsplit(url)
    vhost = f"intent-test-{uuid.uuid4().hex[:12]}"
    if (
        parts.hostname in LOOPBACK
        and shutil.which("rabbitmqctl")
        and _rabbitmqctl("add_vhost", vhost).returncode == 0
    ):
        try:
            user = parts.username or "guest"
            done = _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            assert done.returncode == 0, done.stderr
            yield _with_vhost(url, vhost)
        finally:
            _rabbitmqctl("delete_vhost", vhost)
        return
    topology_was_there = _exists(url, CELERY_DELAYED_DELIVERY_EXCHANGE)
    try:
        yield url
    finally:
        with Connection(url, connect_timeout=5) as conn:
            channel = conn.default_channel
            for name in names:
                channel.queue_delete(name)
                channel.exchange_delete(name)
            if not topology_was_there:
                queues, exchanges = delayed_delivery_topology()
                for queue in queues:  # quorum queues have no if-empty delete: looked at first
                    with contextlib.suppress(*conn.channel_errors):
                        _, ready, _ = conn.channel().queue_declare(queue, passive=True)
                        if ready == 0:
                            conn.channel().queue_delete(queue)
                for exchange in exchanges:
                    conn.channel().exchange_delete(exchange)


def quorum_broker(url: str, queue: str) -> contextlib.AbstractContextManager[None]:
    """This process (settings, Celery app) and the workers started inside on ``url``, with
    ``queue`` as the only queue, a quorum queue; everything as it was afterwards."""
    return broker(url, queue, queue_type="quorum")
