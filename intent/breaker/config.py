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
        if self.throttle_wait < 0:
            raise ValueError("CircuitConfig.throttle_wait must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> CircuitConfig:
        """The ``INTENT_CIRCUIT_*`` settings, each read by name: a setting renamed on one
        side fails here (mypy, AttributeError), it never falls back to a default."""
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
