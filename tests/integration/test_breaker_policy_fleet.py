"""Issue 15's policies across worker processes on one Redis, in the style of
test_breaker_fleet.py: forked processes start together behind a barrier and report through
Redis; each test asserts counts and bounds (transitions, rules named, open times, calls in
flight at the downstream), never speeds. Times are scaled down: printed by each test."""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
import redis

from intent.breaker import (
    CircuitAdmin,
    CircuitBreaker,
    CircuitConfig,
    CircuitOpenError,
    CircuitState,
    RedisStore,
)
from intent.errors import BulkheadFullError
from tests.integration.test_breaker_fleet import FORK, Fleet, RedisNotes, _hold_the_trial

pytestmark = pytest.mark.integration


def _status(fleet: Fleet) -> Any:
    return CircuitAdmin(RedisStore.from_url(fleet.url)).status(fleet.name)


# -- a failure rate trips once, fleet-wide ----------------------------------------------------


def _fail_every_nth(fleet: Fleet, barrier: Barrier, nth: int, calls: int) -> None:
    """``calls`` calls, one in ``nth`` of them to a dead service (the first one fails)."""
    breaker = fleet.breaker()
    barrier.wait()
    for i in range(calls):
        try:
            if i % nth == 0:
                breaker.call(fleet.dead_service)
            else:
                breaker.call(fleet.healthy_service)
            fleet.client.rpush(fleet.results_key, "ok")
        except CircuitOpenError:
            fleet.client.rpush(fleet.results_key, "refused")
        except ConnectionRefusedError:
            fleet.client.rpush(fleet.results_key, "failed")


RATE = CircuitConfig(
    failure_threshold=1000,  # out of reach: the rate decides
    min_throughput=20,
    failure_rate_threshold=50.0,
    recovery_timeout=30,
    throttle_wait=0.0,
)


def test_a_fifty_percent_failure_rate_over_the_minimum_throughput_trips_once_fleet_wide(
    redis_client: redis.Redis,
) -> None:
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], RATE)
    fleet.run(_fail_every_nth, 4, FORK.Barrier(4), 2, 15)  # 4 x 15 calls, half failing

    assert fleet.notes() == ["closed>open"]  # one transition, one notification
    status = _status(fleet)
    assert (status.state, status.generation, status.trips) == ("open", 1, 1)
    assert status.reason.startswith("failure rate "), status.reason
    # "failure rate R% >= 50% over N calls ...": at least the minimum throughput judged
    rate, calls = status.reason.split()[2], int(status.reason.split()[6])
    assert float(rate.rstrip("%")) >= 50 and calls >= RATE.min_throughput, status.reason
    results = fleet.results()
    assert len(results) == 60
    assert results.count("failed") >= RATE.min_throughput // 2  # it waited for the minimum
    assert results.count("refused") > 0  # and then the fleet stopped calling


def test_a_quarter_failing_never_trips_a_fifty_percent_rate(redis_client: redis.Redis) -> None:
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], RATE)
    fleet.run(_fail_every_nth, 4, FORK.Barrier(4), 4, 15)
    assert fleet.notes() == []
    assert fleet.results().count("refused") == 0
    assert _status(fleet).state == "closed"


# -- slow calls trip by rate --------------------------------------------------------------------

SLOW = 0.05  # the slow-call duration, scaled: a slow call lasts 0.08 s, a fast one none


def _slow_every_other(fleet: Fleet, barrier: Barrier, calls: int) -> None:
    breaker = fleet.breaker()
    barrier.wait()
    for i in range(calls):
        try:
            breaker.call(fleet.healthy_service, SLOW * 1.6 if i % 2 == 0 else 0.0)
            fleet.client.rpush(fleet.results_key, "ok")
        except CircuitOpenError:
            fleet.client.rpush(fleet.results_key, "refused")


