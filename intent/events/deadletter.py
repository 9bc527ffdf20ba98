"""The dead-letter stream: events a consumer gave up on, with why, and their requeueing.

A dead letter keeps the original entry's fields as they were and adds ``dead_*`` fields
(reason, error, group, consumer, deliveries, original id, time). Requeueing adds the
original fields back to ``intent:events`` as a new entry and deletes the dead letter.
Both moves are one Lua script each over keys that share a hash tag (one Cluster slot).
With several partitions each has its own dead-letter stream, beside its events stream: a
letter is written to, listed from and requeued onto the partition its entry came from.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from intent import scripts
from intent.events.entries import id_order
from intent.keys import Keys
from intent.models import utcnow_iso

# Why an entry was dead-lettered.
FAILED = "failed"  # its handler failed on every delivery
REJECTED = "rejected"  # its handler raised RejectEvent
MALFORMED = "malformed"  # it is not a valid event
UNKNOWN_TYPE = "unknown_type"  # its type is unknown (policy "dead_letter")
ABANDONED = "abandoned"  # delivered max times without an outcome: its consumers kept dying

DEAD_FIELDS = (
    "dead_reason",
    "dead_error",
    "dead_group",
    "dead_consumer",
    "dead_deliveries",
    "dead_original_id",
    "dead_at",
)
Rows = list[tuple[str, dict[str, str]]]  # XRANGE's reply, decoded
_MAX_ERROR = 2000  # characters of an error message kept


def dead_letter_fields(
    fields: Mapping[str, str],
    *,
    reason: str,
    error: str,
    group: str,
    consumer: str,
    deliveries: int,
    original_id: str,
) -> dict[str, str]:
    """The dead letter of one entry: its fields unchanged, then ours (ours win a clash,
    which only a malformed entry can cause)."""
    return {
        **fields,
        "dead_reason": reason,
        "dead_error": error[:_MAX_ERROR],
        "dead_group": group,
        "dead_consumer": consumer,
        "dead_deliveries": str(deliveries),
        "dead_original_id": original_id,
        "dead_at": utcnow_iso(),
    }


@dataclass(frozen=True)
class DeadLetter:
    dead_id: str  # the entry's id in the dead-letter stream
    original_id: str  # its id in the events stream
    fields: dict[str, str]  # the original entry's fields
    reason: str
    error: str
    group: str
    consumer: str
    deliveries: int
    dead_at: str
    partition: int = 0  # the partition of its events stream (and of this dead letter)

    @classmethod
    def from_entry(cls, dead_id: str, entry: Mapping[str, str], partition: int = 0) -> DeadLetter:
        deliveries = entry.get("dead_deliveries", "0")
        return cls(
            dead_id=dead_id,
            original_id=entry.get("dead_original_id", ""),
            fields={k: v for k, v in entry.items() if k not in DEAD_FIELDS},
            reason=entry.get("dead_reason", ""),
            error=entry.get("dead_error", ""),
            group=entry.get("dead_group", ""),
            consumer=entry.get("dead_consumer", ""),
            deliveries=int(deliveries) if deliveries.isdigit() else 0,
            dead_at=entry.get("dead_at", ""),
            partition=partition,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dead_id": self.dead_id,
            "original_id": self.original_id,
            "reason": self.reason,
            "error": self.error,
            "group": self.group,
            "consumer": self.consumer,
            "deliveries": self.deliveries,
            "dead_at": self.dead_at,
            "partition": self.partition,
            "fields": self.fields,
        }


class DeadLetters:
    """Read, add and requeue ``{intent:events}:dead``, or each partition's dead letters (a
    client with decode_responses and encoding_errors="surrogateescape")."""

    def __init__(self, client: redis.Redis, keys: Keys, maxlen: int, partitions: int = 1):
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self.partitions = partitions
        # Registered once: each call is then an EVALSHA (EVAL when the server lost it).
        self._dead_letter = scripts.register(client, "dead_letter")
        self._requeue_dead = scripts.register(client, "requeue_dead")

    def count(self) -> int:
        keys = self.keys
        return sum(
            int(cast(int, self.client.xlen(keys.dead_letter_stream(p))))
            for p in range(self.partitions)
        )

    def list(
        self, count: int = 100, after: str = "-", after_partition: int | None = None
    ) -> builtins.list[DeadLetter]:
        """The oldest ``count`` dead letters after the dead-letter id ``after``; with
        several partitions, merged oldest first by (dead-letter id, partition): each
        partition's ids come from its own stream, so two partitions may hold the same id.
        The next page starts after the last letter of this one: ``after=letter.dead_id,
        after_partition=letter.partition`` (without ``after_partition``: after that id in
        every partition, which skips a letter of the same id on a later partition)."""
        if after_partition is not None and not 0 <= after_partition < self.partitions:
            raise ValueError(
                f"after_partition must be 0 to {self.partitions - 1}, not {after_partition}"
            )
        letters: builtins.list[DeadLetter] = []
        for partition in range(self.partitions):
            if after == "-":
                start = "-"
            elif after_partition is not None and partition > after_partition:
                start = after  # its letter of the same id comes after the cursor's
            else:
                start = f"({after}"
            stream = self.keys.dead_letter_stream(partition)
            rows = cast(Rows, self.client.xrange(stream, start, "+", count=count))
            letters += [DeadLetter.from_entry(i, fields, partition) for i, fields in rows]
        if self.partitions > 1:
            letters.sort(key=lambda letter: (id_order(letter.dead_id), letter.partition))
        return letters[:count]

    def get(self, dead_id: str, partition: int = 0) -> DeadLetter | None:
        stream = self.keys.dead_letter_stream(partition)
        rows = cast(Rows, self.client.xrange(stream, dead_id, dead_id))
        return DeadLetter.from_entry(*rows[0], partition) if rows else None

    def requeue(self, dead_id: str, partition: int = 0) -> str | None:
        """Put one dead letter back on its partition's events stream; its new entry id (None:
        no such dead letter). Every consumer group receives it again, as a new entry."""
        added = self._requeue(partition, dead_id, dead_id, 1)
        return added[0] if added else None

    def requeue_all(self, batch: int = 100) -> int:
        """Put every dead letter back, oldest first in each partition; how many were
        requeued."""
        total = 0
        for partition in range(self.partitions):
            while True:
                added = self._requeue(partition, "-", "+", batch)
                if not added:
                    break
                total += len(added)
        return total

    def _requeue(self, partition: int, first: str, last: str, count: int) -> builtins.list[str]:
        keys = [self.keys.dead_letter_stream(partition), self.keys.event_stream(partition)]
        added = self._requeue_dead(keys=keys, args=[self.maxlen, first, last, count])
        return [a.decode() if isinstance(a, bytes) else str(a) for a in added]

    def add(
        self,
        group: str,
        entry_id: str,
        letter: Mapping[str, str | bytes],
        partition: int = 0,
    ) -> str:
        """Dead-letter pending entry ``entry_id`` of ``group`` on ``partition`` (its
        ``letter`` from :func:`dead_letter_fields`) and acknowledge it, in one step."""
        flat: builtins.list[bytes | str | int] = [group, entry_id, self.maxlen]
        for key, value in letter.items():
            flat += [as_bytes(key), as_bytes(value)]
        keys = [self.keys.event_stream(partition), self.keys.dead_letter_stream(partition)]
        dead_id = self._dead_letter(keys=keys, args=flat)
        return dead_id.decode() if isinstance(dead_id, bytes) else str(dead_id)


def as_bytes(text: str | bytes) -> bytes:
    """A field as written: undecodable bytes, read as lone surrogates (surrogateescape),
    go back as the bytes they were."""
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
