"""The event bus as one package: its user API, how its modules load, and the Redis Cluster
slot of every key its scripts are given."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

import intent.events
from intent import scripts
from intent.events import (
    DeadLetters,
    Delivery,
    EventHandler,
    EventPublisher,
    Idempotency,
    IntentEvent,
    event_id,
)
from intent.events.handler import _current_delivery
from intent.keys import Keys
from intent.models import Event
from intent.settings import Settings

PACKAGE = Path(intent.events.__file__).parent


# -- the user API -----------------------------------------------------------------------
# What the guide and the README tell users to import, with the module that defines it.
USER_API = {
    "EventPublisher": "intent.events.publisher",
    "build_events": "intent.events.publisher",
    "event_id": "intent.events.publisher",
    "event_from_fields": "intent.events.entries",
    "EventHandler": "intent.events.handler",
    "RejectEvent": "intent.errors",
    "RetryLater": "intent.errors",
    "current_delivery": "intent.events.handler",
    "EventConsumer": "intent.events.consumer",
    "ConsumerStats": "intent.events.consumer",
    "ConsumerConfig": "intent.events.config",
    "DeadLetters": "intent.events.deadletter",
    "DeadLetter": "intent.events.deadletter",
    "replay": "intent.events.replay",
    "ReplayError": "intent.events.replay",
    "Idempotency": "intent.events.idempotency",
    "EventInProgress": "intent.events.idempotency",
    "register_builtin_handlers": "intent.events.builtin",
    "ContextInvalidation": "intent.events.builtin",
    "IntentEvent": "intent.models",
}


@pytest.mark.parametrize(("name", "module"), sorted(USER_API.items()))
def test_the_user_api_is_exported_by_the_package(name: str, module: str) -> None:
    assert name in intent.events.__all__
    exported = getattr(intent.events, name)
    assert exported is getattr(sys.modules[module], name)


def test_every_exported_name_exists() -> None:
    missing = [name for name in intent.events.__all__ if not hasattr(intent.events, name)]
    assert missing == []


def test_the_guides_names_keep_their_shape() -> None:
    # The guide's enum values and method names, as its examples call them.
    assert [e.value for e in IntentEvent] == [
        "pattern_detected",
        "pattern_updated",
        "context_changed",
        "prediction_received",
    ]
    assert callable(EventPublisher.publish_event)
    assert callable(EventHandler.handle_event)
    assert callable(Idempotency.from_runtime)


# -- how the package loads --------------------------------------------------------------
def _bus_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def _imports(tree: ast.AST) -> Iterator[tuple[str, bool]]:
    """Each module imported, and whether at module level."""
    top = {id(node) for node in getattr(tree, "body", [])}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top


@pytest.mark.parametrize("path", _bus_modules(), ids=lambda p: p.name)
def test_the_bus_modules_import_siblings_directly_and_the_wiring_only_when_called(
    path: Path,
) -> None:
    imports = list(_imports(ast.parse(path.read_text())))
    assert imports  # the walk sees the module's imports
    assert [m for m, _ in imports if m == "intent.events"] == []
    assert [m for m, top in imports if top and m == "intent.runtime"] == []


LOAD_ORDERS = [
    ["intent.runtime", "intent.events"],
    ["intent.events", "intent.runtime"],
    *([f"intent.events.{p.stem}"] for p in _bus_modules()),
]
# Each order from nothing of ours loaded (one interpreter: a fresh one per order costs a
# second each); a cycle through the package fails as ImportError.
_LOAD = """
import importlib, json, sys
failed = []
for order in json.loads(sys.argv[1]):
    for name in [m for m in sys.modules if m == "intent" or m.startswith("intent.")]:
        del sys.modules[name]
    try:
        for name in order:
            importlib.import_module(name)
    except ImportError as exc:
        failed.append([order, repr(exc)])
