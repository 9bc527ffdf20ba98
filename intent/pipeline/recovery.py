"""The one decision for a failed step: continue on a fallback, retry, defer, expire or fail.

:func:`decide` is a pure function of the error, what the step has already spent and the
budgets; the single steps (``tasks/steps``), the batch steps and ``intent submit --local``
only carry its answer out. Two budgets, never Celery's retry counter:

- transient errors (connection errors, timeouts, 5xx, 429, a Redis that is away) are
  retried on the backoff schedule at most ``retry_max`` times per step; then the step's
  fallback answers if it can, else the analysis fails with ``RetriesExhaustedError``;
- a retry also spends the service's fleet-wide retry budget (``spend``, intent/budget.py);
  over it, the step does not retry now: its fallback answers if it can, else it waits for
  the budget (``RetryBudgetExceeded``), and that wait counts as one of its ``retry_max``
  (its next run calls the failing service again);
- an open breaker, a full downstream rate limit or a full bulkhead (the service's
  calls in flight fleet-wide) is waited for (a deferral: no retry is spent), up to
  ``max_deferral`` seconds of waits in all, then the analysis fails with the
  breaker's or the limit's error; an open breaker's fallback answers first if it can;
- a wait that would end past the analysis's deadline stops it as ``expired`` instead;
- everything else (bad input, a 4xx, a bug) fails at once; an incompatible service's
  fallback may still answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import redis

from intent.errors import (
    BulkheadFullError,
    CircuitOpenError,
    IntentError,
    RateLimitExceeded,
    RetriesExhaustedError,
    RetryBudgetExceeded,
    ServiceError,
    ServiceUnavailableError,
)
from intent.retry import Backoff
from intent.settings import Settings

R = TypeVar("R")

# Spend one retry of a service's budget: None if granted, else seconds until it may be
# asked again.
Spend = Callable[[str], float | None]


@dataclass(frozen=True)
class Budgets:
    """What a step may spend, and the caps of each wait."""

    retry_max: int = 3
    max_deferral: float = 600.0
    retry_after_max: float = 60.0
    recovery_timeout: float = 60.0  # longest wait for one open breaker
    rate_period: float = 60.0  # longest wait for one downstream limit
    defer_jitter: float = 1.0
    backoff: Backoff = field(default_factory=Backoff)

    @classmethod
    def from_settings(cls, settings: Settings) -> Budgets:
        return cls(
            retry_max=settings.retry_max,
            max_deferral=settings.max_deferral,
            retry_after_max=settings.retry_after_max,
            recovery_timeout=settings.circuit_recovery_timeout,
            rate_period=float(settings.downstream_rate_period),
            defer_jitter=settings.defer_jitter,
            backoff=Backoff.from_settings(settings),
        )


@dataclass(frozen=True)
class Attempt:
    """Where the failed step stands: its name, the transient retries it has spent, the
    seconds the analysis has waited for breakers and limits, and its deadline."""

    step: str
    retries: int = 0
    deferred_seconds: float = 0.0
    deadline: float | None = None


@dataclass(frozen=True)
class Retry:
    """Run the step again after ``countdown`` seconds; it will be retry number ``retry``."""

    countdown: float
    retry: int
    error: Exception


@dataclass(frozen=True)
class Defer:
    """Run the step again after ``delay`` seconds, when ``error`` (an open breaker, a full
    limit) will admit it. Not a retry: none is spent, except for a wait on the retry
    budget, whose next run calls the failing service again: it is retry number ``retry``,
    spaced out by the budget, and counts against ``retry_max`` as any retry does."""

    delay: float
    error: CircuitOpenError | RateLimitExceeded | BulkheadFullError
    retry: int | None = None


@dataclass(frozen=True)
class Expire:
    """Stop the analysis as ``expired``: the wait would end past its deadline."""

    error: Exception


@dataclass(frozen=True)
class Fail:
    """End the analysis with ``error``."""

    error: Exception


Outcome = Retry | Defer | Expire | Fail


@dataclass(frozen=True)
class Decision:
    """``fallback``: try the step's fallback first (a degraded result, when it has one);
    ``then``: what to do when it has none."""

    fallback: bool
    then: Outcome


def release_by(then: Retry | Defer, attempt: Attempt, budgets: Budgets, now: float) -> float | None:
    """The latest a waiting step may be held: its deadline, and for a deferral the end of
    the deferral budget as well."""
    if isinstance(then, Retry):
        return attempt.deadline
    budget_end = now + max(0.0, budgets.max_deferral - attempt.deferred_seconds)
    return budget_end if attempt.deadline is None else min(attempt.deadline, budget_end)


def as_domain_error(exc: Exception) -> Exception:
    """A Redis that cannot be reached is a transient failure like any other service's."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return ServiceUnavailableError("redis", f"{type(exc).__name__}: {exc}")
    return exc


