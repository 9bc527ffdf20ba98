"""Races across worker processes on one Redis: processes are forked, start together behind a
barrier, and report through Redis lists and counters. Each test asserts counts (transitions,
notifications, trial calls, calls that reached a dead service), never speeds."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import pytest
import redis

from intent.breaker import (
    CircuitAdmin,
    CircuitBreaker,
    CircuitBreakerListener,
    CircuitConfig,
    CircuitOpenError,
    CircuitState,
    RedisStore,
)

pytestmark = pytest.mark.integration

FORK = multiprocessing.get_context("fork")  # fast to start, and the way prefork workers begin


class RedisNotes(CircuitBreakerListener):
    """Pushes every state change this process is told about onto a Redis list."""

    def __init__(self, url: str, key: str):
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.key = key

    def state_change(
        self, cb: CircuitBreaker, old_state: CircuitState | None, new_state: CircuitState
    ) -> None:
        old = old_state.name if old_state else "none"
        self.client.rpush(self.key, f"{old}>{new_state.name}")


class Fleet:
    """Names, keys and process plumbing for one test's breaker."""

    def __init__(self, url: str, config: CircuitConfig):
        self.url = url
        self.config = config
        self.name = f"fleet-{uuid.uuid4().hex[:8]}"
        self.notes_key = f"intent:test:{self.name}:notes"
        self.calls_key = f"intent:test:{self.name}:calls"
        self.results_key = f"intent:test:{self.name}:results"
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def breaker(self, **options: Any) -> CircuitBreaker:
        """A breaker as a worker process builds it: its own client, a notifying listener."""
        return CircuitBreaker(
            self.name,
            self.config,
            store=RedisStore.from_url(self.url),
            listeners=[RedisNotes(self.url, self.notes_key)],
            **options,
        )

    def run(self, target: Any, processes: int, *args: Any, timeout: float = 20) -> None:
        workers = [FORK.Process(target=target, args=(self, *args)) for _ in range(processes)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout)
            assert worker.exitcode == 0, f"worker exited with {worker.exitcode}"

    def notes(self) -> list[str]:
        return [str(note) for note in self.client.lrange(self.notes_key, 0, -1)]

    def results(self) -> list[str]:
        return [str(result) for result in self.client.lrange(self.results_key, 0, -1)]

    def calls_made(self) -> int:
        return int(self.client.get(self.calls_key) or 0)

    def dead_service(self, delay: float = 0.0) -> None:
        """The downstream, dead: counts the call, then fails as a refused connection does."""
        self.client.incr(self.calls_key)
        if delay:
            time.sleep(delay)
        raise ConnectionRefusedError("connection refused")

    def healthy_service(self, delay: float = 0.0) -> str:
        self.client.incr(self.calls_key)
        if delay:
            time.sleep(delay)
        return "ok"


# -- one trip, one notification ----------------------------------------------------------


def _fail_together(fleet: Fleet, barrier: Barrier) -> None:
    breaker = fleet.breaker()
    barrier.wait()
    for _ in range(3):
        try:
            breaker.call(fleet.dead_service, 0.01)
        except CircuitOpenError as refused:
            fleet.client.rpush(fleet.results_key, f"refused:{refused.until is not None}")
        except ConnectionRefusedError:
            fleet.client.rpush(fleet.results_key, "failed")


def test_sixteen_processes_failing_at_once_trip_it_once(redis_client: redis.Redis) -> None:
    config = CircuitConfig(failure_threshold=5, min_throughput=5, recovery_timeout=30)
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    fleet.run(_fail_together, 16, FORK.Barrier(16))

    assert fleet.notes() == ["closed>open"]  # one transition, one notification fleet-wide
    status = CircuitAdmin(RedisStore.from_url(fleet.url)).status(fleet.name)
    assert (status.state, status.generation) == ("open", 1)
    assert status.reason.startswith("5 failures in the last 120 s")
    results = fleet.results()
    assert len(results) == 48
    assert results.count("failed") == fleet.calls_made() <= 16  # one call each at most
    assert results.count("refused:True") == 48 - fleet.calls_made()


# -- half-open: a limited number of trials fleet-wide -----------------------------------------


def _call_when_released(fleet: Fleet, barrier: Barrier) -> None:
    breaker = fleet.breaker()
    barrier.wait()
    try:
        breaker.call(fleet.healthy_service, 0.5)
        fleet.client.rpush(fleet.results_key, "trial")
    except CircuitOpenError as refused:
        fleet.client.rpush(fleet.results_key, f"refused:{refused.until}")


