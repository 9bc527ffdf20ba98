"""The breaker on a real Redis: commands per call, a Redis outage and restart, and the
operators' view."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import pytest
import redis

from intent import scripts
from intent.breaker import (
    CircuitAdmin,
    CircuitBreaker,
    CircuitConfig,
    CircuitOpenError,
    FallbackStore,
    RedisStore,
)
from intent.breaker.stores.redis import SCRIPT_FAMILY
from intent.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration


class CountingConnection(redis.Connection):
    """Records every request written to the socket: one per round trip."""

    sent: list[bytes] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        request = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        CountingConnection.sent.append(request.split(b"\r\n")[2].upper())  # the command name
        super().send_packed_command(command, check_health)


def script_commands() -> set[str]:
    """Commands the breaker's Lua scripts run inside Redis (INFO counts those too)."""
    lua = scripts.folder(SCRIPT_FAMILY)
    text = "".join(f.read_text() for f in lua.iterdir() if f.name.endswith(".lua"))
    return {name.lower() for name in re.findall(r"redis\.call\('([A-Z]+)'", text)}


def commands_sent(client: redis.Redis, run: Any) -> int:
    """Commands clients sent while ``run`` ran, from INFO commandstats: commands run inside
    scripts and the INFO calls themselves are not requests."""
    inside = script_commands() | {"info"}
    before = client.info("commandstats")
    run()
    after = client.info("commandstats")
    total = 0
    for key, stats in after.items():
        command = key.removeprefix("cmdstat_")
        if command not in inside:
            total += stats["calls"] - before.get(key, {"calls": 0})["calls"]
    return total


def test_a_healthy_closed_call_costs_one_redis_round_trip(
    redis_client: redis.Redis, redis_url: str
) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool, decode_responses=True)
    breaker = CircuitBreaker(f"trips-{uuid.uuid4().hex[:6]}", store=RedisStore(client))
    for _ in range(5):  # first use: connection handshake, script load, registry
        breaker.call(lambda: None)
    CountingConnection.sent.clear()

    def calls() -> None:
        for _ in range(200):
            breaker.call(lambda: None)

    sent = commands_sent(redis_client, calls)
    assert CountingConnection.sent == [b"EVALSHA"] * 200
    assert sent / 200 <= 1.0


def test_redis_outage_falls_back_to_memory_and_the_shared_state_resumes(
    embedded_only: None, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedRedis().start()
    try:
        primary = RedisStore.from_url(server.url, socket_timeout=0.2)
        store = FallbackStore(primary, probe_interval=0.2, warn_interval=60)
        config = CircuitConfig(failure_threshold=3, min_throughput=3, recovery_timeout=30)
        breaker = CircuitBreaker("outage", config, store=store)
        for _ in range(5):
            breaker.call(lambda: "ok")
        assert primary.snapshot("outage").calls == 5

        server.stop()
        with caplog.at_level(logging.WARNING, logger="intent.breaker"):
            started, calls = time.monotonic(), 0
            while time.monotonic() - started < 0.8:
                assert breaker.call(lambda: "ok") == "ok"  # calls keep flowing
                calls += 1
                time.sleep(0.005)
        assert store.degraded
        assert calls >= 50  # a dead Redis costs milliseconds per call, not seconds
        outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage_logs) == 1  # once per interval, though probed four times

        server.start()  # same port, empty
        time.sleep(0.25)  # a probe is due
        breaker.call(lambda: "ok")  # the probe: on a fresh connection, not a stale one
        assert not store.degraded
        assert primary.snapshot("outage").calls >= 1
        assert "outage" in CircuitAdmin(primary).names()  # registered again

        # Shared again: another process trips it, and this process is refused.
        other = CircuitBreaker("outage", config, store=RedisStore.from_url(server.url))
        for _ in range(3):
            with pytest.raises(ConnectionError):
                other.call(_refused)
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: "ok")
    finally:
        server.close()


def _refused() -> None:
    raise ConnectionRefusedError("connection refused")


def test_operators_list_reset_and_force_breakers(
    redis_client: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore.from_url(redis_url)
    admin = CircuitAdmin(store)
    config = CircuitConfig(failure_threshold=2, min_throughput=2, failure_window=30)
    steady = CircuitBreaker("admin-steady", config, store=store)
    tripped = CircuitBreaker("admin-tripped", config, store=store)
    steady.call(lambda: 1)
    with pytest.raises(ConnectionError):
        steady.call(_refused)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            tripped.call(_refused)

    statuses = {status.name: status for status in admin.list()}
    assert set(statuses) == {"admin-steady", "admin-tripped"}
    assert (statuses["admin-steady"].state, statuses["admin-steady"].failures) == ("closed", 1)
    assert statuses["admin-steady"].calls == 2
    down = statuses["admin-tripped"]
    assert (down.state, down.generation) == ("open", 1)
    assert down.opened_at is not None and down.until is not None
    assert down.until == pytest.approx(down.opened_at + config.recovery_timeout)

    with caplog.at_level(logging.WARNING, logger="intent.breaker"):
        forced = admin.force_open("admin-steady", "maintenance window")
    assert (forced.state, forced.forced, forced.reason) == (
        "open",
        "open",
        "forced open: maintenance window",
    )
    assert "admin-steady: closed -> open (forced open: maintenance window)" in caplog.text
    with pytest.raises(CircuitOpenError) as refused:
        CircuitBreaker("admin-steady", config, store=store).call(lambda: 1)
    assert refused.value.until is None  # forced: no known end

    disabled = admin.force_closed("admin-tripped", "incident 42")
    assert (disabled.state, disabled.forced) == ("closed", "closed")
    fresh_process = CircuitBreaker("admin-tripped", config, store=store)
    for _ in range(5):
        with pytest.raises(ConnectionError):
            fresh_process.call(_refused)
    assert admin.status("admin-tripped").failures == 0  # disabled: nothing counted

    for name in ("admin-steady", "admin-tripped"):
        reset = admin.reset(name)
        assert (reset.state, reset.forced, reset.failures) == ("closed", None, 0)
