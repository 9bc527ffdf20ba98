"""The consumer's stream reader: a connection of its own that pipelines ``[XACK] XREADGROUP``,
so the next batch is requested before the one in hand is handled (the read-ahead).

On a client without a plain connection pool (a Redis Cluster, see ``intent.resp.plain_pool``)
the same requests go through redis-py's commands, which follow the stream's slot to its
node: sent when the entries are asked for (no read-ahead), with the same replies and
errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from intent import resp
from intent.events.entries import StreamEntry, entries_from_reply

Clock = Callable[[], float]


class StreamReader:
    """A connection that only reads: ``[XACK] XREADGROUP`` requests, at most one outstanding,
    so a read can be sent before the batch in hand is handled."""

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str, clock: Clock):
        self._client = client
        self._pool = resp.plain_pool(client)  # None: through redis-py (a cluster)
        self._stream, self._group, self._consumer = stream, group, consumer
        self._count_block = (0, 0)
        self._connection: resp.RawConnection | None = None
        self._read = ("XREADGROUP", "GROUP", group, consumer, "COUNT")
        self._streams = ("STREAMS", stream, ">")
        self._ack = ("XACK", stream, group)
        self._clock = clock
        self.outstanding = False
        self.sent_at = 0.0
        self._acks_in_flight: list[str] = []

    def send(self, acks: list[str], count: int, block_ms: int) -> None:
        if self._pool is None:  # sent by receive()
            self._acks_in_flight = acks
            self._count_block = (count, block_ms)
            self.outstanding = True
            self.sent_at = self._clock()
            return
        if self._connection is None:
            self._connection = resp.RawConnection.checked_out(self._pool)
        connection = self._connection
        commands: list[tuple[str | int, ...]] = []
        if acks:
            commands.append((*self._ack, *acks))
        commands.append((*self._read, count, "BLOCK", block_ms, *self._streams))
        self._acks_in_flight = acks
        try:
            connection.send_commands(commands)
        except BaseException:
            self._drop()
            raise
        self.outstanding = True
        self.sent_at = self._clock()

    def receive(self) -> list[StreamEntry]:
        """The entries of the outstanding read (waits for them; at most BLOCK)."""
        if self._pool is None:
            return self._receive_through_redis_py()
        connection = self._connection
        assert connection is not None and self.outstanding
        error: redis.ResponseError | None = None
        reply: Any = None
        try:
            # Both replies are read even when the first is an error: the connection must
            # stay in step with its requests.
            if self._acks_in_flight:
                try:
                    connection.read()
                except redis.ResponseError as exc:
                    error = exc
            try:
                reply = connection.read()
            except redis.ResponseError as exc:
                error = exc
        except BaseException:
            self._drop()
            raise
        self.outstanding = False
        self._acks_in_flight = []
        if error is not None:
            raise error
        return entries_from_reply(reply)

    def _receive_through_redis_py(self) -> list[StreamEntry]:
        assert self.outstanding
        error: redis.ResponseError | None = None
        count, block_ms = self._count_block
        try:
            if self._acks_in_flight:
                try:
                    self._client.xack(self._stream, self._group, *self._acks_in_flight)
                except redis.ResponseError as exc:
                    error = exc  # the read is made all the same, as on the raw path
            reply: Any = self._client.xreadgroup(
                self._group, self._consumer, {self._stream: ">"}, count=count, block=block_ms
            )
        except redis.ResponseError as exc:
            error = exc
        except BaseException:
            self.outstanding = False  # the acks' outcome is unknown: reset() returns them
            raise
        self.outstanding = False
        self._acks_in_flight = []
        if error is not None:
            raise error
        # redis-py's parsed reply: [[stream, [(id, {field: value} or None), ...]]]
        return [(entry_id, dict(fields or {})) for entry_id, fields in (reply or [[0, []]])[0][1]]

    def _drop(self) -> None:
        self.outstanding = False
        if self._connection is not None:
            self._connection.disconnect()

    def reset(self) -> list[str]:
        """Drop the connection and any reply still due on it; returns the acks whose outcome
        is unknown (sending them again is harmless)."""
        self._drop()
        unconfirmed, self._acks_in_flight = self._acks_in_flight, []
        return unconfirmed

    def close(self) -> None:
        if self._connection is not None and self._pool is not None:
            if self.outstanding:
                self.reset()
            self._connection.check_in(self._pool)
            self._connection = None
        elif self.outstanding:
            self.reset()
