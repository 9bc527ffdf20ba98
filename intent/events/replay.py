"""Replay: deliver a consumer group the events after a given id again (XGROUP SETID), on
each partition of the bus."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

import redis

from intent.errors import ReplayError
from intent.events.entries import id_order
from intent.keys import Keys

_STREAM_ID = re.compile(r"\d+(-\d+)?")


@dataclass(frozen=True)
class ReplayResult:
    group: str
    from_id: str
    previous_last_id: str  # where the group was
    events: int  # entries after from_id, up to where the group was: delivered again
    partitions: int = 1  # partitions rewound (the others had delivered nothing after from_id)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def group_info(
    client: redis.Redis, keys: Keys, group: str, partition: int = 0
) -> dict[str, object] | None:
    try:
        groups = cast(list[dict[str, Any]], client.xinfo_groups(keys.event_stream(partition)))
    except redis.ResponseError:  # no such stream
        return None
    for info in groups:
        if _text(info["name"]) == group:
            return dict(info)
    return None


def replay(
    client: redis.Redis, keys: Keys, group: str, from_id: str, partitions: int = 1
) -> ReplayResult:
    """Rewind ``group`` so its consumers receive every entry after ``from_id`` again.

    Only backwards: an id ahead of the group's last delivered entry would skip events. The
    group's pending entries stay pending (a consumer reading them again takes them over).
    Entries trimmed from the stream (MAXLEN) cannot be replayed.

    With several partitions, a stream id is a time (milliseconds-sequence) and the group is
    rewound to it on each partition, one command per partition: a partition whose group has
    delivered nothing after ``from_id`` is left as it is (it has nothing to deliver again);
    the id must be behind the group on one partition at least.
    """
    if not _STREAM_ID.fullmatch(from_id):
        raise ReplayError(f"--from {from_id!r} is not a stream id (e.g. 1700000000000-0 or 0)")
    lasts: dict[int, str] = {}
    for partition in range(partitions):
        info = group_info(client, keys, group, partition)
        if info is None:
            raise ReplayError(f"no consumer group {group!r} on {keys.event_stream(partition)}")
        lasts[partition] = _text(info["last-delivered-id"])
    behind = {p: last for p, last in lasts.items() if id_order(from_id) <= id_order(last)}
    if not behind:
        last = max(lasts.values(), key=id_order)
        raise ReplayError(
            f"{from_id} is after the group's last delivered entry {last}: "
            "a replay only goes back (it would skip events)"
        )
    events = 0
    for partition, last in behind.items():
        stream = keys.event_stream(partition)
        cursor = f"({from_id}"
        while True:
            rows = cast(list[Any], client.xrange(stream, cursor, last, count=1000))
            events += len(rows)
            if len(rows) < 1000:
                break
            cursor = "(" + _text(rows[-1][0])
        client.xgroup_setid(stream, group, from_id)
    return ReplayResult(
        group=group,
        from_id=from_id,
        previous_last_id=max(lasts.values(), key=id_order),
        events=events,
        partitions=len(behind),
    )
