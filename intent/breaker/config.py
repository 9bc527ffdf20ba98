"""What a breaker is tuned by: the integration guide's ``CircuitConfig``, and ``CircuitContext``,
the optional description of one guarded call."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


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

    failure_threshold: int = 5
    recovery_timeout: float = 60.0
    half_open_timeout: float = 30.0
    failure_window: float = 120.0
    min_throughput: int = 5
    half_open_max_calls: int = 1
    success_threshold: int = 1
    throttle_wait: float = 0.5
    recheck_interval: float = 1.0
    slow_call_duration: float = 5.0

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
    def from_settings(cls, settings: Any) -> CircuitConfig:
        """Read ``circuit_<field>`` from settings; a field the settings lack keeps its default."""
        values: dict[str, Any] = {
            spec.name: getattr(settings, f"circuit_{spec.name}", spec.default)
            for spec in fields(cls)
        }
        return cls(**values)


@dataclass(frozen=True)
class CircuitContext:
    """The guide's description of a guarded call, used in log lines."""

    service_name: str
    endpoint: str = ""
    method: str = ""

    def __str__(self) -> str:
        call = " ".join(part for part in (self.method, self.endpoint) if part)
        return f"{self.service_name} {call}".strip()
