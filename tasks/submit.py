"""Submitting analyses from Python: ``submit(request) -> Analysis``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from intent import tracing
from intent.models import IntentRequest, IntentResult
from intent.pipeline import batch as batch_steps
from intent.pipeline.intake import admit, claim_request, release_request
from intent.runtime import get_runtime
from intent.settings import get_settings
from intent.validation import parse_request
from tasks.app import app
from tasks.chains import analysis_chain, batch_chain, forget_analysis

# The longest Analysis.get() waits on Celery's subscription before reading the result.
GET_SLICE = 1.0


class AnalysisTimeout(CeleryTimeout, TimeoutError):
    """No result within the wait: Celery's TimeoutError, and Python's, so a caller that
    knows no Celery (``intent submit``) catches it as the builtin."""


@dataclass(frozen=True)
class Analysis:
    """A handle on a submitted analysis. ``duplicate`` means the request_id was known."""

    request_id: str
    result: AsyncResult
    duplicate: bool = False

    @property
    def id(self) -> str:
        return str(self.result.id)

    @property
    def state(self) -> str:
        return str(self.result.state)

    def ready(self) -> bool:
        return bool(self.result.ready())

    def get(self, timeout: float | None = None) -> IntentResult:
        """Wait for the result (:func:`wait_for`); raises the analysis's error (e.g.
        ServiceError) if it failed, :class:`AnalysisTimeout` if none came within
        ``timeout``."""
        return IntentResult.model_validate(wait_for(self.result, timeout, self.request_id))

    def forget_subscription(self) -> None:
        """Unsubscribe from the result now, not at interpreter exit (where Celery's clean-up
        of a pending result prints a traceback after the answer)."""
        self.result.backend.remove_pending_result(self.result)


def wait_for(result: AsyncResult, timeout: float | None = None, what: str | None = None) -> Any:
    """``result.get()``, its error raised, :class:`AnalysisTimeout` (naming ``what``, else
    the task id) if none came within ``timeout``.

    Celery's wait listens for the result's message on its subscription, which can miss
    one (celery #4039: ``get()`` timed out with the result stored; seen in bench/pools.py
    about once in 1,700 chains on a threads worker), so the wait goes in slices of
    :data:`GET_SLICE` seconds, the stored result read between two."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = GET_SLICE if deadline is None else min(GET_SLICE, deadline - time.monotonic())
        if wait > 0:  # Celery's get() takes 0 as "no timeout"
            try:  # Celery's own get(), whatever a subclass made of get()
                return AsyncResult.get(result, timeout=wait, propagate=True)
            except CeleryTimeout:
                pass
        if result.ready():  # stored (its state now cached): get() returns it at once
            return AsyncResult.get(result, timeout=GET_SLICE, propagate=True)
        if deadline is not None and time.monotonic() >= deadline:
            raise AnalysisTimeout(f"no result for {what or result.id} within {timeout} s")


def submit(request: IntentRequest | Mapping[str, Any] | str) -> Analysis:
    """Validate ``request`` and enqueue its analysis, once per request_id.

    Raises :class:`intent.errors.ValidationError` naming the bad field, or
    :class:`intent.errors.RateLimitExceeded` (with ``retry_after``) when the client is over
    its intake limit; nothing is enqueued then.
    """
    payload = request.model_dump(mode="json") if isinstance(request, IntentRequest) else request
    rt = get_runtime()
    parsed = admit(rt, parse_request(payload, get_settings()))
    claim = claim_request(rt, parsed.request_id, parsed.request_id)
    if claim.owner is not None:
        return Analysis(parsed.request_id, AsyncResult(claim.owner, app=app), duplicate=True)
    if claim.replaces is not None:
        # Refused and given back: forget its stored refusal, so the new run answers.
        forget_analysis(parsed.request_id, claim.replaces)
    tracing.start()  # a caller that traces: the analysis's trace starts with this span
    try:
        with tracing.span("intent.submit", "producer", {"intent.request_id": parsed.request_id}):
            analysis_chain(parsed, parsed.request_id).apply_async()
    except BaseException:
        release_request(rt, parsed.request_id)  # not enqueued: let a retry claim it again
        raise
    return Analysis(parsed.request_id, AsyncResult(parsed.request_id, app=app))


class BatchAsyncResult(AsyncResult):
    """A batch's AsyncResult, whose ``get()`` waits as :meth:`Analysis.get` does
    (:func:`wait_for`: a result whose message the subscription missed is read all the same;
    a wait that ends raises :class:`AnalysisTimeout`, a Celery TimeoutError)."""

    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> Any:
        if not propagate or kwargs:  # Celery's other ways of waiting, as they are
            return super().get(timeout=timeout, propagate=propagate, **kwargs)
        return wait_for(self, timeout, f"batch {self.id}")


def submit_batch(requests: Any, batch_id: str | None = None) -> BatchAsyncResult:
    """Validate ``requests`` and enqueue their batch; the AsyncResult (id: the batch_id,
    ``get()`` as :class:`BatchAsyncResult` waits) resolves to a
    :class:`intent.batch.BatchResult` dump.

    Raises :class:`intent.errors.ValidationError` naming ``requests`` (nothing enqueued)
    for a batch that is not a list, is empty or is too large; a bad request fails alone.
    """
    batch = batch_steps.start_batch(
        get_runtime(), requests, batch_id or uuid.uuid4().hex, get_settings().batch_max_size
    )
    tracing.start()  # a caller that traces: the batch's trace starts with this span
    with tracing.span("intent.submit_batch", "producer", {"intent.batch_id": batch.batch_id}):
        batch_chain(batch).apply_async()
    return BatchAsyncResult(batch.batch_id, app=app)
