"""The dead-letter stream: events a consumer gave up on, with why, and their requeueing.

A dead letter keeps the original entry's fields as they were and adds ``dead_*`` fields
(reason, error, group, consumer, deliveries, original id, time). Requeueing adds the
original fields back to ``intent:events`` as a new entry and deletes the dead letter.
Both moves are one Lua script each over keys that share a hash tag (one Cluster slot).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from intent import scripts
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
    """Read, add and requeue ``{intent:events}:dead`` (a client with decode_responses and
    encoding_errors="surrogateescape")."""

    def __init__(self, client: redis.Redis, keys: Keys, maxlen: int):
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        # Registered once: each call is then an EVALSHA (EVAL when the server lost it).
        self._dead_letter = scripts.register(client, "dead_letter")
        self._requeue_dead = scripts.register(client, "requeue_dead")

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
        added = self._requeue(dead_id, dead_id, 1)
        return added[0] if added else None

    def requeue_all(self, batch: int = 100) -> int:
        """Put every dead letter back, oldest first; how many were requeued."""
        total = 0
        while True:
            added = self._requeue("-", "+", batch)
            if not added:
                return total
            total += len(added)

    def _requeue(self, first: str, last: str, count: int) -> builtins.list[str]:
        keys = [self.keys.dead_letters, self.keys.events_stream]
        added = self._requeue_dead(keys=keys, args=[self.maxlen, first, last, count])
        return [a.decode() if isinstance(a, bytes) else str(a) for a in added]

    def add(self, group: str, entry_id: str, letter: Mapping[str, str | bytes]) -> str:
        """Dead-letter pending entry ``entry_id`` of ``group`` (its ``letter`` from
        :func:`dead_letter_fields`) and acknowledge it, in one step."""
        flat: builtins.list[bytes | str | int] = [group, entry_id, self.maxlen]
        for key, value in letter.items():
            flat += [as_bytes(key), as_bytes(value)]
        keys = [self.keys.events_stream, self.keys.dead_letters]
        dead_id = self._dead_letter(keys=keys, args=flat)
        return dead_id.decode() if isinstance(dead_id, bytes) else str(dead_id)


def as_bytes(text: str | bytes) -> bytes:
    """A field as written: undecodable bytes, read as lone surrogates (surrogateescape),
    go back as the bytes they were."""
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
