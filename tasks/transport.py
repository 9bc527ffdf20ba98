"""The Redis broker transport, with one kombu defect mended.

When the worker loses its broker connection, Celery closes it, and closing a channel
restores the messages it holds unacknowledged; by then kombu's channel may have no
connection parameters left (``transport.client`` is None), so the restore, or the
rejection of a step left for redelivery, fails with ``AttributeError`` (kombu #970, #582)
instead of a connection error: Celery treats it as unrecoverable and the worker exits on
every Redis restart that finds work in flight. Here that case is the connection error it
is, which Celery and kombu already handle (the messages stay unacknowledged in Redis and
the visibility sweep brings them back).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        connection = self.connection
        if connection is None or connection.client is None:
            raise redis.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """``redis://`` and ``rediss://`` broker URLs use this transport in this process (the
    URLs themselves, as logs and Flower show them, stay as they are)."""
    from kombu.transport import TRANSPORT_ALIASES

    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
