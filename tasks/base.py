"""How a task meets the domain's errors.

- transient errors are retried on the backoff schedule, at most ``retry_max`` times;
- an open circuit breaker re-schedules the step for the moment the breaker will admit a
  trial call (plus jitter), without spending a retry, up to ``circuit_max_deferral``
  seconds in all; then the analysis fails with ``CircuitOpenError``;
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
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from intent.errors import (
    CircuitOpenError,
    IntentError,
    RetriesExhaustedError,
    ServiceError,
    ServiceUnavailableError,
)
from intent.models import IntentResult
from intent.retry import Backoff
from intent.settings import Settings, get_settings

log = logging.getLogger("intent.tasks")


def _as_domain_error(step: str, exc: Exception) -> Exception:
    if isinstance(exc, SoftTimeLimitExceeded):
        return ServiceUnavailableError(step, "soft time limit exceeded")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return ServiceUnavailableError("redis", f"{type(exc).__name__}: {exc}")
    return exc


def deferral_delay(exc: CircuitOpenError, settings: Settings, now: float) -> float:
    """Seconds until the breaker admits a trial call, plus jitter to spread the fleet."""
    until = exc.until if exc.until is not None else now + settings.circuit_recovery_timeout
    wait = min(max(0.0, until - now), settings.circuit_recovery_timeout)
    return wait + random.uniform(0.0, settings.circuit_defer_jitter)


class PipelineTask(Task):
    """Base of the pipeline's tasks: maps domain errors onto retry, deferral or failure."""

    abstract = True
    typing = True

    def fail_or_retry(self, step: str, exc: Exception, current: IntentResult) -> NoReturn:
        settings = get_settings()
        exc = _as_domain_error(step, exc)
        if isinstance(exc, CircuitOpenError):
            self._defer(step, exc, current, settings)
        if not (isinstance(exc, IntentError) and exc.transient):
            raise exc
        # request.retries counts every re-run of this step, deferrals included.
        spent = self.request.retries - current.deferrals.get(step, 0)
        if spent >= settings.retry_max:
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
            extra={"step": step, "task_id": self.request.id, "countdown": countdown},
        )  # fmt: skip
        payload = current.with_retries(step, spent + 1).model_dump(mode="json")
        raise self.retry(args=(payload,), exc=exc, countdown=countdown, max_retries=None)

    def _defer(
        self, step: str, exc: CircuitOpenError, current: IntentResult, settings: Settings
    ) -> NoReturn:
        delay = deferral_delay(exc, settings, time.time())
        if current.deferred_seconds + delay > settings.circuit_max_deferral:
            log.error(
                "%s gives up after waiting %.1f s for the %s breaker",
                step, current.deferred_seconds, exc.service,
                extra={"step": step, "task_id": self.request.id},
            )  # fmt: skip
            raise exc
        log.info(
            "deferring %s by %.2f s: %s", step, delay, exc,
            extra={"step": step, "task_id": self.request.id, "countdown": delay},
        )  # fmt: skip
        payload = current.with_deferral(step, delay).model_dump(mode="json")
        raise self.retry(args=(payload,), countdown=delay, max_retries=None)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log.error("task %s[%s] failed: %s", self.name, task_id, exc)
