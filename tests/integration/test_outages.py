"""Work survives real outages, on real prefork workers, a real Redis and the reference
services over HTTP: long downstream outages, a dead host, a service that hangs, a Redis
restart, a worker host killed, a next step that cannot be published.

Every setting that is a span of time runs at the defaults times FACTOR (printed), so every
ratio between them is the one users have; where a test changes one more, it says why.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

from intent.breaker import CircuitAdmin
from intent.dev.stack import WorkerProcess, running_worker
from intent.embedded import EmbeddedRedis
from intent.errors import ServiceUnavailableError
from intent.models import IntentResult
from intent.reference import ReferenceControl, ReferenceServices
from intent.runtime import get_runtime
from tasks import submit
from tasks.app import app
from tests.helpers import environment, request, scaled_env, stream_events, wait_until

pytestmark = pytest.mark.integration

FACTOR = 0.1
THRESHOLD = 5  # INTENT_CIRCUIT_FAILURE_THRESHOLD's default: a count, not a time


@pytest.fixture(autouse=True)
def _print_factor() -> None:
    print(f"time settings at the defaults x {FACTOR}: {scaled_env(FACTOR)}")


def new_requests(tag: str, count: int, **overrides: Any) -> list[dict[str, Any]]:
    """``count`` analyses of contexts never seen before (no cache entry to fall back on)."""
    run = uuid.uuid4().hex[:8]
    return [
        request(
            request_id=f"{tag}-{run}-{i}",
            context_id=f"ctx-{tag}-{run}-{i}",
            client_id=f"{tag}-{i % 10}",
            **overrides,
        )
        for i in range(count)
    ]


def results(ids: list[str], timeout: float) -> list[IntentResult]:
    """The analyses' results, waiting for each (polling: a Redis restart may drop a
    subscription, not the result)."""
    out = []
    for rid in ids:
        handle = AsyncResult(rid, app=app)
        wait_until(lambda handle=handle: _ready(handle), timeout, f"the result of {rid}")
        out.append(IntentResult.model_validate(handle.get(timeout=5)))
    return out


def _ready(handle: AsyncResult) -> bool:
    try:
        return bool(handle.ready())
    except (redis.RedisError, OSError):
        return False


def api_and_health(control: ReferenceControl, since: float = 0.0) -> list[dict[str, Any]]:
    return [r for r in control.requests_log() if float(r["time"]) >= since]


@pytest.fixture
def scaled(reference: ReferenceServices, redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    env = scaled_env(FACTOR)
    with environment(env):
        yield env


def test_deferred_ten_times_and_retried_twice_then_deferred_five_times_all_complete(
    reference: ReferenceServices,
    redis_client: redis.Redis,
    context_service: ReferenceControl,
) -> None:
    """Celery's own retry counter ended every step at its fourth re-run; here a step waits
    through ten open cycles of its breaker. The recovery timeout is a tenth of the scaled
    default so that ten cycles fit before the (scaled) deadline; the break does not grow
    (INTENT_CIRCUIT_BREAK_FACTOR=1, the default, said here as the test depends on it: with
    factor 2 the cycles would last 0.5, 1, 2, 4, 8 s, five in the 18 s; the growing break
    is tested in test_breaker_contract.py and test_breaker_policy_fleet.py)."""
    env = scaled_env(FACTOR, circuit_recovery_timeout=0.5, circuit_break_factor=1)
    with environment(env), running_worker(concurrency=4, env=env) as worker:
        context_service.set_faults(down=True, include_health=True)  # the whole host is down
        # Two analyses meet the outage: their failures (two retries each) trip the breaker,
        # then they take turns at its trial calls, each a failure that reopens it.
        ids = [submit(r).request_id for r in new_requests("cycles", 2)]
        admin = CircuitAdmin(get_runtime().breaker_store)
        wait_until(
            lambda: admin.status("context-service").state == "open", 10, "the breaker to open"
        )
        time.sleep(18)  # thirty open cycles and more: recovery 0.5 s, a failed trial each
        context_service.clear_faults()
        done = results(ids, timeout=30)
        worker.stop()

    assert all(r.status == "completed" for r in done), [r.status for r in done]
    deferrals = [r.deferrals.get("fetch_context", 0) for r in done]
    retries = [r.retries.get("fetch_context", 0) for r in done]
    print(f"deferrals {deferrals}, retries {retries}")
    assert max(deferrals) >= 10
    assert any(r == 2 and d >= 5 for r, d in zip(retries, deferrals, strict=True))
    assert all(r <= 3 for r in retries)  # the transient budget, never Celery's counter


def test_a_dead_host_opens_the_breaker_after_at_most_threshold_requests(
    scaled: dict[str, str], context_service: ReferenceControl
) -> None:
    """The Context Service's whole host is down, /health too: version probes go through
    the breaker, so 40 analyses on 8 processes send it at most failure_threshold requests
    before the breaker opens, and none until its recovery timeout."""
    recovery = float(scaled["INTENT_CIRCUIT_RECOVERY_TIMEOUT"])
    with running_worker(concurrency=8, env=scaled) as worker:
        context_service.set_faults(down=True, include_health=True)
        started = time.time()
        ids = [submit(r).request_id for r in new_requests("deadhost", 40)]
        admin = CircuitAdmin(get_runtime().breaker_store)
        status = wait_until(
            lambda: (s := admin.status("context-service")).state == "open" and s,
            10,
            "the breaker to open",
        )
        assert status.opened_at is not None
        first_cycle_ends = status.opened_at + recovery
        time.sleep(max(0.0, first_cycle_ends - 0.2 - time.time()))
        before_trials = [
            r for r in api_and_health(context_service, started) if r["time"] < first_cycle_ends
        ]
        context_service.clear_faults()
        done = results(ids, timeout=60)
        worker.stop()

    paths = Counter(
        str(r["path"]).split("/")[-1] if "health" not in r["path"] else "/health"
        for r in before_trials
    )
    print(f"requests reaching the dead host before the first trial: {len(before_trials)} {paths}")
    assert 1 <= len(before_trials) <= THRESHOLD
    assert all(r.status == "completed" for r in done)


def test_a_hanging_service_receives_no_new_call_after_the_slow_call_duration(
    scaled: dict[str, str],
    context_service: ReferenceControl,
) -> None:
    """Calls that hang are counted before their read timeout: once the first call has been
    in flight for the slow-call duration, the calls in flight count as pending failures, so
    the fleet starts no new call (there are more of them than failure_threshold) until the
    breaker's recovery timeout, although analyses keep arriving at 20 a second."""
    slow = float(scaled["INTENT_CIRCUIT_SLOW_CALL_DURATION"])
    recovery = float(scaled["INTENT_CIRCUIT_RECOVERY_TIMEOUT"])
    with running_worker(concurrency=8, env=scaled) as worker:
        ids = [submit(r).request_id for r in new_requests("warm", 8)]
        results(ids, timeout=20)  # the version verdict is fresh; the breaker is closed
        context_service.clear_requests()
        hang = time.time()
        context_service.set_faults(latency_ms=20_000, match="/api/")  # answers nothing
        inflow = new_requests("hang", 60)
        for payload in inflow:  # a steady inflow of 20 analyses per second
            ids.append(submit(payload).request_id)
            time.sleep(0.05)
        received = api_and_health(context_service)
        context_service.clear_faults()
        done = results(ids, timeout=90)
        worker.stop()

    quiet_from = hang + slow + 0.3  # the slow-call duration, and the refusals' propagation
    late = [r for r in received if quiet_from <= r["time"] < hang + recovery]
    print(f"calls into the hang: {len(received)}; after {slow} s: {len(late)}")
    assert len(received) >= THRESHOLD  # enough in flight to trip it by themselves
    assert late == [], [(round(r["time"] - hang, 3), r["path"]) for r in received]
    assert all(r.status == "completed" for r in done)


