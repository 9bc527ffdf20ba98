"""The four steps of an analysis, as plain functions over :class:`IntentResult`.

Each Celery task in ``tasks/`` is one of these; ``run_local`` chains them in-process
(``intent submit --local``) with the same retry schedule.
"""

from __future__ import annotations

from collections.abc import Callable

from intent.errors import ServiceRequestError
from intent.events import build_events
from intent.models import Context, IntentRequest, IntentResult, PredictionSet
from intent.retry import RetryHandler
from intent.runtime import Runtime

Step = Callable[[Runtime, IntentResult], IntentResult]


def _parse(model: type[Context] | type[PredictionSet], service: str, body: dict) -> object:
    try:
        return model.model_validate(body)
    except ValueError as exc:
        # The service answered 2xx with something that is not its API: not retryable.
        raise ServiceRequestError(service, 200, f"unexpected response: {exc}") from None


def fetch_context(rt: Runtime, result: IntentResult) -> IntentResult:
    request = result.request
    client = rt.clients.context
    if request.context_id is not None:
        body = client.get_context(request.context_id)
    else:
        assert request.data is not None
        body = client.analyze_context(request.data)
    context = _parse(Context, client.service, body)
    return result.model_copy(update={"context": context})


def predict(rt: Runtime, result: IntentResult) -> IntentResult:
    assert result.context is not None, "predict needs the context step's output"
    client = rt.clients.prediction
    body = client.get_predictions(result.request.pattern_id, result.context.model_dump())
    predictions = _parse(PredictionSet, client.service, body)
    return result.model_copy(update={"predictions": predictions})


def detect_pattern(rt: Runtime, result: IntentResult) -> IntentResult:
    assert result.context is not None and result.predictions is not None
    pattern = rt.detector.detect(
        request_id=result.request.request_id,
        context_id=result.context.context_id,
        pattern_id=result.request.pattern_id,
        predictions=result.predictions,
        context_hash=result.context.content_hash(),
        live="predictions:fallback" not in result.degraded_reasons,
    )
    return result.model_copy(update={"pattern": pattern})


def emit_events(rt: Runtime, result: IntentResult) -> IntentResult:
    events = build_events(result)
    added = rt.publisher.publish(events)
    return result.model_copy(
        update={"events": events, "published": sum(1 for a in added if a), "status": "completed"}
    )


STEPS: tuple[tuple[str, Step], ...] = (
    ("fetch_context", fetch_context),
    ("predict", predict),
    ("detect_pattern", detect_pattern),
    ("emit_events", emit_events),
)


def run_local(rt: Runtime, request: IntentRequest, retry: RetryHandler) -> IntentResult:
    """Run the whole analysis in this process, each step retried on transient errors."""
    result = IntentResult(request=request)
    for name, step in STEPS:
        attempts = 0

        def attempt(step: Step = step, current: IntentResult = result) -> IntentResult:
            nonlocal attempts
            attempts += 1
            return step(rt, current)

        result = retry.with_retry(attempt, rt.settings.retry_after_max)
        result = result.with_retries(name, attempts - 1)
    return result