def test_slow_calls_trip_by_rate_without_a_single_failure(redis_client: redis.Redis) -> None:
    print(f"slow-call duration {SLOW} s, slow calls {SLOW * 1.6} s")
    config = CircuitConfig(
        failure_threshold=1000,
        min_throughput=16,
        slow_call_duration=SLOW,
        slow_call_rate_threshold=40.0,
        half_open_timeout=5.0,
        recovery_timeout=30,
        throttle_wait=0.0,
    )
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    fleet.run(_slow_every_other, 4, FORK.Barrier(4), 12)

    assert fleet.notes() == ["closed>open"]
    status = _status(fleet)
    assert status.reason.startswith("slow-call rate "), status.reason
    assert int(status.reason.split()[6]) >= config.min_throughput, status.reason
    results = fleet.results()
    assert len(results) == 48 and "failed" not in results
    assert results.count("refused") > 0


# -- the break grows over consecutive trips and a successful close resets it ----------------------


class OpenTimes(RedisNotes):
    """Pushes each open's duration and trip count, from the one process that opened it."""

    def __init__(self, url: str, key: str, times_key: str):
        super().__init__(url, key)
        self.times_key = times_key

    def state_change(
        self, cb: CircuitBreaker, old_state: CircuitState | None, new_state: CircuitState
    ) -> None:
        super().state_change(cb, old_state, new_state)
        if new_state.name == "open":
            snapshot = cb.snapshot()
            assert snapshot.until is not None and snapshot.opened_at is not None
            opened = snapshot.until - snapshot.opened_at
            self.client.rpush(self.times_key, f"{opened:.6f}:{snapshot.trips}")


def _call_while_running(fleet: Fleet, barrier: Barrier, times_key: str, mode_key: str) -> None:
    breaker = CircuitBreaker(
        fleet.name,
        fleet.config,
        store=RedisStore.from_url(fleet.url),
        listeners=[OpenTimes(fleet.url, fleet.notes_key, times_key)],
    )
    barrier.wait()
    while (mode := fleet.client.get(mode_key)) != "stop":
        try:
            if mode == "down":
                breaker.call(fleet.dead_service)
            else:
                breaker.call(fleet.healthy_service)
        except (CircuitOpenError, ConnectionRefusedError):
            pass
        time.sleep(0.005)


