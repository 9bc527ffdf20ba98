"""The ``intent`` command: the main job start to finish, and one analysis by ``submit``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from intent.embedded import EmbeddedRedis
from intent.reference import ReferenceServices

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    return {**env, **extra}


def _submit(*options: str, timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``intent submit`` with ``options``, as a user runs it."""
    command = [sys.executable, "-m", "intent.cli", "submit", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _processes_with(marker: str) -> list[str]:
    """The command lines of the processes whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _run_demo(**env: str) -> str:
    """``intent demo`` to the end; asserts it exited 0 and left no process running (each
    process it started inherits a marker in its environment)."""
    marker = f"DEMO_TEST_RUN={uuid.uuid4().hex}"
    name, value = marker.split("=", 1)
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(**env, **{name: value}),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert _processes_with(marker) == []
    return out.stdout


def _summary_rows(text: str) -> list[tuple[int, str, str]]:
    """(phase, analysis, outcome) of each row of the demo's summary table."""
    table = text.split("== Summary", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^  (\d) (.{32}) (\S+)", table, re.MULTILINE)
    return [(int(phase), label.strip(), outcome) for phase, label, outcome in rows]


def _story_gaps(text: str) -> list[str]:
    """What of the demo's story its output lacks (empty: all of it is there)."""
    rows = _summary_rows(text)
    outcomes = [outcome for _, _, outcome in rows]
    batch = [outcome for phase, _, outcome in rows if phase == 4]
    totals = (re.findall(r"totals: (.*)", text) or [""])[0]
    checks = {
        # The breakers' transitions as they happened: trips, a failed trial, recovery.
        "context trip": re.search(
            r"^\[ *[\d.]+ s\] breaker context-service: closed -> open", text, re.M
        ),
        "failed trial": "breaker context-service: half-open -> open (trial call failed)" in text,
        "recovery": "breaker context-service: half-open -> closed" in text,
        "prediction trip": "breaker prediction-service: closed -> open" in text,
        # Cached contexts served stale with their last predictions; the uncached ones waited
        # for the breaker and completed after it closed; one ran out of time.
        "degraded": "fallbacks: context, predictions" in text,
        "deferred": re.search(r"\] ctx-200\d/\S+ +completed .*deferrals=1", text),
        "expired": "expired at fetch_context" in text and "expired" in outcomes,
        # The burst: refused at intake with a retry_after, never enqueued.
        "intake refusal": re.search(r"crawler #\d \S+ +refused .*over the intake limit", text),
        # The batch by name: the bad item fails alone, its error naming the field.
        "batch": len(batch) == 4 and batch.count("failed") == 1,
        "batch error": re.search(r"batch\[2\] .* failed .*ValidationError: .*pattern_id", text),
        # Resubmissions are duplicates, counted as such, and only the deliberate ones.
        "duplicates": [(p, o) for p, _, o in rows if o == "duplicate"] == [(5, "duplicate")] * 2,
        "totals": "2 duplicates" in totals and "0 timed out" in totals,
        "degraded counted": f"{outcomes.count('degraded')} degraded" in totals,
        "own check": "the demo did not show" not in text,
    }
    return [what for what, seen in checks.items() if not seen]


def test_demo_runs_start_to_finish_and_stops_what_it_started() -> None:
    # Without INTENT_REDIS_URL the demo starts (and stops) its own embedded Valkey.
    text = _run_demo()
    assert _story_gaps(text) == [], text
    assert "demo timings" in text and "breaker recovery 4 s (60 s)" in text
    assert "retries=2" in text  # ctx-flaky's two injected 503s were retried
    assert "stopped: worker, reference services, Redis" in text


def test_a_second_demo_against_the_same_redis_runs_everything_again() -> None:
    """Request ids are the run's own: a persistent Redis that remembers the first run
    answers none of the second with a duplicate but the deliberate resubmissions."""
    with EmbeddedRedis() as server:
        first = _run_demo(INTENT_REDIS_URL=server.url)
        second = _run_demo(INTENT_REDIS_URL=server.url)
    runs = [re.search(r"^run +(\w+):", text, re.M) for text in (first, second)]
    assert runs[0] and runs[1] and runs[0].group(1) != runs[1].group(1)
    for text in (first, second):
        assert _story_gaps(text) == [], text
        assert "stopped: worker, reference services\n" in text  # not Redis: not its own


def test_submit_local_prints_the_result_as_json(
    redis_url: str, reference: ReferenceServices
) -> None:
    env = _env(
        INTENT_REDIS_URL=redis_url,
        INTENT_CONTEXT_SERVICE_URL=reference.context_url,
        INTENT_PREDICTION_SERVICE_URL=reference.prediction_url,
    )
    out = _submit(
        "--local",
        "--client-id",
        "cli",
        "--pattern-id",
        "checkout",
        "--context-id",
        "ctx-cli-1",
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "completed"
    assert result["context"]["context_id"] == "ctx-cli-1"


def test_submit_names_the_bad_field(redis_url: str) -> None:
    out = _submit(
        "--local",
        "--client-id",
        "bad id",
        "--pattern-id",
        "p",
        "--context-id",
        "c",
        timeout=60,
        env=_env(INTENT_REDIS_URL=redis_url),
    )
    assert out.returncode == 1
    assert "client_id" in out.stderr


def test_a_bad_setting_stops_the_command_naming_the_variable(redis_url: str) -> None:
    out = _submit(
        "--local",
        "--client-id",
        "c",
        "--pattern-id",
        "p",
        "--context-id",
        "c",
        timeout=60,
        env=_env(INTENT_REDIS_URL=redis_url, INTENT_CIRCUIT_FAILURE_THRESHOLD="many"),
    )
    assert out.returncode == 2
    assert "INTENT_CIRCUIT_FAILURE_THRESHOLD" in out.stderr


def test_circuits_lists_and_forces_breakers(redis_url: str, redis_client: object) -> None:
    def intent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "intent.cli", "circuits", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(INTENT_REDIS_URL=redis_url),
        )

    opened = intent("open", "context-service", "--reason", "maintenance", "--json")
    assert opened.returncode == 0, opened.stderr
    (status,) = json.loads(opened.stdout)
    assert status["state"] == "open" and "maintenance" in status["reason"]
    assert status["forced"]

    listing = intent()
    assert "context-service" in listing.stdout and "maintenance" in listing.stdout

    closed = intent("close", "context-service", "--json")
    assert json.loads(closed.stdout)[0]["forced"]
    reset = intent("reset", "context-service", "--json")
    (after,) = json.loads(reset.stdout)
    assert after["state"] == "closed" and not after["forced"]
    assert after["generation"] > status["generation"]

    missing = intent("reset")
    assert missing.returncode == 2 and "NAME" in missing.stderr


def test_ratelimits_shows_and_resets_the_current_rate(redis_url: str, redis_client: object) -> None:
    from intent.keys import Keys
    from intent.ratelimit import RateLimits
    from intent.settings import load_settings

    limits = RateLimits(load_settings(redis_url=redis_url), Keys())
    for _ in range(3):
        limits.hit("intake", "web-cli")

    def intent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "intent.cli", "ratelimits", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(INTENT_REDIS_URL=redis_url),
        )

    shown = {s["name"]: s for s in json.loads(intent("--id", "web-cli", "--json").stdout)}
    assert shown["intake"]["current"] == 3 and shown["intake"]["amount"] == 100
    assert shown["get_context"]["amount"] == 1000 and shown["analyze_context"]["amount"] == 500
    # Only intake is per client: the downstream limits are the fleet's, whatever --id says.
    limits.hit("get_context")
    assert shown["intake"]["scope"] == "client" and shown["intake"]["identifier"] == "web-cli"
    scoped = {s["name"]: s for s in json.loads(intent("--id", "web-cli", "--json").stdout)}
    assert scoped["get_context"]["scope"] == "fleet" and scoped["get_context"]["identifier"] == ""
    assert scoped["get_context"]["current"] == 1  # the fleet's count, not web-cli's
    table = intent("--id", "web-cli").stdout
    assert re.search(r"^intake\s+client 'web-cli'\s+3\s+100", table, re.M), table
    assert re.search(r"^get_context\s+fleet\s+1\s+1000", table, re.M), table
    refused = intent("reset", "get_context", "--id", "web-cli")
    assert refused.returncode == 2 and "fleet-wide" in refused.stderr
    after = json.loads(intent("reset", "intake", "--id", "web-cli", "--json").stdout)
    assert {s["name"]: s["current"] for s in after}["intake"] == 0
    assert intent("reset", "nope").returncode == 2


def test_submit_answers_every_failure_as_a_json_error_never_a_traceback() -> None:
    from intent.embedded import free_port

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    out = _submit(
        "--client-id",
        "c",
        "--pattern-id",
        "p",
        "--context-id",
        "c",
        "--timeout",
        "5",
        timeout=120,
        env=_env(INTENT_REDIS_URL=dead_redis),
    )
    assert out.returncode == 1, out.stderr
    error = json.loads(out.stderr.splitlines()[-1])  # after the log lines, JSON too
    assert error["type"] == "ServiceUnavailableError"
    assert error["service"] == "redis"
    assert "Traceback" not in out.stderr


def test_a_submit_that_times_out_says_what_the_analysis_waits_for(
    redis_url: str, redis_client: object
) -> None:
    """No worker consumes the queue: the timeout says so, as a JSON error."""
    out = _submit(
        "--client-id",
        "c",
        "--pattern-id",
        "p",
        "--context-id",
        "c",
        "--timeout",
        "1",
        timeout=120,
        env=_env(INTENT_REDIS_URL=redis_url, INTENT_QUEUE="nobody-consumes-this"),
    )
    assert out.returncode == 3, out.stderr
    error = json.loads(out.stderr.splitlines()[-1])
    assert error["error"] == "Timeout"
    assert "no worker answered" in error["waiting"]["reason"]


def test_a_submit_that_times_out_names_the_step_it_waits_for(
    redis_url: str, redis_client: object
) -> None:
    import redis

    from intent.keys import Keys
    from intent.waiting import WaitingRoom

    rid = "cli-waits"
    room = WaitingRoom(redis.Redis.from_url(redis_url), Keys(), [])
    room.park(
        "get_context",
        f"{rid}.fetch_context",
        "{}",
        due=1e10,
        reason="Circuit breaker is open for service context-service",
    )
    out = _submit(
        "--client-id",
        "c",
        "--pattern-id",
        "p",
        "--context-id",
        "c",
        "--request-id",
        rid,
        "--timeout",
        "1",
        timeout=120,
        env=_env(INTENT_REDIS_URL=redis_url, INTENT_QUEUE="nobody-consumes-this"),
    )
    error = json.loads(out.stderr.splitlines()[-1])
    assert error["waiting"]["step"] == "fetch_context"
    assert "context-service" in error["waiting"]["reason"]


def test_tasks_dead_lists_refused_messages(redis_url: str, redis_client: object) -> None:
    import redis

    from intent.keys import Keys
    from intent.poison import DeadTasks

    DeadTasks(redis.Redis.from_url(redis_url), Keys(), 100).add(
        field="headers.timelimit",
        reason="must be [hard, soft] seconds",
        task="intent.analyze",
        task_id="t-1",
        content_type="application/json",
        headers={"timelimit": "x"},
        body=b"[[], {}, {}]",
    )
    listed = subprocess.run(
        [sys.executable, "-m", "intent.cli", "tasks", "dead", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(INTENT_REDIS_URL=redis_url),
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["field"], row["task_id"], row["body"]) == (
        "headers.timelimit",
        "t-1",
        "[[], {}, {}]",
    )