def test_a_redis_restart_mid_load_loses_and_duplicates_nothing(
    session_redis: EmbeddedRedis, scaled: dict[str, str], context_service: ReferenceControl
) -> None:
    """Redis (append-only, fsync every second) restarts on the same port while analyses
    run: down for most of the outage tolerance."""
    own_redis = session_redis
    tolerance = float(scaled["INTENT_REDIS_OUTAGE_TOLERANCE"])
    with running_worker(concurrency=4, env=scaled) as worker:
        payloads = new_requests("restart", 60)
        ids: list[str] = []
        for i, payload in enumerate(payloads):
            if i == 30:
                own_redis.stop()  # a restart: down for most of the outage tolerance
                time.sleep(tolerance * 0.7)
                own_redis.start()
            # A web app whose submit() met the restart sends again (nothing was enqueued).
            wait_until(lambda payload=payload: _submitted(payload, ids), 30, "a submit")
            time.sleep(0.05)
        done = results(ids, timeout=120)
        client = redis.Redis.from_url(own_redis.url)
        events = stream_events(client)
        client.close()
        worker.stop()

    assert len(done) == len(payloads)
    assert all(r.status == "completed" for r in done), Counter(r.status for r in done)
    event_ids = [e.id for e in events]
    assert len(event_ids) == len(set(event_ids))  # none duplicated
    assert {e.request_id for e in events} == set(ids)
    assert len(events) == sum(r.published for r in done)


