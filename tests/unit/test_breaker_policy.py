"""The breaker's rules as plain functions: no store, no clock."""

from __future__ import annotations

from dataclasses import fields

import pytest

from intent.breaker import policy
from intent.breaker.config import CircuitConfig, CircuitContext


def test_buckets_split_the_window_evenly() -> None:
    assert policy.bucket_width(120.0) == 6.0
    assert policy.bucket_index(60.0, 120.0) == 10
    assert policy.bucket_index(65.9, 120.0) == 10
    assert policy.bucket_index(66.0, 120.0) == 11
    assert policy.oldest_live_bucket(66.0, 120.0) == 11 - policy.WINDOW_BUCKETS + 1


def test_calls_in_window_never_counts_a_call_older_than_the_window() -> None:
    window = 20.0  # one-second buckets
    buckets = {100: 3, 110: 2, 119: 1, 120: 4}
    # at 120.5 the live buckets are 101..120: bucket 100 (calls at 100.0-100.99) is out
    assert policy.calls_in_window(buckets, 120.5, window) == 7
    assert policy.calls_in_window(buckets, 139.9, window) == 4
    assert policy.calls_in_window(buckets, 140.0, window) == 0


def test_failures_in_window_counts_only_younger_failures() -> None:
    assert policy.failures_in_window([1.0, 5.0, 9.0], now=11.0, window=10.0) == 2
    assert policy.failures_in_window([1.0], now=11.0, window=10.0) == 0  # exactly window old


def test_trips_on_threshold_and_minimum_throughput_together() -> None:
    config = CircuitConfig(failure_threshold=5, min_throughput=10)
    assert not policy.should_trip(4, 100, config)
    assert not policy.should_trip(9, 9, config)
    assert policy.should_trip(5, 10, config)


def test_throttles_when_calls_in_flight_could_trip_it() -> None:
    config = CircuitConfig(failure_threshold=5, min_throughput=5)
    assert not policy.must_throttle(failures=1, calls=5, in_flight=3, config=config)
    assert policy.must_throttle(failures=1, calls=5, in_flight=4, config=config)
    assert policy.must_throttle(failures=4, calls=5, in_flight=1, config=config)
    # below the throughput minimum the breaker cannot trip yet: more calls are needed
    assert not policy.must_throttle(failures=4, calls=4, in_flight=4, config=config)


def test_trials_close_after_the_success_threshold() -> None:
    config = CircuitConfig(success_threshold=2)
    assert not policy.trials_close(1, config)
    assert policy.trials_close(2, config)
    assert policy.close_reason(1) == "1 trial call succeeded"
    assert policy.close_reason(2) == "2 trial calls succeeded"


def test_trip_reason_names_failures_window_and_calls() -> None:
    config = CircuitConfig(failure_window=120)
    assert policy.trip_reason(5, 7, config) == "5 failures in the last 120 s (7 calls)"


def test_config_defaults_are_the_guides() -> None:
    config = CircuitConfig()
    assert (config.failure_threshold, config.recovery_timeout, config.half_open_timeout) == (
        5,
        60.0,
        30.0,
    )
    assert (config.failure_window, config.min_throughput) == (120.0, 5)
    assert (config.half_open_max_calls, config.success_threshold) == (1, 1)


@pytest.mark.parametrize(
    "field, value",
    [
        ("failure_threshold", 0),
        ("recovery_timeout", 0),
        ("half_open_max_calls", 0),
        ("throttle_wait", -1),
    ],
)
def test_config_rejects_values_it_cannot_run_with(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CircuitConfig(**{field: value})  # type: ignore[arg-type]


def test_config_from_settings_reads_circuit_fields_and_keeps_defaults_for_unset_ones() -> None:
    from intent.settings import load_settings

    settings = load_settings(
        circuit_failure_threshold=7, circuit_recovery_timeout=12.5, circuit_half_open_max_calls=2
    )
    config = CircuitConfig.from_settings(settings)
    assert config.failure_threshold == 7
    assert config.recovery_timeout == 12.5
    assert config.half_open_max_calls == 2
    assert config.failure_window == 120.0


def test_a_renamed_setting_fails_loudly_instead_of_falling_back_to_a_default() -> None:
    from intent.settings import Settings

    class Renamed:  # every circuit setting but one, which went by another name
        def __init__(self) -> None:
            for name, field in Settings.model_fields.items():
                if name.startswith("circuit_") and name != "circuit_failure_window":
                    setattr(self, name, field.default)
            self.circuit_window = 10.0

    with pytest.raises(AttributeError, match="circuit_failure_window"):
        CircuitConfig.from_settings(Renamed())  # type: ignore[arg-type]


def test_the_config_defaults_are_the_settings_defaults_field_by_field() -> None:
    from intent.settings import Settings

    defaults, from_settings = CircuitConfig(), CircuitConfig.from_settings(Settings())
    # the bulkhead's settings are named per service (INTENT_BULKHEAD_<SERVICE>), not circuit_*
    bulkhead = {
        "max_concurrent_calls": "bulkhead_context_service",
        "bulkhead_wait": "bulkhead_wait",
    }
    for spec in fields(CircuitConfig):
        setting = bulkhead.get(spec.name, f"circuit_{spec.name}")
        assert getattr(defaults, spec.name) == getattr(from_settings, spec.name), spec.name
        assert getattr(defaults, spec.name) == Settings.model_fields[setting].default
    assert defaults == from_settings


def test_config_from_the_service_settings() -> None:
    from intent.settings import load_settings

    config = CircuitConfig.from_settings(load_settings(circuit_failure_threshold=3))
    assert config.failure_threshold == 3
    assert config.min_throughput == 5


def test_context_describes_the_call() -> None:
    assert str(CircuitContext("context-service", "/api/v1/context", "GET")) == (
        "context-service GET /api/v1/context"
    )
