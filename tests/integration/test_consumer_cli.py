"""``intent events`` as a user runs it: tail, dead (list, requeue), replay, consume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import redis

from intent.events.deadletter import DEAD_FIELDS, dead_letter_fields
from intent.models import Event, IntentEvent
from tests.helpers import KEYS, make_event, publish, wait_until

pytestmark = pytest.mark.integration


def run_cli(redis_url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intent.cli", "events", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(redis_url),
    )


def cli_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    return {**env, "INTENT_REDIS_URL": redis_url}


def stream_fields(client: redis.Redis, stream_id: str) -> dict[str, str]:
    return client.xrange(KEYS.events_stream, stream_id, stream_id)[0][1]


# -- tail ----------------------------------------------------------------------------------
def test_tail_prints_one_line_per_event_and_stops_after_count(
    redis_client: redis.Redis, redis_url: str
) -> None:
    events = [make_event(1), make_event(2, IntentEvent.PATTERN_DETECTED), make_event(3)]
    ids = publish(redis_client, events)
    out = run_cli(redis_url, "tail", "--from", "0", "--count", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{ids[0]}  2025-01-01T00:00:00.000Z  context_changed ")
    assert "pattern=checkout" in lines[0] and "id=evt_0001" in lines[0]
    assert '{"context_id":"ctx-1"}' in lines[0]
    assert "pattern_detected" in lines[1]

    out = run_cli(redis_url, "tail", "--json", "--from", ids[0], "--count", "2")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [row.pop("stream_id") for row in rows] == ids[1:]
    assert [Event.model_validate(row) for row in rows] == events[1:]


def test_tail_follows_new_events_and_shows_malformed_ones(
    redis_client: redis.Redis, redis_url: str
) -> None:
    publish(redis_client, [make_event(0)])  # before the tail: not shown
    tail = subprocess.Popen(
        [sys.executable, "-m", "intent.cli", "events", "tail", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(redis_url),
    )
    try:

        def tail_is_waiting() -> bool:
            return any(c.get("cmd") == "xread" for c in redis_client.client_list())

        wait_until(tail_is_waiting, timeout=30)
        redis_client.xadd(KEYS.events_stream, {"id": "evt_bad", "type": "context_changed"})
        publish(redis_client, [make_event(5)])
        out, err = tail.communicate(timeout=15)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    first, second = out.splitlines()
    assert "malformed (pattern_id: Field required" in first and '"id":"evt_bad"' in first
    assert "id=evt_0005" in second


# -- dead letters --------------------------------------------------------------------------
def add_dead_letters(client: redis.Redis, events: list[Event]) -> list[tuple[str, str]]:
    """Dead letters as a consumer writes them: (dead id, original stream id) each."""
    added = []
    for stream_id in publish(client, events):
        letter = dead_letter_fields(
            stream_fields(client, stream_id),
            reason="failed",
            error="RuntimeError: boom",
            group="billing",
            consumer="c-1",
            deliveries=5,
            original_id=stream_id,
        )
        added.append((client.xadd(KEYS.dead_letters, letter), stream_id))  # type: ignore[arg-type]
    return added


def test_dead_lists_the_dead_letters(redis_client: redis.Redis, redis_url: str) -> None:
    out = run_cli(redis_url, "dead")
    assert out.returncode == 0 and out.stdout.strip() == "no dead letters"
    [(dead_id, original_id), _] = add_dead_letters(redis_client, [make_event(1), make_event(2)])
    out = run_cli(redis_url, "dead", "list", "--count", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{dead_id}  ")
    for text in (
        "failed",
        "group=billing",
        "consumer=c-1",
        "deliveries=5",
        f"original={original_id}",
        "id=evt_0001",
        "error: RuntimeError: boom",
        "1 more (use --count)",
    ):
        assert text in out.stdout
    listed: list[dict[str, Any]] = json.loads(run_cli(redis_url, "dead", "--json").stdout)
    assert [row["dead_id"] for row in listed][:1] == [dead_id]
    assert listed[0]["fields"] == stream_fields(redis_client, original_id)


def test_dead_requeue_puts_the_original_fields_back_and_deletes_the_letter(
    redis_client: redis.Redis, redis_url: str
) -> None:
    letters = add_dead_letters(redis_client, [make_event(i) for i in range(4)])
    (dead_id, original_id) = letters[0]
    out = run_cli(redis_url, "dead", "requeue", dead_id)
    assert out.returncode == 0, out.stderr
    new_id = out.stdout.split()[-1]
    assert out.stdout.startswith(f"requeued {dead_id} as ")
    requeued = stream_fields(redis_client, new_id)
    assert requeued == stream_fields(redis_client, original_id)
    assert not set(requeued) & set(DEAD_FIELDS)
    assert redis_client.xlen(KEYS.dead_letters) == 3

    missing = run_cli(redis_url, "dead", "requeue", dead_id)
    assert missing.returncode == 1 and "no such dead letter" in missing.stderr

    out = run_cli(redis_url, "dead", "requeue", "--all")
    assert out.returncode == 0 and out.stdout.strip() == "requeued 3 dead letters"
    assert redis_client.xlen(KEYS.dead_letters) == 0
    assert redis_client.xlen(KEYS.events_stream) == 4 + 4

    both = run_cli(redis_url, "dead", "requeue", dead_id, "--all")
    assert both.returncode == 1 and "not both" in both.stderr


# -- replay and consume ----------------------------------------------------------------------
def test_replay_rewinds_the_group(redis_client: redis.Redis, redis_url: str) -> None:
    ids = publish(redis_client, [make_event(i) for i in range(5)])
    redis_client.xgroup_create(KEYS.events_stream, "g", "$")
    out = run_cli(redis_url, "replay", "--from", ids[1], "--group", "g")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"group g: rewound from {ids[-1]} to {ids[1]}; 3 events will be delivered again"
    )
    assert redis_client.xinfo_groups(KEYS.events_stream)[0]["last-delivered-id"] == ids[1]

    out = run_cli(redis_url, "replay", "--from", "0", "--group", "nobody")
    assert out.returncode == 1 and "no consumer group 'nobody'" in out.stderr


def test_consume_runs_the_builtin_handlers_and_reports(
    redis_client: redis.Redis, redis_url: str
) -> None:
    publish(redis_client, [make_event(i) for i in range(3)])
    redis_client.set(KEYS.context_cache("ctx-1"), "{}")
    out = run_cli(redis_url, "consume", "--group", "ops", "--start-id", "0", "--max-events", "3")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["group"], summary["handled"], summary["dead_lettered"]) == ("ops", 3, 0)
    assert not redis_client.exists(KEYS.context_cache("ctx-1"))
    # Logs go to stderr as the service's own: JSON lines unless INTENT_LOG_FORMAT=text.
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    started = [line for line in lines if line["message"].startswith("consuming intent:events")]
    assert started and started[0]["logger"] == "intent.events", lines
    assert started[0]["process"] == "consumer"


def test_consume_logs_as_text_when_asked(redis_client: redis.Redis, redis_url: str) -> None:
    publish(redis_client, [make_event(0)])
    command = ["events", "consume", "--group", "ops", "--start-id", "0", "--max-events", "1"]
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", *command],
        capture_output=True,
        text=True,
        timeout=30,
        env={**cli_env(redis_url), "INTENT_LOG_FORMAT": "text"},
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"INFO +intent\.events \[consumer\] consuming intent:events", out.stderr)


def test_commands_report_an_unreachable_redis() -> None:
    out = run_cli("redis://127.0.0.1:1/0", "dead")
    assert out.returncode == 1 and "Redis error" in out.stderr