def wait_for(
    error: CircuitOpenError | RateLimitExceeded | BulkheadFullError,
    budgets: Budgets,
    now: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds until the breaker or the limit admits a call, plus jitter to spread the
    fleet; a breaker that names no end is waited for one recovery timeout. A full bulkhead
    frees a slot whenever a call ends (the call already waited for one): the jitter alone."""
    if isinstance(error, BulkheadFullError):
        wait = 0.0
    elif isinstance(error, RateLimitExceeded):
        wait = min(max(0.0, error.retry_after), budgets.rate_period)
    else:
        until = error.until if error.until is not None else now + budgets.recovery_timeout
        wait = min(max(0.0, until - now), budgets.recovery_timeout)
    return wait + rand() * budgets.defer_jitter


def decide(
    error: Exception,
    attempt: Attempt,
    budgets: Budgets,
    now: float,
    rand: Callable[[], float] = random.random,
    spend: Spend | None = None,
) -> Decision:
    """What to do about ``error``, raised by ``attempt.step`` at ``now``; a retry spends
    the service's budget through ``spend`` (none: no budget)."""
    error = as_domain_error(error)
    deadline = attempt.deadline
    if isinstance(error, CircuitOpenError | RateLimitExceeded | BulkheadFullError):
        delay = wait_for(error, budgets, now, rand)
        fallback = isinstance(error, CircuitOpenError | RetryBudgetExceeded)
        if deadline is not None and now + delay > deadline:
            return Decision(fallback, Expire(error))
        if attempt.deferred_seconds + delay > budgets.max_deferral:
            return Decision(fallback, Fail(error))
        return Decision(fallback, Defer(delay, error))
    if not (isinstance(error, IntentError) and error.transient):
        # Permanent. An incompatible service is not called: its fallback may serve.
        return Decision(isinstance(error, ServiceUnavailableError), Fail(error))
    if attempt.retries >= budgets.retry_max:
        service = error.service if isinstance(error, ServiceError) else attempt.step
        exhausted = RetriesExhaustedError(
            service, f"{attempt.step} failed after {attempt.retries} retries", str(error)
        )
        return Decision(True, Fail(exhausted))
    countdown = budgets.backoff.countdown(
        attempt.retries, getattr(error, "retry_after", None), budgets.retry_after_max, rand
    )
    if deadline is not None and now + countdown > deadline:
        return Decision(True, Expire(error))
    if spend is not None and isinstance(error, ServiceError):
        refused = spend(error.service)
        if refused is not None:
            over = decide(RetryBudgetExceeded(error.service, refused), attempt, budgets, now, rand)
            if isinstance(over.then, Defer):
                return Decision(over.fallback, replace(over.then, retry=attempt.retries + 1))
            return over
    return Decision(False, Retry(countdown, attempt.retries + 1, error))


@dataclass(frozen=True)
class Wait(Generic[R]):
    """A retry or a deferral of ``step``, as far as the domain carries it: the next run
    starts from ``result`` (its counters updated), after ``then``'s delay, in ``lane``,
    and at ``release_by`` at the latest, whatever its breaker says then (the analysis's
    deadline, or the end of its deferral budget: it will expire or give up)."""

    step: str
    then: Retry | Defer
    result: R
    lane: str
    release_by: float | None = None

    @property
    def delay(self) -> float:
        return self.then.countdown if isinstance(self.then, Retry) else self.then.delay

    @property
    def deferred(self) -> bool:
        return isinstance(self.then, Defer)

    def reason(self, budgets: Budgets) -> str:
        if isinstance(self.then, Retry):
            return f"retry {self.then.retry} of {budgets.retry_max}: {self.then.error}"
        return str(self.then.error)
