"""Submitting analyses from Python: ``submit(request) -> Analysis``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery.result import AsyncResult

from intent import tracing
from intent.models import IntentRequest, IntentResult
from intent.pipeline.intake import admit, claim_request, release_request
from intent.runtime import get_runtime
from intent.settings import get_settings
from intent.validation import parse_request
from tasks.app import app
from tasks.base import forget_analysis
from tasks.pipeline import analysis_chain


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
        """Wait for the result; raises the analysis's error (e.g. ServiceError) if it failed."""
        return IntentResult.model_validate(self.result.get(timeout=timeout, propagate=True))


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
        forget_analysis(app, parsed.request_id, claim.replaces)
    tracing.start()  # a caller that traces: the analysis's trace starts with this span
    try:
        with tracing.span("intent.submit", "producer", {"intent.request_id": parsed.request_id}):
            analysis_chain(parsed, parsed.request_id).apply_async()
    except BaseException:
        release_request(rt, parsed.request_id)  # not enqueued: let a retry claim it again
        raise
    return Analysis(parsed.request_id, AsyncResult(parsed.request_id, app=app))
