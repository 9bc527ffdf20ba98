"""The retry schedule for transient failures, as plain functions, and the guide's RetryHandler.

:class:`Backoff` is the schedule the pipeline's one recovery decision
(:mod:`intent.pipeline.recovery`) counts down by, on a worker and in ``intent submit
--local`` alike. :class:`RetryHandler` is the guide's retry for a caller's own operation,
on the same schedule; no step of the pipeline goes through it. Sleep and randomness are
injected, so tests check exact schedules without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from intent.errors import IntentError, RetriesExhaustedError, ServiceError
from intent.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with bounded jitter.

    Retry ``n`` (0-based) waits ``base = min(max_delay, initial * 2**n)`` shrunk by a
    random fraction of at most ``jitter``: a delay in ``[base * (1 - jitter), base]``.
    Unlike Celery's ``retry_jitter`` (a whole number of seconds in ``[0, base]``), this keeps
    sub-second precision and never collapses to an immediate retry.
    """

    initial: float = 1.0
    maximum: float = 10.0
    jitter: float = 0.25
    max_retries: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        return cls(
            initial=settings.retry_initial_delay,
            maximum=settings.retry_max_delay,
            jitter=settings.retry_jitter,
            max_retries=settings.retry_max,
        )

    def base(self, retry: int) -> float:
        return float(min(self.maximum, self.initial * (2**retry)))

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The countdown before retry number ``retry`` (0 for the first retry)."""
        base = self.base(retry)
        return base * (1.0 - self.jitter * rand())

    def countdown(
        self,
        retry: int,
        retry_after: float | None,
        cap: float,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """The delay to use: the schedule's, or longer when the service asked (Retry-After)."""
        delay = self.delay(retry, rand)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), cap))
        return delay

    def schedule(self) -> list[tuple[float, float]]:
        """The (shortest, longest) wait of every retry, in order."""
        return [(self.base(n) * (1.0 - self.jitter), self.base(n)) for n in range(self.max_retries)]


@dataclass
class RetryHandler:
    """The guide's RetryHandler, synchronous: retries transient errors on the schedule."""

    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random

    def with_retry(self, operation: Callable[[], T], retry_after_cap: float = 60.0) -> T:
        for retry in range(self.backoff.max_retries + 1):
            try:
                return operation()
            except IntentError as exc:
                if not exc.transient:
                    raise
                if retry == self.backoff.max_retries:
                    service = exc.service if isinstance(exc, ServiceError) else "operation"
                    raise RetriesExhaustedError(
                        service,
                        f"failed after {self.backoff.max_retries} retries",
                        str(exc),
                    ) from exc
                wait = self.backoff.countdown(
                    retry, getattr(exc, "retry_after", None), retry_after_cap, self.rand
                )
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover
