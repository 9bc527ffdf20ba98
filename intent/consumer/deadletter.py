"""The dead-letter stream: events a consumer gave up on, with why, and their requeueing.

A dead letter keeps the original entry's fields as they were and adds ``dead_*`` fields
(reason, error, group, consumer, deliveries, original id, time). Requeueing adds the
original fields back to ``intent:events`` as a new entry and deletes the dead letter.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

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

    @classmethod
    def from_entry(cls, dead_id: str, entry: Mapping[str, str]) -> DeadLetter:
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
            "fields": self.fields,
        }


class DeadLetters:
    """Read and requeue ``intent:events:dead`` (needs a client with decode_responses)."""

    def __init__(self, client: redis.Redis, keys: Keys, maxlen: int):
        self.client = client
        self.keys = keys
        self.maxlen = maxlen

    def count(self) -> int:
        return int(cast(int, self.client.xlen(self.keys.dead_letters)))

    def list(self, count: int = 100, after: str = "-") -> builtins.list[DeadLetter]:
        """The oldest ``count`` dead letters (after the dead-letter id ``after``)."""
        start = after if after == "-" else f"({after}"
        rows = cast(Rows, self.client.xrange(self.keys.dead_letters, start, "+", count=count))
        return [DeadLetter.from_entry(dead_id, fields) for dead_id, fields in rows]

    def get(self, dead_id: str) -> DeadLetter | None:
        rows = cast(Rows, self.client.xrange(self.keys.dead_letters, dead_id, dead_id))
        return DeadLetter.from_entry(*rows[0]) if rows else None

    def requeue(self, dead_id: str) -> str | None:
        """Put one dead letter back on the events stream; its new entry id (None: no such
        dead letter). Every consumer group receives it again, as a new entry."""
        added = self._requeue_batch(
            lambda pipe: pipe.xrange(self.keys.dead_letters, dead_id, dead_id)
        )
        return added[0] if added else None

    def requeue_all(self, batch: int = 100) -> int:
        """Put every dead letter back, oldest first; how many were requeued."""
        total = 0
        while True:
            added = self._requeue_batch(
                lambda pipe: pipe.xrange(self.keys.dead_letters, "-", "+", count=batch)
            )
            if not added:
                return total
            total += len(added)

    def _requeue_batch(self, read: Callable[[redis.client.Pipeline], object]) -> builtins.list[str]:
        # WATCH the dead stream: two operators requeueing the same letters at once must not
        # add them twice. The XADDs and XDELs then go in one MULTI/EXEC.
        def move(pipe: redis.client.Pipeline) -> None:
            rows = cast(Rows, read(pipe))
            pipe.multi()
            for _, entry in rows:
                fields: dict[Any, Any] = {k: v for k, v in entry.items() if k not in DEAD_FIELDS}
                pipe.xadd(self.keys.events_stream, fields, maxlen=self.maxlen, approximate=True)
            if rows:
                pipe.xdel(self.keys.dead_letters, *(dead_id for dead_id, _ in rows))

        results = cast(builtins.list[object], self.client.transaction(move, self.keys.dead_letters))
        if not results:
            return []
        return [str(new_id) for new_id in results[:-1]]
