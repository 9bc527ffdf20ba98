"""Raw RESP over redis-py's connections: the only module that touches redis-py internals.

Two hot paths go around redis-py's per-command machinery (pool checkout with a readiness
poll, the retry wrapper, observability hooks), which costs more CPU than the round trip on
a small machine: the breaker's EVALSHA calls (``intent.breaker``) and the event consumer's
pipelined ``[XACK] XREADGROUP`` reads (``intent.events.reader``). What they use of redis-py
beneath its public API (``ConnectionPool.connection_class``/``connection_kwargs``/
``get_connection``/``release``, ``Connection.pack_commands``/``send_packed_command``/
``read_response``/``disconnect``) is used here alone, so a redis-py release that changes it
breaks this module and its tests (``tests/unit/test_resp.py``,
``tests/integration/test_resp.py``), nowhere else; ``pyproject.toml`` bounds redis to the
versions these tests passed on.

Replies are parsed by the connection's own parser (hiredis when installed), decoded as the
client that owns the pool decodes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.connection import Connection
from redis.sentinel import SentinelManagedConnection

Command = Sequence[str | int | bytes]

# What a server answers a blocked command (XREADGROUP BLOCK) with when it stops being a
# master (a Sentinel demoted it after a failover): the connection is to the wrong server.
DEMOTED = "instance state changed"


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def encode(value: Any) -> bytes:
    """An argument as Redis receives it: bytes as they are, anything else as its ``str``."""
    return value if isinstance(value, bytes) else str(value).encode()


def evalsha_head(sha: str, keys: Sequence[str], arg_count: int) -> bytes:
    """The start of an ``EVALSHA sha len(keys) *keys *args`` request, up to its arguments:
    each of the ``arg_count`` arguments follows as a :func:`bulk`."""
    head = [b"EVALSHA", sha.encode(), str(len(keys)).encode(), *(k.encode() for k in keys)]
    return b"*%d\r\n" % (len(head) + arg_count) + b"".join(bulk(part) for part in head)


def request(*parts: Any) -> bytes:
    """One whole command in RESP (for a request that is not built from a cached head)."""
    return b"*%d\r\n" % len(parts) + b"".join(bulk(encode(part)) for part in parts)


def plain_pool(client: Any) -> redis.ConnectionPool | None:
    """The client's connection pool when raw RESP can go around redis-py on it (a plain
    ``ConnectionPool``); None for others (Redis Cluster, stand-ins): those go through
    redis-py's commands."""
    pool = getattr(client, "connection_pool", None)
    return pool if isinstance(pool, redis.ConnectionPool) else None


def socket_timeout(client: Any) -> float | None:
    """The reply timeout the client's connections are made with (None: none, or unknown);
    a cluster client's (``get_connection_kwargs``) too."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:
        options = getattr(client, "get_connection_kwargs", None)
        kwargs = options() if callable(options) else None
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if timeout is not None else None


class RawConnection:
    """One connection to Redis used directly: requests go out as RESP bytes, replies come
    back one by one, in order. A reply that is a Redis error raises ``redis.ResponseError``
    (the reply was read whole: the connection is still in step); anything else raised means
    the connection's state is unknown, and the caller drops it (:meth:`disconnect`)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection):
        self._connection = connection

    @classmethod
    def outside(cls, pool: redis.ConnectionPool) -> RawConnection:
        """A new connection with the pool's settings (address, timeouts, parser, decoding),
        never handed to redis-py: its owner keeps and closes it. Connects on first send."""
        return cls(pool.connection_class(**pool.connection_kwargs))

    @classmethod
    def checked_out(cls, pool: redis.ConnectionPool) -> RawConnection:
        """A connection taken from the pool (connected and checked), until
        :meth:`check_in` gives it back."""
        return cls(pool.get_connection())

    def check_in(self, pool: redis.ConnectionPool) -> None:
        """Back to the pool it was :meth:`checked_out` of (in step: no reply pending)."""
        pool.release(self._connection)

    def send(self, request: bytes) -> None:
        """``request`` (whole RESP commands), as it is: no health check, so a connection
        that went stale raises ``redis.ConnectionError`` here or at :meth:`read`."""
        self._connected().send_packed_command([request], check_health=False)

    def send_commands(self, commands: Sequence[Command]) -> None:
        """Several commands in one write (a pipeline without MULTI); a connection idle past
        the client's ``health_check_interval`` is pinged first."""
        connection = self._connected()
        connection.send_packed_command(connection.pack_commands(commands))

    def _connected(self) -> Connection:
        """The connection, a Sentinel-managed one connected as its pool connects it: its
        ``connect()`` asks the Sentinels for the master, where ``send_packed_command``
        alone would dial the address it last had (the old master after a failover), or
        redis-py's default ``localhost:6379`` if it never connected."""
        connection = self._connection
        if isinstance(connection, SentinelManagedConnection) and connection._sock is None:
            connection.connect()
        return connection

    def read(self) -> Any:
        """The next reply (blocks up to the socket timeout). A blocked read the server
        ended because it was demoted to a replica is a ``redis.ConnectionError`` (the
        connection is dropped: a Sentinel-managed one asks for the new master when it
        connects again), as redis-py makes a ``READONLY`` reply on such a connection."""
        try:
            return self._connection.read_response()
        except redis.ResponseError as exc:
            if DEMOTED not in str(exc):
                raise
            self._connection.disconnect()
            raise redis.ConnectionError(f"the server is no longer the master: {exc}") from exc

    def can_read(self) -> bool:
        """Whether a reply (or part of one) is there to read, without waiting."""
        return bool(self._connection.can_read(0))

    def fileno(self) -> int:
        """The socket's descriptor, to wait on several connections at once (select)."""
        sock = self._connection._sock
        assert sock is not None, "not connected"
        return sock.fileno()

    def disconnect(self) -> None:
        """Close the socket; replies still due on it are lost."""
        self._connection.disconnect()
