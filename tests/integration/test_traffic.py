"""Traffic control and degradation on real Redis, the reference services and an in-process
worker: shared rate limits, intake per client, stale context, prediction fallback,
deadlines, version compatibility."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from intent.breaker import CircuitAdmin
from intent.errors import (
    IncompatibleServiceError,
    RateLimitExceeded,
    RetriesExhaustedError,
    ServiceUnavailableError,
)
from intent.models import Context, IntentEvent
from intent.ratelimit import INTAKE, RateLimits
from intent.reference import ReferenceControl
from intent.runtime import get_runtime, reset_runtime
from intent.settings import load_settings
from tasks import submit
from tasks.app import app
from tests.helpers import request
from tests.integration.conftest import api_calls

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("inprocess_worker")]


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, clean: redis.Redis) -> Iterator[Any]:
    """Change INTENT_* settings for this test (worker threads included)."""

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        reset_runtime()

    yield apply
    monkeypatch.undo()
    reset_runtime()


# -- shared limits ---------------------------------------------------------------------

LIMIT, PERIOD = 20, 1


def _hammer(url: str, barrier: Any, out: Any) -> None:
    os.environ["INTENT_REDIS_URL"] = url
    os.environ["INTENT_RATE_LIMIT_PREDICT"] = str(LIMIT)
    os.environ["INTENT_DOWNSTREAM_RATE_PERIOD"] = str(PERIOD)
    settings = load_settings()
    from intent.keys import Keys

    limit = RateLimits(settings, Keys(settings.key_prefix))["predict"]
    barrier.wait()
    admitted: list[tuple[float, float]] = []
    stop = time.time() + 2.5
    while time.time() < stop:
        before = time.time()
        try:
            limit.hit()
        except RateLimitExceeded as exc:
            assert exc.retry_after > 0
            time.sleep(min(exc.retry_after, 0.01))
            continue
        admitted.append((before, time.time()))
    out.put(admitted)


def test_four_processes_never_exceed_the_limit_in_any_window(clean: redis.Redis) -> None:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    url = os.environ["INTENT_REDIS_URL"]
    procs = [ctx.Process(target=_hammer, args=(url, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    admitted = sorted(a for _ in procs for a in out.get(timeout=30))
    for p in procs:
        p.join(timeout=10)

    assert len(admitted) >= 2 * LIMIT  # the limit let work through, window after window
    # A hit admitted inside [start, start + PERIOD) for sure began and ended inside it;
    # counting only those, no window may hold more than LIMIT.
    for start, _ in admitted:
        inside = [1 for b, e in admitted if b >= start and e < start + PERIOD]
        assert len(inside) <= LIMIT


def test_a_downstream_limit_defers_and_every_analysis_completes(
    settings_env: Any, context_service: ReferenceControl
) -> None:
    settings_env(
        INTENT_RATE_LIMIT_GET_CONTEXT="3",
        INTENT_DOWNSTREAM_RATE_PERIOD="1",
        INTENT_DEFER_JITTER="0.1",
    )
    tag = uuid.uuid4().hex[:6]
    analyses = [
        submit(request(request_id=f"rl-{tag}-{i}", context_id=f"ctx-rl-{i}")) for i in range(9)
    ]
    results = [a.get(timeout=60) for a in analyses]

    assert all(r.status == "completed" for r in results)
    assert all(r.retries == {} for r in results)  # a deferral is not a retry
    assert sum(r.deferrals.get("fetch_context", 0) for r in results) >= 6
    assert len(api_calls(context_service)) == 9  # each context fetched once, none refused


def test_the_101st_analysis_of_a_client_is_refused(settings_env: Any) -> None:
    settings_env()  # defaults: 100 analyses per client per 60 s
    client = f"web-{uuid.uuid4().hex[:6]}"
    for _ in range(100):
        submit(request(client_id=client))
    with pytest.raises(RateLimitExceeded) as info:
        submit(request(client_id=client))
    assert 0 < info.value.retry_after <= 60
    by_name = app.send_task("intent.analyze", args=[request(client_id=client)])
    with pytest.raises(RateLimitExceeded):
        by_name.get(timeout=15)
    assert submit(request(client_id=f"{client}-other")).get(timeout=30).status == "completed"
    limit = get_runtime().rate_limits[INTAKE]
    assert limit.get_current_rate(client) == 100
    limit.reset(client)
    assert limit.get_current_rate(client) == 0


# -- cache and fallbacks ------------------------------------------------------------------


def test_a_fresh_cache_entry_skips_the_context_service(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    first = submit(request(context_id="ctx-cache")).get(timeout=30)
    second = submit(request(context_id="ctx-cache")).get(timeout=30)
    assert second.context == first.context
    assert len(api_calls(context_service)) == 1
    assert get_runtime().context_cache.invalidate("ctx-cache")
    submit(request(context_id="ctx-cache")).get(timeout=30)
    assert len(api_calls(context_service)) == 2


def _age_cache_entry(context_id: str, seconds: float) -> Context:
    cache = get_runtime().context_cache
    entry = cache.get(context_id)
    assert entry is not None
    cache.put(entry.context, now=time.time() - seconds)
    return entry.context


def test_stale_context_is_served_when_the_service_is_down(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    submit(request(context_id="ctx-stale")).get(timeout=30)
    cached = _age_cache_entry("ctx-stale", 3600)
    context_service.set_faults(down=True)

    result = submit(request(context_id="ctx-stale")).get(timeout=30)

    assert result.status == "completed"
    assert result.context == cached
    assert result.degraded and result.fallbacks == ["context"]
    assert "cached context" in result.degraded_reasons[0]
    assert "context-service" in result.degraded_reasons[0]


def test_stale_context_is_served_at_once_when_the_breaker_is_open(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    submit(request(context_id="ctx-open")).get(timeout=30)
    _age_cache_entry("ctx-open", 3600)
    context_service.clear_requests()
    admin = CircuitAdmin(get_runtime().breaker_store)
    admin.force_open("context-service", "test")
    try:
        result = submit(request(context_id="ctx-open")).get(timeout=30)
    finally:
        admin.reset("context-service")
    assert result.degraded and result.fallbacks == ["context"]
    assert "open" in result.degraded_reasons[0]
    assert api_calls(context_service) == []
    assert result.deferrals == {} and result.retries == {}


def test_last_known_predictions_are_served_without_prediction_received(
    clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    live = submit(request(context_id="ctx-fallback")).get(timeout=30)
    prediction_service.set_faults(status=503)

    result = submit(request(context_id="ctx-fallback")).get(timeout=30)

    assert result.status == "completed"
    assert result.predictions == live.predictions
    assert result.degraded and result.fallbacks == ["predictions"]
    assert IntentEvent.PREDICTION_RECEIVED in [e.type for e in live.events]
    assert IntentEvent.PREDICTION_RECEIVED not in [e.type for e in result.events]


def test_without_a_fallback_the_analysis_fails_as_before(
    clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    prediction_service.set_faults(status=503)
    with pytest.raises(RetriesExhaustedError):
        submit(request(context_id="ctx-never-seen")).get(timeout=30)


# -- deadlines ------------------------------------------------------------------------------


def test_an_analysis_past_its_deadline_stops_without_calling_downstream(
    clean: redis.Redis, context_service: ReferenceControl, prediction_service: ReferenceControl
) -> None:
    payload = request(deadline=time.time() - 1)
    result = submit(payload).get(timeout=30)

    assert (result.status, result.expired_at) == ("expired", "fetch_context")
    assert result.events == [] and result.pattern is None
    assert api_calls(context_service) == [] and api_calls(prediction_service) == []


def test_a_deadline_passing_mid_analysis_stops_at_the_next_step(
    clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    prediction_service.set_faults(latency_ms=1000)
    result = submit(request(deadline=time.time() + 0.5)).get(timeout=30)
    assert (result.status, result.expired_at) == ("expired", "detect_pattern")
    assert result.events == []


def test_waiting_for_a_breaker_past_the_deadline_expires_at_once(clean: redis.Redis) -> None:
    admin = CircuitAdmin(get_runtime().breaker_store)
    admin.force_open("context-service", "test")
    try:
        started = time.monotonic()
        result = submit(request(context_id="ctx-no-cache", deadline=time.time() + 1)).get(
            timeout=30
        )
    finally:
        admin.reset("context-service")
    assert (result.status, result.expired_at) == ("expired", "fetch_context")
    assert time.monotonic() - started < 1.0


# -- version compatibility ---------------------------------------------------------------------


@pytest.fixture
def version_2(context_service: ReferenceControl) -> Iterator[ReferenceControl]:
    context_service.set_version("2.0.0")
    time.sleep(0.35)  # INTENT_VERSION_CHECK_INTERVAL: the workers' verdicts lapse
    yield context_service
    context_service.set_version("1.0.0")
    time.sleep(0.35)


def test_an_incompatible_context_service_is_refused_not_called(
    clean: redis.Redis, version_2: ReferenceControl
) -> None:
    with pytest.raises(IncompatibleServiceError) as info:
        submit(request(context_id="ctx-v2")).get(timeout=30)
    assert isinstance(info.value, ServiceUnavailableError)
    assert "incompatible version 2.0.0" in str(info.value)
    assert api_calls(version_2) == []


def test_semver_rule() -> None:
    from intent.clients import compatible

    assert compatible("1.0.0", "1.0.0") and compatible("1.4.2", "1.0.0")
    assert compatible("v1.2", "1.0.0") and compatible("1.3.0-rc1", "1.0.0")
    assert not compatible("2.0.0", "1.0.0") and not compatible("0.9.9", "1.0.0")
    assert not compatible("1.0.0", "1.2.0") and not compatible("", "1.0.0")
    assert not compatible("banana", "1.0.0")
