"""The four steps of an analysis, as plain functions over :class:`IntentResult`, with
their fallbacks and the deadline rule.

Each Celery task in ``tasks/`` runs one step through :func:`run_step`; ``run_local``
chains them in-process (``intent submit --local``) with the same retry schedule.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from intent import tracing
from intent.errors import ServiceRequestError
from intent.events.publisher import build_events
from intent.models import Context, IntentRequest, IntentResult, PredictionSet
from intent.pipeline import recovery
from intent.runtime import Runtime

Step = Callable[[Runtime, IntentResult], IntentResult]
# A fallback answers a step whose service is unavailable (breaker open, retries spent):
# a degraded result, or None when it has nothing to offer.
Fallback = Callable[[Runtime, IntentResult, Exception], IntentResult | None]


def parse_body(
    model: type[Context] | type[PredictionSet], service: str, body: dict[str, Any]
) -> Any:
    try:
        return model.model_validate(body)
    except ValueError as exc:
        # The service answered 2xx with something that is not its API: not retryable.
        raise ServiceRequestError(service, 200, f"unexpected response: {exc}") from None


def fetch_context(rt: Runtime, result: IntentResult) -> IntentResult:
    """The request's context: a fresh cache entry, else the Context Service (cached)."""
    request = result.request
    client = rt.clients.context
    if request.context_id is not None:
        cached = rt.context_cache.get(request.context_id)
        if cached is not None and cached.fresh:
            tracing.event("cache.hit", context_id=request.context_id, age=round(cached.age, 3))
            return result.model_copy(update={"context": cached.context})
        body = client.get_context(request.context_id)
    else:
        assert request.data is not None
        body = client.analyze_context(request.data)
    context = parse_body(Context, client.service, body)
    rt.context_cache.put(context)
    return result.model_copy(update={"context": context})


def predict(rt: Runtime, result: IntentResult) -> IntentResult:
    assert result.context is not None, "predict needs the context step's output"
    client = rt.clients.prediction
    body = client.get_predictions(result.request.pattern_id, result.context.model_dump())
    predictions = parse_body(PredictionSet, client.service, body)
    return result.model_copy(update={"predictions": predictions})


def detect_pattern(rt: Runtime, result: IntentResult) -> IntentResult:
    assert result.context is not None and result.predictions is not None
    pattern = rt.detector.detect(
        request_id=result.request.request_id,
        context_id=result.context.context_id,
        pattern_id=result.request.pattern_id,
        predictions=result.predictions,
        context_hash=result.context.content_hash(),
        live="predictions" not in result.fallbacks,
    )
    return result.model_copy(update={"pattern": pattern})


def emit_events(rt: Runtime, result: IntentResult) -> IntentResult:
    events = build_events(result)
    added = rt.publisher.publish(events)
    return result.model_copy(
        update={"events": events, "published": sum(1 for a in added if a), "status": "completed"}
    )


def stale_context(rt: Runtime, result: IntentResult, exc: Exception) -> IntentResult | None:
    """Serve the cached context, however old, when the Context Service cannot answer."""
    context_id = result.request.context_id
    cached = rt.context_cache.get(context_id) if context_id is not None else None
    if cached is None:
        return None
    tracing.event("cache.stale", context_id=context_id, age=round(cached.age, 3))
    reason = f"cached context from {cached.age:.0f} s ago served; {exc}"
    return result.degrade("context", reason, context=cached.context)


def last_predictions(rt: Runtime, result: IntentResult, exc: Exception) -> IntentResult | None:
    """Serve the last live predictions for the same (context, pattern)."""
    assert result.context is not None
    previous = rt.detector.last_predictions(result.context.context_id, result.request.pattern_id)
    if previous is None:
        return None
    return result.degrade(
        "predictions", f"last known predictions served; {exc}", predictions=previous
    )


def lane_of(step: str, request: IntentRequest) -> str:
    """The endpoint a step calls (where it waits to run again: intent/waiting.py)."""
    if step == "fetch_context":
        return "get_context" if request.context_id is not None else "analyze_context"
    return "predict" if step == "predict" else "other"


STEPS: tuple[tuple[str, Step], ...] = (
    ("fetch_context", fetch_context),
    ("predict", predict),
    ("detect_pattern", detect_pattern),
    ("emit_events", emit_events),
)
STEP_FUNCTIONS: dict[str, Step] = dict(STEPS)