def _submitted(payload: dict[str, Any], ids: list[str]) -> bool:
    try:
        ids.append(submit(payload).request_id)
    except (ServiceUnavailableError, redis.RedisError, OSError):
        return False
    return True


def test_a_killed_worker_hosts_analyses_complete_on_a_new_worker_before_their_deadline(
    scaled: dict[str, str],
    prediction_service: ReferenceControl,
) -> None:
    """SIGKILL to the worker's whole process group while analyses are in flight; the
    broker hands their messages to a new worker after the visibility timeout."""
    deadline_span = float(scaled["INTENT_ANALYSIS_DEADLINE"])
    worker = WorkerProcess(4, env=scaled, loglevel="INFO")
    try:
        worker.wait_ready()
        prediction_service.set_faults(latency_ms=1500)  # predict steps stay in flight
        ids = [submit(r).request_id for r in new_requests("killed", 8)]
        submitted = time.time()
        wait_until(lambda: len(prediction_service.requests_log()) >= 4, 20, "calls in flight")
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
    finally:
        worker.stop()
    prediction_service.clear_faults()
    with running_worker(concurrency=4, env=scaled) as replacement:
        done = results(ids, timeout=deadline_span)
        finished = time.time()
        replacement.stop()
    print(f"all done {finished - submitted:.1f} s after submission (deadline {deadline_span} s)")
    assert all(r.status == "completed" for r in done), Counter(r.status for r in done)
    assert finished - submitted < deadline_span


def test_a_next_step_that_cannot_be_published_is_redelivered_not_failed(
    session_redis: EmbeddedRedis, scaled: dict[str, str], prediction_service: ReferenceControl
) -> None:
    """Redis goes away while a step runs and stays away past the outage tolerance: the step
    cannot publish its next one, so its message is left unacked and comes back after the
    visibility timeout; the analysis completes, its events published once."""
    own_redis = session_redis
    tolerance = float(scaled["INTENT_REDIS_OUTAGE_TOLERANCE"])
    with running_worker(concurrency=2, env=scaled) as worker:
        prediction_service.clear_requests()
        prediction_service.set_faults(latency_ms=600, count=1)  # the first predict is slow
        (payload,) = new_requests("publish", 1)
        rid = submit(payload).request_id
        wait_until(lambda: prediction_service.requests_log(), 20, "the predict call")
        own_redis.stop()
        time.sleep(tolerance + 2)  # past every publish retry
        own_redis.start()
        (done,) = results([rid], timeout=60)
        client = redis.Redis.from_url(own_redis.url)
        events = stream_events(client, rid)
        client.close()
        worker.stop()
    predicts = [r for r in prediction_service.requests_log() if "predict" in str(r["path"])]
    assert done.status == "completed"
    assert len(predicts) == 2  # the step ran again: redelivered
    assert len({e.id for e in events}) == len(events) == done.published > 0
