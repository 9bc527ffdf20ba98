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


# -- issue 15: rate rules, a growing break, the bulkhead ---------------------------------------
RATES = CircuitConfig(
    failure_threshold=5,
    min_throughput=10,
    failure_window=60.0,
    failure_rate_threshold=50.0,
    slow_call_rate_threshold=30.0,
)


def test_the_rate_rules_are_off_by_default_and_compare_count_times_100_to_percent() -> None:
    assert policy.rate_reached(1, 1, 0.0) is False  # 0 % is a rule turned off
    assert policy.rate_reached(0, 0, 50.0) is False  # no calls: no rate
    assert policy.rate_reached(1, 2, 50.0) is True
    assert policy.rate_reached(12, 25, 50.0) is False  # 48 %
    assert policy.rate_reached(13, 25, 50.0) is True  # 52 %
    defaults = CircuitConfig()
    assert (defaults.failure_rate_threshold, defaults.slow_call_rate_threshold) == (0.0, 0.0)
    assert policy.trip_rule(4, 4, defaults, slow_done=4) is None  # 100 %, but rules off


def test_trip_rule_names_the_first_rule_that_trips() -> None:
    assert policy.trip_rule(5, 20, RATES) == "5 failures in the last 60 s (20 calls)"
    assert policy.trip_rule(2, 3, RATES) is None  # 67 %, under the minimum throughput
    with_rate = CircuitConfig(failure_threshold=100, min_throughput=10, failure_rate_threshold=50.0)
    assert policy.trip_rule(13, 25, with_rate) == (
        "failure rate 52% >= 50% over 25 calls in the last 120 s"
    )
    assert policy.trip_rule(12, 25, with_rate) is None
    slow_rate = CircuitConfig(
        failure_threshold=100, min_throughput=10, slow_call_rate_threshold=30.0
    )
    assert policy.trip_rule(0, 10, slow_rate, slow_done=3) == (
        "slow-call rate 30% >= 30% over 10 calls in the last 120 s"
    )
    assert policy.trip_rule(0, 10, slow_rate, slow_done=2) is None
    # both rates reached: the failure rate is named first; the count before either
    assert policy.trip_rule(4, 8, RATES, slow_done=8) is None  # under 10 calls
    assert policy.trip_rule(4, 10, RATES, slow_done=5) == (
        "slow-call rate 50% >= 30% over 10 calls in the last 60 s"
    )
    assert policy.trip_rule(5, 10, RATES, slow_done=5).startswith("5 failures")  # type: ignore[union-attr]


def test_a_finished_call_is_slow_past_the_slow_call_duration() -> None:
    config = CircuitConfig(slow_call_duration=2.0)
    assert policy.is_slow_call(2.0, config) is False
    assert policy.is_slow_call(2.001, config) is True


def test_the_break_grows_by_the_factor_up_to_the_cap_and_the_first_is_exact() -> None:
    config = CircuitConfig(recovery_timeout=60, break_factor=2.0, break_max=600, break_jitter=0)
    durations = [policy.break_duration(trips, config, 0.99) for trips in range(1, 8)]
    assert durations == [60, 120, 240, 480, 600, 600, 600]
    assert policy.break_duration(0, config, 0.5) == 60
    assert policy.break_duration(10_000, config, 0.5) == 600  # no overflow


def test_the_jitter_spreads_grown_breaks_within_bounds_never_the_first() -> None:
    config = CircuitConfig(recovery_timeout=10, break_factor=3.0, break_max=100, break_jitter=0.1)
    assert {policy.break_duration(1, config, spread) for spread in (0.0, 0.5, 0.999)} == {10}
    assert policy.break_duration(2, config, 0.0) == pytest.approx(27.0)
    assert policy.break_duration(2, config, 0.5) == pytest.approx(30.0)
    assert policy.break_duration(2, config, 0.999) == pytest.approx(32.994)
    assert policy.break_duration(4, config, 0.999) == 100  # capped after the spread
    flat = CircuitConfig(recovery_timeout=10, break_factor=1.0, break_jitter=0.5)
    # factor 1 is no growth, and no spread: every open lasts the recovery timeout exactly
    assert {policy.break_duration(t, flat, d) for t in (2, 5) for d in (0.0, 0.999)} == {10}
    low_cap = CircuitConfig(recovery_timeout=10, break_max=5)
    assert policy.break_duration(3, low_cap, 0.5) == 10  # the cap never cuts the first


def test_the_bulkhead_is_full_at_its_limit_and_off_at_zero() -> None:
    assert policy.bulkhead_full(1000, CircuitConfig()) is False
    limited = CircuitConfig(max_concurrent_calls=3)
    assert policy.bulkhead_full(2, limited) is False
    assert policy.bulkhead_full(3, limited) is True


@pytest.mark.parametrize(
    "field, value",
    [
        ("failure_rate_threshold", -1.0),
        ("failure_rate_threshold", 101.0),
        ("slow_call_rate_threshold", 150.0),
        ("break_factor", 0.5),
        ("break_jitter", 1.0),
        ("max_concurrent_calls", -1),
        ("bulkhead_wait", -0.1),
    ],
)
def test_the_new_config_fields_refuse_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CircuitConfig(**{field: value})


def test_the_bulkhead_is_read_per_service_from_the_settings() -> None:
    from intent.settings import Settings

    settings = Settings(bulkhead_context_service=4, bulkhead_wait=0.5)
    assert CircuitConfig.from_settings(settings, "context-service").max_concurrent_calls == 4
    assert CircuitConfig.from_settings(settings, "prediction-service").max_concurrent_calls == 0
    assert CircuitConfig.from_settings(settings, "other").max_concurrent_calls == 0
    assert CircuitConfig.from_settings(settings, "context-service").bulkhead_wait == 0.5