print(json.dumps(failed))
"""


def test_the_bus_loads_in_any_order() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD, json.dumps(LOAD_ORDERS)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == []
    assert len(LOAD_ORDERS) > 10


# -- one Redis Cluster slot per script --------------------------------------------------
BUS_SCRIPTS = ("dead_letter", "requeue_dead", "publish_events", "idempotency_claim")
REPLIES: dict[str, list[Any]] = {
    "dead_letter": [b"9-0"],
    "requeue_dead": [[b"10-0"], [b"11-0", b"12-0"], []],  # requeue_all reads until none
    "publish_events": [[b"1-0", b"", b"2-0"]],
    "idempotency_claim": [[1, 0]],
    "release_if_owner": [1],
}


class RecordingClient:
    """Stands in for redis.Redis: each script it registers records the keys of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self._replies = {name: list(replies) for name, replies in REPLIES.items()}
        self._names = {scripts.script_source(name): name for name in REPLIES}

    def register_script(self, source: str) -> Callable[..., Any]:
        name = self._names[source]

        def call(keys: list[str], args: list[object]) -> Any:
            self.calls.append((name, list(keys)))
            return self._replies[name].pop(0)

        return call

    def set(self, *args: object, **kwargs: object) -> bool:
        return True  # the "done" mark: one key, no script


def _events(count: int) -> list[Event]:
    return [
        Event(
            id=event_id(f"req_{i}", IntentEvent.CONTEXT_CHANGED),
            type=IntentEvent.CONTEXT_CHANGED,
            pattern_id="p",
            data={"context_id": "c"},
            timestamp="2026-01-01T00:00:00+00:00",
            request_id=f"req_{i}",
        )
        for i in range(count)
    ]


def _drive_every_bus_script(client: RecordingClient, keys: Keys) -> None:
    letters = DeadLetters(client, keys, maxlen=1000)  # type: ignore[arg-type]
    letter = {"id": "evt_1", "type": "context_changed", "dead_reason": "failed"}
    assert letters.add("g", "1-0", letter) == "9-0"
    assert letters.requeue("9-0") == "10-0"
    assert letters.requeue_all() == 2
    publisher = EventPublisher(client, keys, maxlen=1000, dedup_ttl=60)  # type: ignore[arg-type]
    assert publisher.publish(_events(3)) == ["1-0", "", "2-0"]
    idempotency = Idempotency(client, keys, ttl=60, lease=1.0)  # type: ignore[arg-type]
    token = _current_delivery.set(Delivery("billing", "c-1"))
    try:
        assert idempotency.run(_events(1)[0], lambda event: None)
    finally:
        _current_delivery.reset(token)


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


# Prefixes INTENT_KEY_PREFIX allows, the default first.
PREFIXES = ["intent:", "svc:", "a.b_c-9:", "x", "events:", "intent:prod.eu-1:"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_key_a_bus_script_receives_is_in_one_cluster_slot(prefix: str) -> None:
    assert Settings(key_prefix=prefix).key_prefix == prefix
    keys = Keys(prefix)
    client = RecordingClient()
    _drive_every_bus_script(client, keys)
    assert {name for name, _ in client.calls} == set(BUS_SCRIPTS)
    for name, called_with in client.calls:
        assert called_with, name
        assert {_slot(k) for k in called_with} == {_slot(called_with[0])}, (name, called_with)
        if name != "idempotency_claim":  # the stream's scripts: in the stream's own slot
            assert keys.events_stream in called_with, name
            assert _slot(called_with[0]) == _slot(keys.events_stream), name
    # Dead-lettering and requeueing move entries between exactly these two streams.
    moves = [k for name, k in client.calls if name in ("dead_letter", "requeue_dead")]
    assert moves[0] == [keys.events_stream, keys.dead_letters]
    assert all(k == [keys.dead_letters, keys.events_stream] for k in moves[1:])


def test_a_key_outside_the_hash_tag_would_be_caught() -> None:
    # The check above can fail: the dead letters named without the stream's tag land in
    # another slot.
    keys = Keys()
    assert _slot(f"{keys.events_stream}:dead") != _slot(keys.events_stream)
    assert _slot(keys.dead_letters) == _slot(keys.events_stream)


# INTENT_KEY_PREFIX's own pattern: widening it (braces, say) widens what is checked here.
PREFIX_PATTERN = next(
    m.pattern for m in Settings.model_fields["key_prefix"].metadata if getattr(m, "pattern", None)
)


@given(st.from_regex(PREFIX_PATTERN, fullmatch=True))
def test_the_stream_and_its_keys_share_a_slot_under_any_allowed_prefix(prefix: str) -> None:
    keys = Keys(prefix)
    slot = _slot(keys.events_stream)
    assert _slot(keys.dead_letters) == slot
    assert _slot(keys.event_seen("evt_0123456789abcdef01234567")) == slot
