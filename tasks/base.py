"""How a task meets the domain's errors: transient ones are retried on the backoff schedule,
everything else fails the task at once (and with it the rest of the chain).

Celery's own ``autoretry_for`` + ``retry_backoff`` is not used: it truncates delays to
whole seconds and its jitter draws from ``[0, base]``, so a retry can fire immediately.
Here the countdown comes from :class:`intent.retry.Backoff`, and a service's Retry-After
is honoured.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from intent.errors import IntentError, RetriesExhaustedError, ServiceError, ServiceUnavailableError
from intent.retry import Backoff
from intent.settings import get_settings

log = logging.getLogger("intent.tasks")


class PipelineTask(Task):
    """Base of the pipeline's tasks: maps domain errors onto retry or failure."""

    abstract = True
    typing = True

    def fail_or_retry(self, step: str, exc: Exception) -> NoReturn:
        settings = get_settings()
        if isinstance(exc, SoftTimeLimitExceeded):
            exc = ServiceUnavailableError(step, "soft time limit exceeded")
        elif isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            exc = ServiceUnavailableError("redis", f"{type(exc).__name__}: {exc}")
        if not (isinstance(exc, IntentError) and exc.transient):
            raise exc
        retries = self.request.retries
        if retries >= settings.retry_max:
            service = exc.service if isinstance(exc, ServiceError) else step
            raise RetriesExhaustedError(
                service, f"{step} failed after {retries} retries", str(exc)
            ) from exc
        backoff = Backoff.from_settings(settings)
        countdown = backoff.countdown(
            retries, getattr(exc, "retry_after", None), settings.retry_after_max
        )
        log.warning(
            "retrying %s in %.2f s (retry %d of %d): %s",
            step, countdown, retries + 1, settings.retry_max, exc,
            extra={"step": step, "task_id": self.request.id, "countdown": countdown},
        )  # fmt: skip
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.retry_max)

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        log.error("task %s[%s] failed: %s", self.name, task_id, exc)
