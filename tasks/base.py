"""How a task meets the domain's errors.

- transient errors are retried on the backoff schedule, at most ``retry_max`` times;
  when they are spent, the step's fallback answers if it can (stale context, last
  predictions), else the analysis fails with ``RetriesExhaustedError``;
- an open circuit breaker: the fallback answers if it can; else, like a downstream rate
  limit, the step re-schedules itself for the moment it will be admitted (plus jitter),
  without spending a retry, up to ``max_deferral`` seconds in all (then it fails with
  the breaker's or limit's error), or stops as ``expired`` if that is past its deadline;
- everything else fails the task at once (and with it the rest of the chain).

Celery's own ``autoretry_for`` + ``retry_backoff`` is not used: it truncates delays to
whole seconds and its jitter draws from ``[0, base]``, so a retry can fire immediately.
Here the countdown comes from :class:`intent.retry.Backoff`, and a service's Retry-After
is honoured.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from intent import metrics
from intent.errors import (
    CircuitOpenError,
    IntentError,
    RateLimitExceeded,
    RetriesExhaustedError,
    ServiceError,
    ServiceUnavailableError,
)
from intent.models import IntentResult
from intent.pipeline.steps import FALLBACKS, STEPS
from intent.retry import Backoff
from intent.runtime import get_runtime
from intent.settings import Settings, get_settings

log = logging.getLogger("intent.tasks")

STEP_TASK_NAMES = frozenset(f"intent.{name}" for name, _ in STEPS)


def _as_domain_error(step: str, exc: Exception) -> Exception:
    if isinstance(exc, SoftTimeLimitExceeded):
        return ServiceUnavailableError(step, "soft time limit exceeded")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return ServiceUnavailableError("redis", f"{type(exc).__name__}: {exc}")
    return exc


def log_fields(step: str, exc: Exception, task_id: str | None, **more: Any) -> dict[str, Any]:
    """The structured fields of a retry or deferral line."""
    fields: dict[str, Any] = {"step": step, "task_id": task_id, "error": type(exc).__name__}
    service = getattr(exc, "service", None)
    if isinstance(service, str):
        fields["service"] = service
    if isinstance(exc, RateLimitExceeded):
        fields["limit"] = exc.limit
    return {**fields, **more}


def chain_step_options(last: bool) -> dict[str, Any]:
    """Celery options of one step of a chain: only the last step stores its result.

    Each step's output travels to the next in its message, so a stored copy would be
    read by nobody, and would cost two Redis round trips per step (Celery's check that the
    task has not already succeeded, then SET + PUBLISH) plus a copy kept for
    ``result_expires``. Retries and failures are still stored, and a failure is
    propagated to the last step's id, which callers wait on.
    """
    return {"ignore_result": not last, "store_errors_even_if_ignored": True}


def deferral_delay(
    exc: CircuitOpenError | RateLimitExceeded, settings: Settings, now: float
) -> float:
    """Seconds until the breaker or the limit admits a call, plus jitter to spread the fleet."""
    if isinstance(exc, RateLimitExceeded):
        wait = min(max(0.0, exc.retry_after), float(settings.downstream_rate_period))
    else:
        until = exc.until if exc.until is not None else now + settings.circuit_recovery_timeout
        wait = min(max(0.0, until - now), settings.circuit_recovery_timeout)
    return wait + random.uniform(0.0, settings.defer_jitter)


class PipelineTask(Task):
    """Base of the pipeline's tasks: maps domain errors onto retry, deferral, fallback or
    failure."""

    abstract = True
    typing = True
    # How much of a result Celery puts in its "succeeded" log line and event (Flower): an
    # analysis is kilobytes, and Celery builds this repr for every task it runs; the whole
    # result stays in the result backend.
    resultrepr_maxsize = 256

    def recover(self, step: str, exc: Exception, current: IntentResult) -> IntentResult:
        """Answer a failed step: a fallback result to continue with, or raise the retry,
        deferral or failure it calls for."""
        settings = get_settings()
        exc = _as_domain_error(step, exc)
        fallback = FALLBACKS.get(step)
        if isinstance(exc, CircuitOpenError | RateLimitExceeded):
            if isinstance(exc, CircuitOpenError) and fallback is not None:
                degraded = fallback(get_runtime(), current, exc)
                if degraded is not None:
                    return degraded
            return self._defer(step, exc, current, settings)
        if not (isinstance(exc, IntentError) and exc.transient):
            # Permanent. An incompatible service is not called: its fallback may serve.
            if isinstance(exc, ServiceUnavailableError) and fallback is not None:
                degraded = fallback(get_runtime(), current, exc)
                if degraded is not None:
                    return degraded
            raise exc
        # request.retries counts every re-run of this step, deferrals included.
        spent = self.request.retries - current.deferrals.get(step, 0)
        if spent >= settings.retry_max:
            if fallback is not None:
                degraded = fallback(get_runtime(), current, exc)
                if degraded is not None:
                    return degraded
            service = exc.service if isinstance(exc, ServiceError) else step
            raise RetriesExhaustedError(
                service, f"{step} failed after {spent} retries", str(exc)
            ) from exc
        countdown = Backoff.from_settings(settings).countdown(
            spent, getattr(exc, "retry_after", None), settings.retry_after_max
        )
        log.warning(
            "retrying %s in %.2f s (retry %d of %d): %s",
            step, countdown, spent + 1, settings.retry_max, exc,
            extra=log_fields(step, exc, self.request.id, countdown=round(countdown, 3),
                          retry=spent + 1, max_retries=settings.retry_max),
        )  # fmt: skip
        metrics.record_retry(step)
        payload = current.with_retries(step, spent + 1).model_dump(mode="json")
        raise self.retry(
            args=(payload,), exc=exc, countdown=countdown, max_retries=None, **self._shown(current)
        )

    def _defer(
        self,
        step: str,
        exc: CircuitOpenError | RateLimitExceeded,
        current: IntentResult,
        settings: Settings,
    ) -> IntentResult:
        now = time.time()
        delay = deferral_delay(exc, settings, now)
        deadline = current.request.deadline
        if deadline is not None and now + delay > deadline:
            # Waiting would only reach the step after its deadline.
            return current.model_copy(update={"status": "expired", "expired_at": step})
        if current.deferred_seconds + delay > settings.max_deferral:
            log.error(
                "%s gives up after waiting %.1f s: %s", step, current.deferred_seconds, exc,
                extra=log_fields(step, exc, self.request.id, waited=current.deferred_seconds),
            )  # fmt: skip
            raise exc
        log.info(
            "deferring %s by %.2f s: %s", step, delay, exc,
            extra=log_fields(step, exc, self.request.id, countdown=round(delay, 3)),
        )  # fmt: skip
        metrics.record_deferral(step, circuit_open=isinstance(exc, CircuitOpenError))
        payload = current.with_deferral(step, delay).model_dump(mode="json")
        raise self.retry(args=(payload,), countdown=delay, max_retries=None, **self._shown(current))

    @staticmethod
    def _shown(current: IntentResult) -> dict[str, str]:
        # Keep the re-sent message's repr short too (see tasks.pipeline.analysis_chain).
        return {"argsrepr": f"(<analysis {current.request.request_id}>,)", "kwargsrepr": "{}"}

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log.error(
            "task %s[%s] failed: %s", self.name, task_id, exc,
            extra={"task_id": task_id, "error": type(exc).__name__},
        )  # fmt: skip
        # The chain stops at a failed step: the analysis ends here.
        if self.name == "intent.analyze":
            metrics.record_failed("rejected")
        elif self.name in STEP_TASK_NAMES:
            metrics.record_failed("failed")
