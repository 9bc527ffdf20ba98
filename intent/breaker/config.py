"""What a breaker is tuned by: the integration guide's ``CircuitConfig``, and ``CircuitContext``,
the optional description of one guarded call."""

from __future__ import annotations

from dataclasses import dataclass

from intent import settings as defaults
from intent.settings import Settings


@dataclass(frozen=True)
class CircuitConfig:
    """The guide's breaker settings, plus the half-open and fleet-coordination knobs.

    - trips when ``failure_threshold`` failures fall within the last ``failure_window``
      seconds and at least ``min_throughput`` calls were made in it;
    - stays open ``recovery_timeout`` seconds, then admits at most ``half_open_max_calls``
      trial calls fleet-wide, each a lease that lapses after ``half_open_timeout``;
    - ``success_threshold`` trial successes close it, a trial failure reopens it.

    ``throttle_wait``: while failures are pending (the last outcome was a failure), a call
    that the calls in flight could make superfluous (they would trip the breaker if they
    failed) waits up to this long for their verdict before being refused; calls that were
    already in flight when the failures began count for this long after the first one.
    ``recheck_interval``: how long a process trusts a refusal (open, half-open trials all
    taken, forced open) before it asks the store again, so an operator's reset, open or
    close is seen by every process within it.
    ``slow_call_duration``: a call in flight longer than this, started after the latest
    call the service is known to have answered, counts as a pending failure: the fleet
    stops starting new calls to a service that hangs instead of waiting for read timeouts,
    and such calls count toward tripping (a trial that slow reopens the breaker). Only
    effective below ``half_open_timeout``, the lease that keeps a call counted.

    Beside the count, two rate rules over the same window and ``min_throughput`` (percent of
    the window's calls, 0 for off; whichever rule trips first): ``failure_rate_threshold``,
    and ``slow_call_rate_threshold``, the share of calls that took longer than
    ``slow_call_duration`` to finish (successes and failures alike).

    The open time grows with each trip no successful recovery followed (a trial failing,
    a slow trial): ``recovery_timeout`` times ``break_factor`` per earlier trip, at most
    ``break_max`` (never below ``recovery_timeout``), each grown duration spread by up to
    +/- ``break_jitter`` of itself; the first trip opens for ``recovery_timeout`` exactly,
    and a close starts the count again.

    ``max_concurrent_calls``: the bulkhead, at most this many calls in flight fleet-wide
    (0 for none); a call over it asks again for up to ``bulkhead_wait`` seconds, then is
    refused with :class:`~intent.errors.BulkheadFullError`.
    """

    # The defaults are the settings' (intent/settings.py): written there once.
    failure_threshold: int = defaults.CIRCUIT_FAILURE_THRESHOLD
    recovery_timeout: float = defaults.CIRCUIT_RECOVERY_TIMEOUT
    half_open_timeout: float = defaults.CIRCUIT_HALF_OPEN_TIMEOUT
    failure_window: float = defaults.CIRCUIT_FAILURE_WINDOW
    min_throughput: int = defaults.CIRCUIT_MIN_THROUGHPUT
    half_open_max_calls: int = defaults.CIRCUIT_HALF_OPEN_MAX_CALLS
    success_threshold: int = defaults.CIRCUIT_SUCCESS_THRESHOLD
    throttle_wait: float = defaults.CIRCUIT_THROTTLE_WAIT
    recheck_interval: float = defaults.CIRCUIT_RECHECK_INTERVAL
    slow_call_duration: float = defaults.CIRCUIT_SLOW_CALL_DURATION
    failure_rate_threshold: float = defaults.CIRCUIT_FAILURE_RATE_THRESHOLD
    slow_call_rate_threshold: float = defaults.CIRCUIT_SLOW_CALL_RATE_THRESHOLD
    break_factor: float = defaults.CIRCUIT_BREAK_FACTOR
    break_max: float = defaults.CIRCUIT_BREAK_MAX
    break_jitter: float = defaults.CIRCUIT_BREAK_JITTER
    max_concurrent_calls: int = defaults.BULKHEAD_LIMIT
    bulkhead_wait: float = defaults.BULKHEAD_WAIT

    def __post_init__(self) -> None:
        for name in (
            "failure_threshold",
            "min_throughput",
            "half_open_max_calls",
            "success_threshold",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CircuitConfig.{name} must be at least 1")
        for name in (
            "recovery_timeout",
            "half_open_timeout",
            "failure_window",
            "recheck_interval",
            "slow_call_duration",
        ):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"CircuitConfig.{name} must be positive")
        for name in ("throttle_wait", "bulkhead_wait", "max_concurrent_calls"):
            if getattr(self, name) < 0:
                raise ValueError(f"CircuitConfig.{name} must not be negative")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0 <= float(getattr(self, name)) <= 100:
                raise ValueError(f"CircuitConfig.{name} is a percentage: 0 (off) to 100")
        if self.break_factor < 1:
            raise ValueError("CircuitConfig.break_factor must be at least 1")
        if not 0 <= self.break_jitter < 1:
            raise ValueError("CircuitConfig.break_jitter must be a fraction below 1")

    @classmethod
    def from_settings(cls, settings: Settings, service: str = "") -> CircuitConfig:
        """The ``INTENT_CIRCUIT_*`` settings, each read by name: a setting renamed on one
        side fails here (mypy, AttributeError), it never falls back to a default; and the
        bulkhead of ``service`` (``INTENT_BULKHEAD_<SERVICE>``)."""
        return cls(
            failure_threshold=settings.circuit_failure_threshold,
            recovery_timeout=settings.circuit_recovery_timeout,
            half_open_timeout=settings.circuit_half_open_timeout,
            failure_window=settings.circuit_failure_window,
            min_throughput=settings.circuit_min_throughput,
            half_open_max_calls=settings.circuit_half_open_max_calls,
            success_threshold=settings.circuit_success_threshold,
            throttle_wait=settings.circuit_throttle_wait,
            recheck_interval=settings.circuit_recheck_interval,
            slow_call_duration=settings.circuit_slow_call_duration,
            failure_rate_threshold=settings.circuit_failure_rate_threshold,
            slow_call_rate_threshold=settings.circuit_slow_call_rate_threshold,
            break_factor=settings.circuit_break_factor,
            break_max=settings.circuit_break_max,
            break_jitter=settings.circuit_break_jitter,
            max_concurrent_calls=settings.bulkhead(service),
            bulkhead_wait=settings.bulkhead_wait,
        )


@dataclass(frozen=True)
class CircuitContext:
    """The guide's description of a guarded call, used in log lines."""

    service_name: str
    endpoint: str = ""
    method: str = ""

    def __str__(self) -> str:
        call = " ".join(part for part in (self.method, self.endpoint) if part)
        return f"{self.service_name} {call}".strip()
