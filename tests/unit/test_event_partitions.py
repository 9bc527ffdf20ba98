"""Partitions of the event bus without Redis: the choice of partition, the keys of each
partition (one Cluster slot each, partition 0 the contract's names), how entries of a
partition are named to users, and the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from redis.crc import key_slot

from intent.events import EventPublisher
from intent.events.partitions import entry_ref, event_partition, parse_ref, partition_of
from intent.keys import Keys
from intent.models import Event, IntentEvent
from intent.settings import SettingsError, load_settings


def make_event(context_id: str | None, request_id: str = "req-1") -> Event:
    data = {} if context_id is None else {"context_id": context_id}
    return Event(
        id=f"evt_{request_id}",
        type=IntentEvent.CONTEXT_CHANGED,
        pattern_id="checkout",
        data=data,
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=request_id,
    )


def test_one_partition_is_the_contracts_single_stream_byte_for_byte() -> None:
    keys = Keys()
    assert keys.events_stream == keys.event_stream(0) == "intent:events"
    assert keys.event_seen("evt_1") == keys.event_seen("evt_1", 0) == "{intent:events}:seen:evt_1"
    assert keys.dead_letters == keys.dead_letter_stream(0) == "{intent:events}:dead"
    assert partition_of("any-context", 1) == 0


def test_each_partitions_keys_share_one_slot_of_its_own() -> None:
    keys = Keys("svc.eu-1:")
    slots = []
    for partition in range(4):
        group = [
            keys.event_stream(partition),
            keys.event_seen("evt_1", partition),
            keys.dead_letter_stream(partition),
        ]
        assert len({key_slot(k.encode()) for k in group}) == 1, group
        slots.append(key_slot(group[0].encode()))
    assert keys.event_stream(3) == "svc.eu-1:events:3"
    assert len(set(slots)) == 4  # distinct slots: the partitions can sit on distinct nodes


def test_a_context_always_goes_to_the_same_partition_in_any_process() -> None:
    contexts = [f"ctx-{i}" for i in range(200)]
    here = [partition_of(c, 7) for c in contexts]
    # Another interpreter with another hash seed computes the same partitions.
    code = (
        "from intent.events.partitions import partition_of;"
        "print([partition_of(f'ctx-{i}', 7) for i in range(200)])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == str(here)
    assert all(0 <= p < 7 for p in here)


def test_contexts_spread_over_the_partitions() -> None:
    counts = Counter(partition_of(f"context-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 800  # 1000 each on average


def test_an_event_goes_to_its_contexts_partition_or_else_its_requests() -> None:
    assert event_partition(make_event("ctx-9"), 5) == partition_of("ctx-9", 5)
    assert event_partition(make_event(None, "req-77"), 5) == partition_of("req-77", 5)
    assert event_partition(make_event("ctx-9"), 1) == 0


def test_entries_are_named_p_slash_id_with_several_partitions() -> None:
    assert entry_ref(0, "1700000000000-0", 1) == "1700000000000-0"
    assert entry_ref(2, "1700000000000-3", 4) == "2/1700000000000-3"
    assert parse_ref("2/1700000000000-3", 4) == (2, "1700000000000-3")
    assert parse_ref("1700000000000-3", 4) == (0, "1700000000000-3")
    with pytest.raises(ValueError, match="partition 4 does not exist"):
        parse_ref("4/1-0", 4)
    with pytest.raises(ValueError, match="not an entry id"):
        parse_ref("x/1-0", 4)


def test_the_setting_defaults_to_one_and_refuses_zero() -> None:
    assert load_settings().event_partitions == 1
    assert load_settings(event_partitions=8).event_partitions == 8
    with pytest.raises(SettingsError, match="INTENT_EVENT_PARTITIONS"):
        load_settings(event_partitions=0)


def test_a_publisher_with_several_partitions_touches_one_partition_per_script() -> None:
    calls: list[list[str]] = []

    class Script:
        def __call__(self, keys: list[str], args: list[object]) -> list[str]:
            calls.append(keys)
            return [f"{len(calls)}-{i}" for i in range(len(keys) - 1)]

    class Client:
        def register_script(self, source: str) -> Script:
            return Script()

    keys = Keys()
    publisher = EventPublisher(Client(), keys, 1000, 60, partitions=4)  # type: ignore[arg-type]
    events = [make_event(f"ctx-{i % 6}", f"req-{i}") for i in range(12)]
    ids = publisher.publish(events)
    assert all(ids) and len(set(ids)) == len(ids)
    for call in calls:
        partition = next(p for p in range(4) if call[0] == keys.event_stream(p))
        assert all(k.startswith(f"{{{keys.event_stream(partition)}}}:seen:") for k in call[1:])
    # Each event's id came back in its own place, from its context's partition's call.
    for event, stream_id in zip(events, ids, strict=True):
        call = calls[int(stream_id.split("-")[0]) - 1]
        assert call[0] == keys.event_stream(event_partition(event, 4))
        assert keys.event_seen(event.id, event_partition(event, 4)) in call
