"""The consumer's stream reader: a connection of its own that pipelines ``[XACK] XREADGROUP``,
so the next batch is requested before the one in hand is handled (the read-ahead).

With several partitions the consumer has a reader per partition stream, each with its own
blocking read outstanding (one stream per command: on a Redis Cluster the partitions are in
different slots), and :func:`next_ready` picks the one whose reply came, in turns.

On a Redis Cluster each reader sends the same raw requests on the connections of the
master serving its stream's slot (``intent.connections.node_pool``), looked up again after
a lost connection or a ``MOVED`` reply (a failover, a resharding): the consumer then
retries as after any lost Redis."""

from __future__ import annotations

import contextlib
import math
import select
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import AskError

from intent import resp
from intent.connections import node_pool
from intent.events.entries import StreamEntry, entries_from_reply

Clock = Callable[[], float]


class StreamReader:
    """A connection that only reads: ``[XACK] XREADGROUP`` requests, at most one outstanding,
    so a read can be sent before the batch in hand is handled."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        clock: Clock,
        *,
        unblockable: bool = False,
    ):
        self._client, self._stream = client, stream
        # A cluster node's connections, looked up when a connection is made (the slot's
        # master may have changed since); a single server's pool, for good.
        self._routed = resp.plain_pool(client) is None
        self._lost = False  # a routed reader's connection was lost: look up its node anew
        self._pool: redis.ConnectionPool | None = None if self._routed else resp.plain_pool(client)
        # With several readers, a stop wakes the idle ones (CLIENT UNBLOCK) rather than
        # waiting out their BLOCK: each learns its connection's id when it connects.
        self._unblockable = unblockable
        self.client_id: int | None = None
        self._connection: resp.RawConnection | None = None
        self._read = ("XREADGROUP", "GROUP", group, consumer, "COUNT")
        self._streams = ("STREAMS", stream, ">")
        self._ack = ("XACK", stream, group)
        self._clock = clock
        self.outstanding = False
        self.sent_at = 0.0
        self._acks_in_flight: list[str] = []
        self._ack_replied = False  # the XACK's reply was read (by ready())
        self._ack_error: redis.ResponseError | None = None

    def _pool_now(self) -> redis.ConnectionPool:
        if self._pool is None:
            # After a lost connection or a MOVED the cluster is asked where its slots are
            # now: a failover's new master is found by this reader alone.
            self._pool = node_pool(self._client, self._stream, refresh=self._lost)
            self._lost = False
        return self._pool

    def send(self, acks: list[str], count: int, block_ms: int) -> None:
        if self._connection is None:
            self._connection = resp.RawConnection.checked_out(self._pool_now())
            if self._unblockable:
                self._learn_id(self._connection)
        connection = self._connection
        commands: list[tuple[str | int, ...]] = []
        if acks:
            commands.append((*self._ack, *acks))
        commands.append((*self._read, count, "BLOCK", block_ms, *self._streams))
        self._acks_in_flight = acks
        self._ack_replied = False
        self._ack_error = None
        try:
            connection.send_commands(commands)
        except BaseException:
            self._drop()
            raise
        self.outstanding = True
        self.sent_at = self._clock()

    def receive(self) -> list[StreamEntry]:
        """The entries of the outstanding read (waits for them; at most BLOCK)."""
        connection = self._connection
        assert connection is not None and self.outstanding
        reply: Any = None
        try:
            # Both replies are read even when the first is an error: the connection must
            # stay in step with its requests.
            if self._acks_in_flight and not self._ack_replied:
                self._read_ack(connection)
            error = self._ack_error
            try:
                reply = connection.read()
            except redis.ResponseError as exc:
                error = exc
        except BaseException:
            self._drop()
            raise
        if self._routed and isinstance(error, AskError):  # MovedError is an AskError
            # The slot is served elsewhere now: the reply of a node that lost it. Its acks'
            # outcome is unknown, so the reset that follows returns them to be sent again.
            self._drop()
            raise redis.ConnectionError(f"the stream's slot moved: {error}") from error
        self.outstanding = False
        self._acks_in_flight = []
        self._ack_error = None
        if error is not None:
            raise error
        return entries_from_reply(reply)

    def _learn_id(self, connection: resp.RawConnection) -> None:
        self.client_id = None
        try:
            connection.send_commands([("CLIENT", "ID")])
            self.client_id = int(connection.read())
        except redis.ResponseError:  # CLIENT renamed or refused: a stop waits for BLOCK
            pass
        except BaseException:
            self._drop()
            raise

    def _read_ack(self, connection: resp.RawConnection) -> None:
        try:
            connection.read()
        except redis.ResponseError as exc:
            self._ack_error = exc
        self._ack_replied = True

    def ready(self) -> bool:
        """Whether the outstanding read's reply has come (or begun to). The XACK's reply,
        which comes at once, is read first: only the XREADGROUP's says entries are there."""
        connection = self._connection
        if connection is None or not self.outstanding:
            return False
        try:
            if self._acks_in_flight and not self._ack_replied:
                if not connection.can_read():
                    return False
                self._read_ack(connection)
            return connection.can_read()
        except (redis.ConnectionError, redis.TimeoutError):
            return True  # receive() raises it, where the consumer handles a lost Redis

    def unblock(self) -> None:
        """End the outstanding read now if it is blocked on an idle stream (its reply is then
        empty), from another connection to the same server; a no-op if it is not blocked."""
        if not self.outstanding or self.client_id is None:
            return
        pool = self._pool_now()
        other = resp.RawConnection.checked_out(pool)
        try:
            other.send_commands([("CLIENT", "UNBLOCK", self.client_id)])
            other.read()
        except redis.ResponseError:
            pass
        except BaseException:
            other.disconnect()
            raise
        other.check_in(pool)

    def fileno(self) -> int:
        assert self._connection is not None
        return self._connection.fileno()

    def _drop(self) -> None:
        self.outstanding = False
        if self._connection is not None:
            self._connection.disconnect()
            if self._routed:  # the next connection goes to the slot's master of then
                self._connection.check_in(self._pool_now())
                self._connection, self._pool, self._lost = None, None, True

    def reset(self) -> list[str]:
        """Drop the connection and any reply still due on it; returns the acks whose outcome
        is unknown (sending them again is harmless)."""
        self._drop()
        unconfirmed, self._acks_in_flight = self._acks_in_flight, []
        return unconfirmed

    def close(self) -> None:
        if self._connection is not None:
            if self.outstanding:
                self.reset()  # a routed reader's connection is checked in by it
            if self._connection is not None:
                self._connection.check_in(self._pool_now())
                self._connection = None


def next_ready(readers: Sequence[StreamReader], start: int, timeout: float) -> int | None:
    """The index of the first reader, from ``start`` on in turn (so no partition waits
    behind a busy one), whose reply has come; waits for one up to ``timeout`` seconds
    (None: none came). Every reader must have a read outstanding."""
    count = len(readers)
    order = [(start + i) % count for i in range(count)]
    for waited in (False, True):
        for index in order:
            if readers[index].ready():
                return index
        if waited:
            return None
        waiting = select.poll()  # not select(): a descriptor above 1023 is fine
        with contextlib.suppress(OSError, ValueError):  # a closed socket: ready() says so
            for index in order:
                waiting.register(readers[index].fileno(), select.POLLIN)
            waiting.poll(max(0, math.ceil(timeout * 1000)))
    return None