def step_task_ids(request_id: str, last_id: str, prefix: str = "") -> list[str]:
    """Each step's task id: ``{request_id}.{prefix}{step}``, the last one ``last_id`` (the
    id callers wait on: the analysis id, or the batch id)."""
    return [f"{request_id}.{prefix}{name}" for name, _ in STEPS[:-1]] + [last_id]


FALLBACKS: dict[str, Fallback] = {"fetch_context": stale_context, "predict": last_predictions}


def use_fallback(
    rt: Runtime, name: str, result: IntentResult, exc: Exception
) -> IntentResult | None:
    """Step ``name``'s fallback answer for ``result`` (None: it has none), traced."""
    fallback = FALLBACKS.get(name)
    degraded = fallback(rt, result, exc) if fallback is not None else None
    if degraded is not None:
        tracing.event(
            "fallback.used",
            fallback=degraded.fallbacks[-1],
            step=name,
            request_id=result.request.request_id,
            error=type(exc).__name__,
            reason=str(exc)[:200],
        )
    return degraded


def expire_if_late(name: str, result: IntentResult, now: float) -> IntentResult | None:
    """The result marked expired when its deadline has passed, else None."""
    deadline = result.request.deadline
    if result.status == "expired":
        return result
    if deadline is not None and now > deadline:
        return result.model_copy(update={"status": "expired", "expired_at": name})
    return None


def run_step(
    rt: Runtime, name: str, result: IntentResult, now: float | None = None
) -> IntentResult:
    """One step, unless the analysis is past its deadline: then nothing is called and the
    result says ``expired`` (the later steps pass it on)."""
    late = expire_if_late(name, result, time.time() if now is None else now)
    if late is not None:
        return late
    return STEP_FUNCTIONS[name](rt, result)


def with_deadline(
    request: IntentRequest, seconds: float, now: float | None = None
) -> IntentRequest:
    """The request with its default deadline filled in."""
    if request.deadline is not None:
        return request
    return request.model_copy(update={"deadline": (now or time.time()) + seconds})


def recover(
    rt: Runtime,
    name: str,
    exc: Exception,
    current: IntentResult,
    now: float | None = None,
    rand: Callable[[], float] = random.random,
) -> IntentResult | recovery.Wait[IntentResult]:
    """The recovery decision for failed step ``name``, carried out as far as the domain
    goes: a fallback's degraded result or an expired one to go on with, or the wait (retry
    or deferral) for the caller to carry out; a failure is raised."""
    now = time.time() if now is None else now
    budgets = recovery.Budgets.from_settings(rt.settings)
    error = recovery.as_domain_error(exc)
    attempt = recovery.Attempt(
        name, current.retries.get(name, 0), current.deferred_seconds, current.request.deadline
    )
    decision = recovery.decide(error, attempt, budgets, now, rand, spend=rt.spend_retry)
    if decision.fallback:
        degraded = use_fallback(rt, name, current, error)
        if degraded is not None:
            return degraded
    then = decision.then
    if isinstance(then, recovery.Expire):
        return current.model_copy(update={"status": "expired", "expired_at": name})
    if isinstance(then, recovery.Fail):
        if then.error is exc:
            raise exc
        raise then.error from exc
    if isinstance(then, recovery.Retry):
        following = current.with_retries(name, then.retry, due=now + then.countdown)
    else:
        following = current.with_deferral(name, now).with_retries(name, then.retry or 0)
    latest = recovery.release_by(then, attempt, budgets, now)
    return recovery.Wait(name, then, following, lane_of(name, current.request), latest)


def run_local(
    rt: Runtime,
    request: IntentRequest,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> IntentResult:
    """Run the whole analysis in this process, each failed step recovered as a worker
    would (the same decision), its waits slept here."""
    result = IntentResult(
        request=with_deadline(request, rt.settings.analysis_deadline), submitted_at=time.time()
    )
    for name, _ in STEPS:
        while True:
            result = result.resumed(time.time())
            try:
                result = run_step(rt, name, result)
                break
            except Exception as exc:
                outcome = recover(rt, name, exc, result, rand=rand)
            if not isinstance(outcome, recovery.Wait):
                result = outcome
                break
            sleep(outcome.delay)
            result = outcome.result
    return result
