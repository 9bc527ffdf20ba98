"""Which partition of the event bus an event goes to, and how a partition is named to users.

An event's partition is the CRC-32 (zlib's, of the UTF-8 bytes) of its context id, modulo
the number of partitions (settings.event_partitions): stable across processes, hosts and
Python versions (unlike ``hash()``), and cheap. All the events of one context go to one
partition, in the order they were published. An event with no context id (none the
pipeline publishes) is placed by its request id instead.

Dedup of published ids is per partition (the ``seen`` marks share the partition's slot),
and that is enough: an event id derives from its request id and type, a request id names
one analysis (claimed at intake) of one context, so every publish of an id, a retried or
redelivered emit step included, goes to the same partition and finds its mark there.
"""

from __future__ import annotations

import re
import zlib

from intent.models import Event

_REF = re.compile(r"(?:(\d{1,3})/)?(\d+(?:-\d+)?)")


def partition_of(key: str, partitions: int) -> int:
    """The partition of a context id (or any routing key) among ``partitions``."""
    if partitions <= 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % partitions


def event_partition(event: Event, partitions: int) -> int:
    """The partition ``event`` goes to: its context's."""
    if partitions <= 1:
        return 0
    context_id = event.data.get("context_id")
    key = context_id if isinstance(context_id, str) and context_id else event.request_id
    return partition_of(key, partitions)


def entry_ref(partition: int, entry_id: str, partitions: int) -> str:
    """How an entry of a partition is shown to users: its stream id with one partition
    (unchanged from the single stream), ``P/ID`` with several (ids repeat across streams)."""
    return entry_id if partitions <= 1 else f"{partition}/{entry_id}"


def parse_ref(ref: str, partitions: int) -> tuple[int, str]:
    """``P/ID`` (or a bare ``ID``: partition 0) back to its partition and stream id; raises
    ValueError naming what is wrong."""
    match = _REF.fullmatch(ref)
    if match is None:
        raise ValueError(f"{ref!r} is not an entry id (ID, or P/ID with partitions)")
    partition = int(match.group(1) or 0)
    if partition >= partitions:
        raise ValueError(
            f"{ref!r}: partition {partition} does not exist (INTENT_EVENT_PARTITIONS={partitions})"
        )
    return partition, match.group(2)
