"""The four steps of an analysis, as plain functions over :class:`IntentResult`, with
their fallbacks and the deadline rule.

Each Celery task in ``tasks/`` runs one step through :func:`run_step`; ``run_local``
chains them in-process (``intent submit --local``) with the same retry schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from intent.errors import ServiceRequestError
from intent.events import build_events
from intent.models import Context, IntentRequest, IntentResult, PredictionSet
from intent.retry import RetryHandler
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


STEPS: tuple[tuple[str, Step], ...] = (
    ("fetch_context", fetch_context),
    ("predict", predict),
    ("detect_pattern", detect_pattern),
    ("emit_events", emit_events),
)
STEP_FUNCTIONS: dict[str, Step] = dict(STEPS)
FALLBACKS: dict[str, Fallback] = {"fetch_context": stale_context, "predict": last_predictions}


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


def run_local(rt: Runtime, request: IntentRequest, retry: RetryHandler) -> IntentResult:
    """Run the whole analysis in this process, each step retried on transient errors."""
    result = IntentResult(request=with_deadline(request, rt.settings.analysis_deadline))
    for name, _ in STEPS:
        attempts = 0

        def attempt(name: str = name, current: IntentResult = result) -> IntentResult:
            nonlocal attempts
            attempts += 1
            return run_step(rt, name, current)

        result = retry.with_retry(attempt, rt.settings.retry_after_max)
        result = result.with_retries(name, attempts - 1)
    return result