def test_the_break_grows_over_consecutive_trips_then_a_successful_close_resets_it(
    redis_client: redis.Redis,
) -> None:
    config = CircuitConfig(
        failure_threshold=2,
        min_throughput=2,
        recovery_timeout=0.2,
        break_factor=2.0,
        break_max=1.0,
        break_jitter=0.1,
        recheck_interval=0.05,
        throttle_wait=0.0,
    )
    print("time scale: recovery 0.2 s (default 60 s), factor 2, cap 1.0 s (600 s), jitter 0.1")
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    times_key, mode_key = f"{fleet.notes_key}:times", f"{fleet.notes_key}:mode"
    fleet.client.set(mode_key, "down")
    barrier = FORK.Barrier(5)
    workers = [
        FORK.Process(target=_call_while_running, args=(fleet, barrier, times_key, mode_key))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    time.sleep(3.0)  # 0.2 + 0.4 + 0.8 + 1.0: four opens at least, each trial failing
    fleet.client.set(mode_key, "up")
    deadline = time.monotonic() + 3
    while _status(fleet).state != "closed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _status(fleet).state == "closed"
    downs = len(fleet.client.lrange(times_key, 0, -1))
    fleet.client.set(mode_key, "down")
    deadline = time.monotonic() + 3
    while len(fleet.client.lrange(times_key, 0, -1)) == downs and time.monotonic() < deadline:
        time.sleep(0.02)
    fleet.client.set(mode_key, "stop")
    for worker in workers:
        worker.join(20)
        assert worker.exitcode == 0

    opens = [
        (float(d), int(t)) for d, t in (n.split(":") for n in fleet.client.lrange(times_key, 0, -1))
    ]
    print(f"open times and trips: {opens}")
    grown, after_close = opens[:downs], opens[downs]
    assert len(grown) >= 4, opens
    assert [trips for _, trips in grown] == list(range(1, len(grown) + 1))
    assert grown[0][0] == pytest.approx(0.2, abs=1e-5)  # the first open: exact
    assert 0.36 - 1e-5 <= grown[1][0] <= 0.44 + 1e-5
    assert 0.72 - 1e-5 <= grown[2][0] <= 0.88 + 1e-5
    assert all(duration == pytest.approx(1.0, abs=1e-5) for duration, _ in grown[3:])  # capped
    assert after_close == (pytest.approx(0.2, abs=1e-5), 1)  # reset by the close
    notes = fleet.notes()
    assert notes.count("half-open>closed") == 1
    assert notes.count("closed>open") == 2  # the first trip, and the one after the close
    assert notes.count("half-open>open") == len(grown) - 1  # each a failed trial


# -- the bulkhead: never more than N calls in flight across 4 processes ------------------------

# Counts the calls inside the downstream and keeps the highest count seen, atomically.
ENTER = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""


def _crowd(fleet: Fleet, barrier: Barrier, threads: int, seconds: float) -> None:
    breaker = fleet.breaker()
    inside, highest = f"{fleet.calls_key}:inside", f"{fleet.calls_key}:highest"
    enter = fleet.client.register_script(ENTER)

    def downstream() -> None:
        enter(keys=[inside, highest])
        fleet.client.incr(fleet.calls_key)
        time.sleep(0.02)
        fleet.client.decr(inside)

    def caller() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                breaker.call(downstream)
            except BulkheadFullError:
                fleet.client.rpush(fleet.results_key, "full")

    barrier.wait()
    pool = [threading.Thread(target=caller) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def test_the_bulkhead_never_admits_more_than_its_limit_across_four_processes(
    redis_client: redis.Redis,
) -> None:
    limit = 3
    config = CircuitConfig(max_concurrent_calls=limit, bulkhead_wait=0.05)
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    fleet.run(_crowd, 4, FORK.Barrier(4), 3, 1.5)  # 12 callers for 3 slots

    highest = int(fleet.client.get(f"{fleet.calls_key}:highest") or 0)
    print(f"calls made {fleet.calls_made()}, highest in flight {highest}, limit {limit}")
    assert highest == limit  # reached, never passed
    assert fleet.calls_made() >= 20
    assert "full" in fleet.results()  # some callers waited out the bulkhead wait
    status = _status(fleet)
    assert (status.state, status.bulkhead, status.failures) == ("closed", limit, 0)


def test_a_sigkilled_holders_slot_lapses_with_its_lease(redis_client: redis.Redis) -> None:
    config = CircuitConfig(
        max_concurrent_calls=1, bulkhead_wait=0.1, half_open_timeout=1.0, slow_call_duration=0.9
    )
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    started = FORK.Event()
    worker = FORK.Process(target=_hold_the_trial, args=(fleet, started))
    worker.start()
    assert started.wait(10)
    held_from = time.monotonic()
    os.kill(worker.pid or 0, signal.SIGKILL)
    worker.join(10)

    breaker = fleet.breaker()
    with pytest.raises(BulkheadFullError) as full:
        breaker.call(fleet.healthy_service)  # the dead holder's slot is still taken
    assert (full.value.service, full.value.limit) == (fleet.name, 1)
    assert _status(fleet).in_flight == 1
    while True:
        try:
            assert breaker.call(fleet.healthy_service) == "ok"
            break
        except BulkheadFullError:
            assert time.monotonic() - held_from < 3, "the dead holder's slot never lapsed"
    waited = time.monotonic() - held_from
    print(f"admitted {waited:.2f} s after the holder took the slot (lease 1.0 s)")
    assert 0.5 < waited < 1.6
    assert fleet.calls_made() == 1
