"""The ``intent`` command: the main job start to finish, and one analysis by ``submit``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from intent.reference import ReferenceServices

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}
    return {**env, **extra}


def test_demo_runs_start_to_finish_and_stops_what_it_started() -> None:
    # Without INTENT_REDIS_URL the demo starts (and stops) its own embedded Valkey.
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", "demo"],
        capture_output=True, text=True, timeout=240, env=_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "== Summary" in text
    assert "0 timed out" in text
    assert "retries=2" in text  # ctx-flaky's two injected 503s were retried
    assert "pattern_updated" in text and "context_changed" in text
    assert "duplicate" in text
    assert "stopped: worker, reference services, Redis" in text


def test_submit_local_prints_the_result_as_json(
    redis_url: str, reference: ReferenceServices
) -> None:
    env = _env(
        INTENT_REDIS_URL=redis_url,
        INTENT_CONTEXT_SERVICE_URL=reference.context_url,
        INTENT_PREDICTION_SERVICE_URL=reference.prediction_url,
    )
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", "submit", "--local", "--client-id", "cli",
         "--pattern-id", "checkout", "--context-id", "ctx-cli-1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "completed"
    assert result["context"]["context_id"] == "ctx-cli-1"


def test_submit_names_the_bad_field(redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", "submit", "--local", "--client-id", "bad id",
         "--pattern-id", "p", "--context-id", "c"],
        capture_output=True, text=True, timeout=60, env=_env(INTENT_REDIS_URL=redis_url),
    )  # fmt: skip
    assert out.returncode == 1
    assert "client_id" in out.stderr


def test_a_bad_setting_stops_the_command_naming_the_variable(redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "intent.cli", "submit", "--local", "--client-id", "c",
         "--pattern-id", "p", "--context-id", "c"],
        capture_output=True, text=True, timeout=60,
        env=_env(INTENT_REDIS_URL=redis_url, INTENT_CIRCUIT_FAILURE_THRESHOLD="many"),
    )  # fmt: skip
    assert out.returncode == 2
    assert "INTENT_CIRCUIT_FAILURE_THRESHOLD" in out.stderr


def test_circuits_lists_and_forces_breakers(redis_url: str, redis_client: object) -> None:
    def intent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "intent.cli", "circuits", *args],
            capture_output=True, text=True, timeout=60, env=_env(INTENT_REDIS_URL=redis_url),
        )  # fmt: skip

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
            capture_output=True, text=True, timeout=60, env=_env(INTENT_REDIS_URL=redis_url),
        )  # fmt: skip

    shown = {s["name"]: s for s in json.loads(intent("--id", "web-cli", "--json").stdout)}
    assert shown["intake"]["current"] == 3 and shown["intake"]["amount"] == 100
    assert shown["get_context"]["amount"] == 1000 and shown["analyze_context"]["amount"] == 500
    assert "intake" in intent("--id", "web-cli").stdout
    after = json.loads(intent("reset", "intake", "--id", "web-cli", "--json").stdout)
    assert {s["name"]: s["current"] for s in after}["intake"] == 0
    assert intent("reset", "nope").returncode == 2
