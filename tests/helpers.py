"""Helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from intent.runtime import reset_runtime
from intent.settings import VISIBILITY_MARGIN, Settings

# Every setting that is a span of time shaping what the pipeline does (not the Redis client
# socket timeouts, which are about the network). A resilience test may run them all scaled
# by one factor, so every ratio between them stays as users have it.
TIME_SETTINGS = (
    "retry_initial_delay",
    "retry_max_delay",
    "retry_after_max",
    "circuit_recovery_timeout",
    "circuit_half_open_timeout",
    "circuit_failure_window",
    "circuit_throttle_wait",
    "circuit_recheck_interval",
    "circuit_slow_call_duration",
    "circuit_break_max",
    "bulkhead_wait",
    "circuit_redis_probe_interval",
    "max_deferral",
    "defer_jitter",
    "downstream_rate_period",
    "rate_limit_window",
    "analysis_deadline",
    "context_cache_ttl",
    "version_check_interval",
    "context_connect_timeout",
    "context_read_timeout",
    "context_write_timeout",
    "prediction_connect_timeout",
    "prediction_read_timeout",
    "task_soft_time_limit",
    "task_time_limit",
    "broker_restore_interval",
    "broker_reconnect_interval",
    "redis_outage_tolerance",
    "release_interval",
)
# The releaser's tick is a polling period, not a span users tune against the others: scaled,
# but not below this (a tighter loop would only burn the CPU the test needs).
MIN_RELEASE_INTERVAL = 0.02


def scaled_env(factor: float, **overrides: Any) -> dict[str, str]:
    """``INTENT_*`` variables for the defaults with every time setting times ``factor``
    (integer settings rounded up), plus ``overrides`` (by setting name)."""
    fields = Settings.model_fields
    env: dict[str, str] = {}
    for name in TIME_SETTINGS:
        default = fields[name].default  # the documented default, whatever the environment
        value = default * factor
        if name == "release_interval":
            value = max(MIN_RELEASE_INTERVAL, value)
        if isinstance(default, int):
            value = max(1, math.ceil(value))
        env[f"INTENT_{name.upper()}"] = str(round(value, 6))
    hard_limit = fields["task_time_limit"].default
    env["INTENT_VISIBILITY_TIMEOUT"] = str(math.ceil((hard_limit + VISIBILITY_MARGIN) * factor))
    for name, value in overrides.items():
        env[f"INTENT_{name.upper()}"] = str(value)
    Settings.model_validate({k[len("INTENT_") :].lower(): v for k, v in env.items()})
    return env


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` in this process's environment (and a fresh runtime) while inside."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reset_runtime()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_runtime()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(poll)
