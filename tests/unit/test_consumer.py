"""The consuming side without Redis: policies, dispatch, entry parsing, dead-letter fields,
settings and the CLI's arguments."""

from __future__ import annotations

import json
import logging

import pydantic
import pytest

from intent.cli import build_parser
from intent.errors import ValidationError
from intent.events import (
    ConsumerConfig,
    EventHandler,
    RetryLater,
    current_delivery,
    event_from_fields,
)
from intent.events.config import default_consumer_name, gives_up, retry_delay
from intent.events.deadletter import DEAD_FIELDS, DeadLetter, dead_letter_fields
from intent.events.entries import (
    entries_from_reply,
    is_unknown_type,
    parse_entries,
    parse_entry,
)
from intent.events.handler import Delivery, _current_delivery
from intent.events.idempotency import EventInProgress, Idempotency
from intent.keys import Keys
from intent.models import Event, IntentEvent
from intent.settings import Settings, SettingsError, load_settings


def make_event(index: int = 0, kind: IntentEvent = IntentEvent.CONTEXT_CHANGED) -> Event:
    return Event(
        id=f"evt_{index}",
        type=kind,
        pattern_id="checkout",
        data={"context_id": f"ctx-{index}", "n": index, "nested": {"xs": [1.5, None, "a"]}},
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=f"req-{index}",
    )


def fields_of(event: Event) -> dict[str, str]:
    return {
        "id": event.id,
        "type": event.type.value,
        "pattern_id": event.pattern_id,
        "request_id": event.request_id,
        "timestamp": event.timestamp,
        "source": event.source,
        "schema_version": str(event.schema_version),
        "data": json.dumps(event.data),
    }


# -- policy --------------------------------------------------------------------------------
def config(**overrides: object) -> ConsumerConfig:
    return ConsumerConfig(group="g", consumer="c", **overrides)  # type: ignore[arg-type]


def test_retry_delay_doubles_per_delivery_up_to_the_cap() -> None:
    cfg = config(retry_backoff=1.0, retry_backoff_max=5.0, retry_jitter=0.25)
    longest = [retry_delay(cfg, n, rand=lambda: 0.0) for n in range(1, 6)]
    shortest = [retry_delay(cfg, n, rand=lambda: 1.0) for n in range(1, 6)]
    assert longest == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert shortest == [0.75, 1.5, 3.0, 3.75, 3.75]


