"""The service's one error tree, rooted at :class:`IntentError`.

Every error keeps its constructor arguments in ``args``: Celery's JSON result backend
stores ``exc.args`` and rebuilds the error with ``cls(*args)``, so a caller gets the
same type and fields back (no pickle). ``transient`` tells the task layer whether a
retry can help; control-flow errors carry the delay they ask for.
"""

from __future__ import annotations

from typing import Any, ClassVar


class IntentError(Exception):
    """Root of every error this service raises on purpose."""

    transient: ClassVar[bool] = False


class ValidationError(IntentError):
    """Bad input: names the field. Never retried."""

    def __init__(self, field: str, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(field, message, errors or [])
        self.field = field
        self.message = message
        self.errors = errors or [{"field": field, "message": message}]

    def __str__(self) -> str:
        return f"invalid request: {self.field}: {self.message}"


class RateLimitExceeded(IntentError):
    """A rate limit refused the call; try again after ``retry_after`` seconds."""

    def __init__(self, limit: str, retry_after: float):
        super().__init__(limit, retry_after)
        self.limit = limit
        self.retry_after = float(retry_after)

    def __str__(self) -> str:
        return f"rate limit {self.limit} exceeded; retry after {self.retry_after:.2f} s"


class RetryBudgetExceeded(RateLimitExceeded):
    """The fleet's retries of ``service`` have spent their budget: the step does not retry
    now (its fallback answers, else it waits ``retry_after`` seconds without spending a
    retry), so a struggling service is not handed a storm of retries."""

    def __init__(self, service: str, retry_after: float):
        super().__init__(f"retry budget of {service}", retry_after)
        self.args = (service, retry_after)
        self.service = service

    def __str__(self) -> str:
        return f"{self.service}: retry budget spent; retry after {self.retry_after:.2f} s"


class ServiceError(IntentError):
    """A downstream call failed. ``cause`` describes what went wrong underneath."""

    def __init__(self, service: str, message: str, cause: str | None = None):
        super().__init__(service, message, cause)
        self.service = service
        self.message = message
        self.cause = cause

    def __str__(self) -> str:
        text = f"{self.service}: {self.message}"
        return f"{text} (cause: {self.cause})" if self.cause else text


class ServiceUnavailableError(ServiceError):
    """Transient: connection error, timeout, 5xx, or 429. Retried with backoff."""

    transient = True

    def __init__(self, service: str, reason: str, retry_after: float | None = None):
        IntentError.__init__(self, service, reason, retry_after)
        self.service = service
        self.reason = reason
        self.message = reason
        self.cause = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"Service {self.service} is unavailable: {self.reason}"


class IncompatibleServiceError(ServiceUnavailableError):
    """The service answers, but with an API version this service cannot use: it is not
    called, and waiting will not help (not retried; a stale cache entry may serve)."""

    transient = False


class BulkheadFullError(ServiceError):
    """Transient: ``limit`` calls to ``service`` were in flight across the fleet (its
    bulkhead) for as long as the call could wait. The service is busy, not failing: the
    step defers without spending a retry, and the breaker does not count it."""

    transient = True

    def __init__(self, service: str, limit: int):
        IntentError.__init__(self, service, limit)
        self.service = service
        self.limit = int(limit)
        self.message = f"{self.limit} calls in flight fleet-wide (bulkhead)"
        self.cause = None

    def __str__(self) -> str:
        return f"{self.service}: bulkhead full: {self.message}"


class TimeLimitReached(IntentError):
    """Transient: the running step reached its soft time limit (``seconds``) during
    ``what`` (a downstream call cut to the time it had left), on a pool that cannot
    interrupt a task at its limit (threads, gevent: ``intent.pools``). The task layer turns
    it into the error a prefork pool process meets at its soft limit, and the step is
    retried like that one; a call it ended counts as a failure of its service, as a call
    that hangs past the limit does on prefork."""

    transient = True

    def __init__(self, what: str, seconds: float):
        super().__init__(what, seconds)
        self.what = what
        self.seconds = float(seconds)

    def __str__(self) -> str:
        return f"soft time limit ({self.seconds:g} s) reached during {self.what}"


class ServiceRequestError(ServiceError):
    """Permanent: the service refused the request (4xx other than 429) or answered
    something that is not its API. Not retried; does not trip the breaker."""

    def __init__(self, service: str, status: int, detail: str):
        IntentError.__init__(self, service, status, detail)
        self.service = service
        self.status = status
        self.detail = detail
        self.message = f"HTTP {status}: {detail}"
        self.cause = self.message

    def __str__(self) -> str:
        return f"{self.service} refused the request: HTTP {self.status}: {self.detail}"


class RetriesExhaustedError(ServiceError):
    """A transient failure outlived every retry; ``cause`` is the last failure."""


class Deferred(IntentError):
    """Not a failure: ``step`` waits until ``resume_at`` (epoch seconds) for ``reason`` (an
    open breaker, a full rate limit), without spending a retry. What Celery stores as the
    step's RETRY state, so Flower tells a deferral from a retry."""

    def __init__(self, step: str, reason: str, resume_at: float):
        super().__init__(step, reason, resume_at)
        self.step = step
        self.reason = reason
        self.resume_at = float(resume_at)

    def __str__(self) -> str:
        return f"{self.step} deferred until {self.resume_at:.3f}: {self.reason}"


class CircuitBreakerError(IntentError):
    """Base of the circuit breaker's errors."""


class CircuitOpenError(CircuitBreakerError):
    """The breaker for ``service`` rejects calls until ``until`` (epoch seconds)."""

    def __init__(self, service: str, until: float | None = None):
        super().__init__(service, until)
        self.service = service
        self.service_name = service  # the integration guide's name for it
        self.until = until

    def __str__(self) -> str:
        text = f"Circuit breaker is open for service {self.service}"
        return f"{text} until {self.until:.3f}" if self.until is not None else text


class ProbeWaits(CircuitOpenError):
    """A health or version probe refused while the breaker is half-open: its trial is a
    real call, which the caller may make instead (a probe never takes a trial's place)."""


class SettingsError(IntentError, ValueError):
    """A setting has a value the service cannot run with (named by its environment
    variable). Still a ``ValueError``, as it was before it joined the tree."""


class DetectionConflict(IntentError):
    """The pattern state kept changing under us: too many concurrent analyses of one key.
    Permanent for the analysis that gave up (as any error that is not transient)."""


# -- the event bus ------------------------------------------------------------------------
class RejectEvent(IntentError):
    """The event can never be handled (it lacks what the handler needs): dead-letter it now."""


class RetryLater(IntentError):
    """Leave the event pending and deliver it again after ``delay`` seconds: a deferral, not
    a failure (the next delivery is not counted against ``max_deliveries``)."""

    def __init__(self, delay: float, reason: str = "retry later"):
        super().__init__(reason)
        self.delay = max(0.0, float(delay))
        self.reason = reason


class ReplayError(IntentError, ValueError):
    """The replay cannot be done as asked (no such group, an id ahead of the group...).
    Still a ``ValueError``, as it was before it joined the tree."""
