"""The batch's Celery tasks: ``intent.analyze_batch`` validates a list of requests and
becomes a chain of four batch steps, each a thin wrapper around one step in ``intent.batch``."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Task, chain
from celery.result import AsyncResult

from intent import metrics
from intent.errors import (
    CircuitOpenError,
    IntentError,
    RateLimitExceeded,
    RetriesExhaustedError,
    ServiceError,
    ServiceUnavailableError,
)
from intent.models import BatchResult
from intent.pipeline.batch import (
    expire_pending,
    fail_pending,
    fallback_pending,
    pending,
    run_batch_step,
    settle_pending,
    start_batch,
)
from intent.retry import Backoff
from intent.runtime import get_runtime
from intent.settings import Settings, get_settings
from intent.validation import parse_model
from tasks.app import app
from tasks.base import (
    PipelineTask,
    _as_domain_error,
    chain_step_options,
    deferral_delay,
    log_fields,
)

log = logging.getLogger("intent.tasks")

STEP_NAMES = ("fetch_context", "predict", "detect_pattern", "emit_events")


def batch_max_size() -> int:
    """``INTENT_BATCH_MAX_SIZE``: the most requests one batch takes."""
    return get_settings().batch_max_size


def parse_batch(payload: Any) -> BatchResult:
    # A step's input carries up to a batch of analyses, contexts and predictions included.
    max_bytes = get_settings().max_payload_bytes * 8 * batch_max_size()
    return parse_model(BatchResult, payload, what="batch", max_bytes=max_bytes)


class BatchTask(PipelineTask):
    """Base of the batch steps: a failure of a step's bulk call is the single pipeline's
    retry, deferral or fallback, applied to the items it concerns; what cannot be
    recovered fails those items, not the batch."""

    abstract = True

    def recover_batch(self, step: str, exc: Exception, current: BatchResult) -> BatchResult:
        """Answer a failed step: the batch to continue with, or raise its retry or deferral."""
        settings = get_settings()
        rt = get_runtime()
        exc = _as_domain_error(step, exc)
        if isinstance(exc, IntentError):
            # The step raised with its decisions unreturned: keep what it did decide.
            current = settle_pending(rt, step, current, time.time())
            if not pending(step, current):
                return current
        if isinstance(exc, CircuitOpenError | RateLimitExceeded):
            if isinstance(exc, CircuitOpenError):
                current = fallback_pending(rt, step, current, exc)
            return self._defer_batch(step, exc, current, settings)
        if not isinstance(exc, IntentError):
            raise exc  # a bug, not a downstream failure: the batch fails loudly
        if not exc.transient:
            # Permanent for every pending item; an incompatible service's fallback may serve.
            if isinstance(exc, ServiceUnavailableError):
                current = fallback_pending(rt, step, current, exc)
            return fail_pending(step, current, exc)
        # request.retries counts every re-run of this step, deferrals included.
        spent = self.request.retries - current.deferrals.get(step, 0)
        if spent >= settings.retry_max:
            current = fallback_pending(rt, step, current, exc)
            service = exc.service if isinstance(exc, ServiceError) else step
            exhausted = RetriesExhaustedError(
                service, f"{step} failed after {spent} retries", str(exc)
            )
            return fail_pending(step, current, exhausted)
        countdown = Backoff.from_settings(settings).countdown(
            spent, getattr(exc, "retry_after", None), settings.retry_after_max
        )
        log.warning(
            "retrying batch %s %s in %.2f s (retry %d of %d): %s",
            current.batch_id, step, countdown, spent + 1, settings.retry_max, exc,
            extra=log_fields(step, exc, self.request.id, countdown=round(countdown, 3),
                          retry=spent + 1, max_retries=settings.retry_max,
                          batch_id=current.batch_id),
        )  # fmt: skip
        metrics.record_retry(step)
        payload = current.with_retries(step, spent + 1).model_dump(mode="json")
        raise self.retry(args=(payload,), exc=exc, countdown=countdown, max_retries=None)

    def _defer_batch(
        self,
        step: str,
        exc: CircuitOpenError | RateLimitExceeded,
        current: BatchResult,
        settings: Settings,
    ) -> BatchResult:
        now = time.time()
        delay = deferral_delay(exc, settings, now)
        # Items that would only reach the step after their deadline stop now.
        current = expire_pending(step, current, now + delay)
        if not pending(step, current):
            return current
        if current.deferred_seconds + delay > settings.max_deferral:
            log.error(
                "batch %s %s gives up after waiting %.1f s: %s",
                current.batch_id, step, current.deferred_seconds, exc,
                extra=log_fields(step, exc, self.request.id, batch_id=current.batch_id),
            )  # fmt: skip
            return fail_pending(step, current, exc)
        log.info(
            "deferring batch %s %s by %.2f s: %s", current.batch_id, step, delay, exc,
            extra=log_fields(step, exc, self.request.id, countdown=round(delay, 3),
                          batch_id=current.batch_id),
        )  # fmt: skip
        metrics.record_deferral(step, circuit_open=isinstance(exc, CircuitOpenError))
        payload = current.with_deferral(step, delay).model_dump(mode="json")
        raise self.retry(args=(payload,), countdown=delay, max_retries=None)


def _batch_step_task(name: str) -> Task:
    last = name == STEP_NAMES[-1]  # the batch ends with this step

    @app.task(bind=True, base=BatchTask, name=f"intent.batch_{name}", **chain_step_options(last))
    def run(self: BatchTask, payload: Any) -> dict[str, Any]:
        batch = parse_batch(payload)
        try:
            out = run_batch_step(get_runtime(), name, batch)
        except Exception as exc:
            out = self.recover_batch(name, exc, batch)
        if last:
            metrics.record_batch_finished(out)  # each item, as a single analysis counts
        return out.model_dump(mode="json")

    return run


batch_fetch_context = _batch_step_task("fetch_context")
batch_predict = _batch_step_task("predict")
batch_detect_pattern = _batch_step_task("detect_pattern")
batch_emit_events = _batch_step_task("emit_events")
BATCH_STEP_TASKS = (batch_fetch_context, batch_predict, batch_detect_pattern, batch_emit_events)


def batch_chain(batch: BatchResult) -> Any:
    """The four batch steps with stable ids: the last one's is the batch_id (the batch
    result), the others are ``{batch_id}.batch_{step}``."""
    payload = batch.model_dump(mode="json")
    bid = batch.batch_id
    first, second, third, last = BATCH_STEP_TASKS
    return chain(
        first.signature((payload,), task_id=f"{bid}.batch_fetch_context"),
        second.signature(task_id=f"{bid}.batch_predict"),
        third.signature(task_id=f"{bid}.batch_detect_pattern"),
        last.signature(task_id=bid),
    )


@app.task(bind=True, base=BatchTask, name="intent.analyze_batch")
def analyze_batch(self: BatchTask, requests: Any) -> dict[str, Any]:
    """Entry point by name: a list of request dicts (or a JSON text of one). A batch that
    is not a list, is empty or is larger than INTENT_BATCH_MAX_SIZE fails with
    ``ValidationError("requests", ...)``; a bad request fails alone in the batch result."""
    batch = start_batch(get_runtime(), requests, self.request.id, batch_max_size())
    if batch.status == "completed":  # every request was refused: nothing to run
        metrics.record_batch_finished(batch)
        return batch.model_dump(mode="json")
    # The chain's last step takes this task's id, so the caller's AsyncResult resolves to
    # the batch result.
    raise self.replace(batch_chain(batch))


def submit_batch(requests: Any, batch_id: str | None = None) -> AsyncResult:
    """Validate ``requests`` and enqueue their batch; the AsyncResult (id: the batch_id)
    resolves to a :class:`intent.batch.BatchResult` dump.

    Raises :class:`intent.errors.ValidationError` naming ``requests`` (nothing enqueued)
    for a batch that is not a list, is empty or is too large; a bad request fails alone.
    """
    batch = start_batch(get_runtime(), requests, batch_id or uuid.uuid4().hex, batch_max_size())
    batch_chain(batch).apply_async()
    return AsyncResult(batch.batch_id, app=app)