def test_gives_up_on_the_last_allowed_delivery() -> None:
    cfg = config(max_deliveries=3)
    assert [gives_up(cfg, n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_claim_interval_and_lease_follow_the_idle_time() -> None:
    cfg = config(claim_idle=60.0, batch_size=50)
    assert cfg.claim_interval == 30.0
    assert cfg.lease_renewal == 15.0
    assert cfg.max_retrying == 500
    assert config(claim_idle=0.02).claim_interval == 0.05


@pytest.mark.parametrize(
    "overrides",
    [
        {"group": "bad group"},
        {"consumer": ""},
        {"group": "g\n"},  # a trailing newline: re's "$" would let it in
        {"consumer": "c\n"},
        {"batch_size": 0},
        {"max_deliveries": 0},
        {"block": 0},
        {"unknown_type": "drop"},
    ],
)
def test_config_refuses_bad_values(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {"group": "g", "consumer": "c", **overrides}
    with pytest.raises(ValueError):
        ConsumerConfig(**values)  # type: ignore[arg-type]


def test_default_consumer_name_is_host_and_pid() -> None:
    name = default_consumer_name()
    assert name.endswith(f"-{__import__('os').getpid()}")
    ConsumerConfig(group="g", consumer=name)  # a valid name


# -- settings ------------------------------------------------------------------------------
def test_consumer_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert defaults.consumer_max_deliveries == 5
    assert defaults.consumer_unknown_type == "ack"
    monkeypatch.setenv("INTENT_CONSUMER_BATCH_SIZE", "25")
    monkeypatch.setenv("INTENT_CONSUMER_CLAIM_IDLE", "2.5")
    monkeypatch.setenv("INTENT_CONSUMER_UNKNOWN_TYPE", "dead_letter")
    cfg = ConsumerConfig.from_settings(load_settings(), "billing", "c-1")
    assert (cfg.batch_size, cfg.claim_idle, cfg.unknown_type) == (25, 2.5, "dead_letter")
    assert cfg.max_deliveries == 5 and cfg.retry_backoff == 1.0


def test_a_bad_unknown_type_policy_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_CONSUMER_UNKNOWN_TYPE", "ignore")
    with pytest.raises(SettingsError, match="INTENT_CONSUMER_UNKNOWN_TYPE"):
        load_settings()


# -- dispatch ------------------------------------------------------------------------------
def test_handlers_register_by_decorator_and_explicitly_and_run_in_order() -> None:
    handler = EventHandler()
    calls: list[str] = []

    @handler.on(IntentEvent.CONTEXT_CHANGED)
    def first(event: Event) -> None:
        calls.append(f"first:{event.id}")

    handler.register("context_changed", lambda event: calls.append(f"second:{event.id}"))
    assert first.__name__ == "first"  # the decorator returns the function itself
    assert handler.handle_event(make_event(1)) is True
    assert calls == ["first:evt_1", "second:evt_1"]
    assert handler.handles("context_changed") and not handler.handles("pattern_detected")
    assert handler.types == [IntentEvent.CONTEXT_CHANGED]


def test_handle_event_takes_a_dict_and_warns_without_a_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = EventHandler()
    event = make_event(2, IntentEvent.PATTERN_DETECTED)
    with caplog.at_level(logging.WARNING, logger="intent.events"):
        assert handler.handle_event(event.model_dump()) is False
    assert "no handler for event type pattern_detected" in caplog.text


def test_registering_an_unknown_type_fails() -> None:
    with pytest.raises(ValueError):
        EventHandler().register("order_shipped", lambda event: None)


def test_retry_later_carries_its_delay() -> None:
    assert RetryLater(-1).delay == 0.0
    assert EventInProgress("evt_1", 0.25).delay == 0.25


# -- entries -------------------------------------------------------------------------------
def test_a_raw_reply_becomes_entries() -> None:
    reply = [["intent:events", [["1-0", ["id", "a", "type", "x"]], ["2-0", []]]]]
    assert entries_from_reply(reply) == [("1-0", {"id": "a", "type": "x"}), ("2-0", {})]
    assert entries_from_reply(None) == []


def test_bulk_parsing_equals_the_reference_parser() -> None:
    events = [make_event(i, kind) for i, kind in enumerate(IntentEvent)]
    fields = [fields_of(event) for event in events]
    assert parse_entries(fields) == [event_from_fields(f) for f in fields] == events


def test_bulk_parsing_reports_each_malformed_entry_with_the_reference_error() -> None:
    good = fields_of(make_event(1))
    bad_json = {**good, "data": '{"context_id": '}
    bad_version = {**good, "schema_version": "one"}
    missing = {"id": "x", "type": "context_changed"}
    lone_surrogate = {**good, "data": '{"s": "\\ud800"}'}  # valid JSON text, no character
    deep = {**good, "data": "[" * 1000 + "]" * 1000}
    undecodable = {**good, "pattern_id": "p\udcff"}  # a byte 0xff, read with surrogateescape
    results = parse_entries(
        [good, bad_json, bad_version, missing, lone_surrogate, deep, undecodable]
    )
    assert results[0] == make_event(1)
    assert isinstance(results[1], ValidationError) and results[1].field == "data"
    assert isinstance(results[2], pydantic.ValidationError)
    assert "schema_version" in str(results[2])
    assert isinstance(results[3], pydantic.ValidationError)
    assert isinstance(results[4], ValidationError) and results[4].field == "data.s"
    assert isinstance(results[5], ValidationError) and "nested deeper" in results[5].message
    assert isinstance(results[6], ValidationError) and "UTF-8" in results[6].message
    assert [str(r) for r in results[1:]] == [
        str(parse_entry(e))
        for e in (bad_json, bad_version, missing, lone_surrogate, deep, undecodable)
    ]


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1E+999", "9" * 33, "-" + "9" * 40]
)
def test_bulk_parsing_refuses_numbers_the_reference_parser_refuses(literal: str) -> None:
    # pydantic-core alone reads NaN, 1e400 (as inf) and integers of any length.
    good = fields_of(make_event(1))
    bad = {**good, "data": '{"n": ' + literal + "}"}
    results = parse_entries([bad])  # alone in its batch: the fast path's own verdict
    assert isinstance(results[0], ValidationError), results[0]
    assert results[0].field == "data.n"
    assert str(results[0]) == str(parse_entry(bad))


def test_unknown_types_are_told_from_malformed_entries() -> None:
    assert is_unknown_type({"type": "order_shipped"})
    assert not is_unknown_type({"type": "context_changed"})
    assert not is_unknown_type({"id": "no type at all"})


# -- dead letters --------------------------------------------------------------------------
def test_a_dead_letter_keeps_the_original_fields_apart_from_its_own() -> None:
    original = fields_of(make_event(3))
    letter = dead_letter_fields(
        original,
        reason="failed",
        error="RuntimeError: boom",
        group="g",
        consumer="c",
        deliveries=5,
        original_id="5-0",
    )
    assert set(letter) == set(original) | set(DEAD_FIELDS)
    parsed = DeadLetter.from_entry("9-0", letter)
    assert parsed.fields == original
    assert (parsed.reason, parsed.error, parsed.deliveries) == ("failed", "RuntimeError: boom", 5)
    assert (parsed.group, parsed.consumer, parsed.original_id) == ("g", "c", "5-0")
    assert parsed.as_dict()["dead_id"] == "9-0"


# -- idempotency keys ----------------------------------------------------------------------
class _NoRedis:
    def register_script(self, source: str) -> object:
        return object()


def test_idempotency_marks_are_per_group_event_and_handler_name() -> None:
    idem = Idempotency(_NoRedis(), Keys(), ttl=60, lease=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no consumer group"):
        idem.key("evt_1")
    assert idem.key("evt_1", group="billing") == "intent:handled:billing:evt_1"
    token = _current_delivery.set(Delivery("audit", "c-1"))
    try:
        assert current_delivery() is not None
        assert idem.key("evt_1") == "intent:handled:audit:evt_1"
        assert idem.key("evt_1", name="mail") == "intent:handled:audit:evt_1:mail"
    finally:
        _current_delivery.reset(token)


# -- CLI arguments -------------------------------------------------------------------------
def test_events_cli_arguments() -> None:
    parser = build_parser()
    tail = parser.parse_args(["events", "tail"])
    assert (tail.from_id, tail.count, tail.json) == ("$", None, False)
    dead = parser.parse_args(["events", "dead"])
    assert dead.dead_action == "list"
    requeue = parser.parse_args(["events", "dead", "requeue", "1-0", "2-0"])
    assert requeue.ids == ["1-0", "2-0"] and not requeue.all
    consume = parser.parse_args(["events", "consume", "--group", "g", "--handlers", "m:f"])
    assert (consume.group, consume.handlers, consume.consumer) == ("g", ["m:f"], None)
    replay = parser.parse_args(["events", "replay", "--from", "0", "--group", "g"])
    assert (replay.from_id, replay.group) == ("0", "g")


def test_a_config_defaults_to_the_settings_defaults() -> None:
    # Each default is written once, in settings.py: a config built without settings
    # equals one built from the settings' defaults.
    cfg = ConsumerConfig(group="g", consumer="c")
    assert cfg == ConsumerConfig.from_settings(Settings.model_construct(), "g", "c")
    assert (cfg.batch_size, cfg.max_deliveries, cfg.claim_idle) == (100, 5, 60.0)