@pytest.mark.parametrize("trials", [1, 3])
def test_after_the_recovery_timeout_only_the_permitted_trials_run(
    redis_client: redis.Redis, trials: int
) -> None:
    config = CircuitConfig(recovery_timeout=0.4, half_open_timeout=2.0, half_open_max_calls=trials)
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    opener = fleet.breaker()
    opener.open()
    barrier = FORK.Barrier(17)
    workers = [FORK.Process(target=_call_when_released, args=(fleet, barrier)) for _ in range(16)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # past the recovery timeout
    released_at = float(redis_client.time()[0])
    barrier.wait()
    for worker in workers:
        worker.join(20)
        assert worker.exitcode == 0

    results = fleet.results()
    assert results.count("trial") == fleet.calls_made() == trials
    refusals = [float(r.split(":", 1)[1]) for r in results if r.startswith("refused:")]
    assert len(refusals) == 16 - trials
    # refused until the first trial's lease lapses: about half_open_timeout from the start
    assert all(released_at < until < released_at + 4 for until in refusals), refusals
    notes = fleet.notes()
    assert notes.count("open>half-open") == 1
    assert notes.count("half-open>closed") == 1


# -- a trial whose worker dies ----------------------------------------------------------------


def _hold_the_trial(fleet: Fleet, started: Event) -> None:
    breaker = fleet.breaker()

    def hang() -> None:
        started.set()
        time.sleep(60)

    breaker.call(hang)


def test_a_killed_trial_lapses_and_another_is_admitted(redis_client: redis.Redis) -> None:
    config = CircuitConfig(recovery_timeout=0.2, half_open_timeout=0.8, recheck_interval=0.05)
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    breaker = fleet.breaker()
    breaker.open()
    time.sleep(0.25)
    started = FORK.Event()
    worker = FORK.Process(target=_hold_the_trial, args=(fleet, started))
    worker.start()
    assert started.wait(10)
    os.kill(worker.pid or 0, signal.SIGKILL)
    worker.join(10)

    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(fleet.healthy_service)
    lease_end = refused.value.until
    assert lease_end is not None
    seconds, micros = redis_client.time()
    now = seconds + micros / 1e6
    assert 0.3 < lease_end - now <= 0.8
    time.sleep(lease_end - now - 0.2)
    with pytest.raises(CircuitOpenError):  # still within the dead trial's lease
        breaker.call(fleet.healthy_service)
    time.sleep(0.3)
    assert breaker.call(fleet.healthy_service) == "ok"  # the next trial, which closes it
    assert breaker.current_state == "closed"
    assert fleet.notes() == ["closed>open", "open>half-open", "half-open>closed"]


# -- a dead downstream gets at most failure_threshold calls from the fleet --------------------


def _burst(fleet: Fleet, barrier: Barrier, warm: bool, delay: float, seconds: float) -> None:
    breaker = fleet.breaker()
    if warm:  # the service was healthy and every process had used the breaker
        barrier.wait()
        for _ in range(3):
            breaker.call(lambda: "ok")
    barrier.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            breaker.call(fleet.dead_service, delay)
        except CircuitOpenError:
            time.sleep(0.001)
        except ConnectionRefusedError:
            pass


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("delay", [0.0, 0.02], ids=["refused", "slow"])
def test_a_dead_service_gets_at_most_threshold_calls_from_several_processes(
    redis_client: redis.Redis, warm: bool, delay: float
) -> None:
    config = CircuitConfig(failure_threshold=5, min_throughput=5, recovery_timeout=30)
    for _ in range(2):
        fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
        fleet.run(_burst, 4, FORK.Barrier(4), warm, delay, 0.6)
        assert fleet.calls_made() <= config.failure_threshold
        assert fleet.notes() == ["closed>open"]


# -- operators' moves reach every process within the recheck interval ---------------------


def _refused_then_admitted(fleet: Fleet, barrier: Barrier, reset_done: Event) -> None:
    breaker = fleet.breaker()
    with pytest.raises(CircuitOpenError):
        breaker.call(fleet.healthy_service)  # open: this process now refuses locally
    barrier.wait()
    reset_done.wait(10)
    started = time.monotonic()
    while True:
        try:
            breaker.call(fleet.healthy_service)
        except CircuitOpenError:
            time.sleep(0.02)
            continue
        fleet.client.rpush(fleet.results_key, f"{time.monotonic() - started:.3f}")
        return


def test_an_operators_reset_reaches_every_process_within_the_recheck_interval(
    redis_client: redis.Redis,
) -> None:
    """Open for a minute (every process holds the refusal); an operator resets it: every
    process calls again within the recheck interval, not after the recovery timeout."""
    config = CircuitConfig(failure_threshold=1, min_throughput=1, recovery_timeout=60)
    fleet = Fleet(os.environ["INTENT_REDIS_URL"], config)
    with pytest.raises(ConnectionRefusedError):
        fleet.breaker().call(fleet.dead_service)  # trips it: open until a minute from now
    barrier, reset_done = FORK.Barrier(5), FORK.Event()
    workers = [
        FORK.Process(target=_refused_then_admitted, args=(fleet, barrier, reset_done))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    CircuitAdmin(RedisStore.from_url(fleet.url)).reset(fleet.name, "fixed")
    reset_done.set()
    for worker in workers:
        worker.join(20)
        assert worker.exitcode == 0
    waits = [float(w) for w in fleet.results()]
    assert len(waits) == 4
    assert max(waits) <= config.recheck_interval + 0.5, waits
