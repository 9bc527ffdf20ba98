"""The breaker's rules as plain functions of their inputs: no clock, no store.

The in-memory store applies them directly; the Redis store's Lua scripts
(``intent/lua/breaker``) apply the same rules, and the contract tests run one test body over
both stores to keep them in step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from intent.breaker.config import CircuitConfig

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
STATES = (CLOSED, OPEN, HALF_OPEN)

# Calls in the window are counted in this many buckets: exact counts per call would cost
# one sorted-set member per call (megabytes for a busy breaker), buckets cost a few fields.
# The count covers the last (N-1)/N to N/N of the window, so it never counts a call older
# than the window. Failures are few (the breaker trips on them), so they are kept exactly.
WINDOW_BUCKETS = 20


def bucket_width(window: float) -> float:
    return window / WINDOW_BUCKETS


def bucket_index(now: float, window: float) -> int:
    """The bucket a call made at ``now`` is counted in."""
    return math.floor(now / bucket_width(window))


def oldest_live_bucket(now: float, window: float) -> int:
    """The oldest bucket still counted at ``now``."""
    return bucket_index(now, window) - WINDOW_BUCKETS + 1


def calls_in_window(buckets: Mapping[int, int], now: float, window: float) -> int:
    oldest = oldest_live_bucket(now, window)
    return sum(count for index, count in buckets.items() if index >= oldest)


def failures_in_window(failure_times: Iterable[float], now: float, window: float) -> int:
    """Failures strictly younger than the window."""
    return sum(1 for moment in failure_times if moment > now - window)


def failures_in_buckets(failure_times: Iterable[float], now: float, window: float) -> int:
    """Failures over the span the window's calls are counted in (whole buckets, from the
    oldest live one's start), so that a failure rate compares like with like."""
    start = oldest_live_bucket(now, window) * bucket_width(window)
    return sum(1 for moment in failure_times if moment >= start)


def should_trip(failures: int, calls: int, config: CircuitConfig, slow: int = 0) -> bool:
    """The guide's rule: enough failures in the window, and enough calls to judge by. Calls
    still in flight past ``slow_call_duration`` (:func:`is_slow`) count as failures."""
    return failures + slow >= config.failure_threshold and calls >= config.min_throughput


def rate_reached(count: int, calls: int, percent: float) -> bool:
    """``count`` is at least ``percent`` % of ``calls`` (0 % is a rule turned off). Compared
    as count * 100 >= percent * calls, the same float steps as the Lua scripts take."""
    return percent > 0 and calls > 0 and count * 100 >= percent * calls


def trip_rule(
    failures: int,
    calls: int,
    config: CircuitConfig,
    slow: int = 0,
    slow_done: int = 0,
    rate_failures: int | None = None,
) -> str | None:
    """The reason of the first rule that trips, else None: the failure count (with the
    ``slow`` calls still in flight), the failure rate, then the rate of the ``slow_done``
    calls that finished slower than ``slow_call_duration``; each over ``min_throughput``."""
    if should_trip(failures, calls, config, slow):
        return trip_reason(failures, calls, config, slow)
    if calls < config.min_throughput:
        return None
    counted = failures if rate_failures is None else rate_failures
    if rate_reached(counted, calls, config.failure_rate_threshold):
        return rate_reason("failure", counted, calls, config.failure_rate_threshold, config)
    if rate_reached(slow_done, calls, config.slow_call_rate_threshold):
        return rate_reason("slow-call", slow_done, calls, config.slow_call_rate_threshold, config)
    return None


def rate_reason(rule: str, count: int, calls: int, percent: float, config: CircuitConfig) -> str:
    return (
        f"{rule} rate {count * 100 / calls:g}% >= {percent:g}% over {calls} calls "
        f"in the last {config.failure_window:g} s"
    )


def is_slow_call(duration: float, config: CircuitConfig) -> bool:
    """A finished call that took longer than the slow-call duration (the slow-call rate)."""
    return duration > config.slow_call_duration


def bulkhead_full(in_flight: int, config: CircuitConfig) -> bool:
    """The fleet already has ``max_concurrent_calls`` calls in flight (0: no bulkhead)."""
    return 0 < config.max_concurrent_calls <= in_flight


def break_duration(trips: int, config: CircuitConfig, spread: float) -> float:
    """How long the ``trips``-th consecutive trip keeps the breaker open. ``spread`` is a
    number in [0, 1) drawn by the store once per trip (so ``until`` is one value that every
    process reads): the grown durations move by up to +/- ``break_jitter`` of themselves;
    the first is ``recovery_timeout`` exactly, and none is shorter or above the cap. A
    factor of 1 is no growth: every open lasts ``recovery_timeout`` exactly, unspread."""
    if trips <= 1 or config.break_factor == 1:
        return config.recovery_timeout
    cap = max(config.break_max, config.recovery_timeout)
    try:
        grown = config.recovery_timeout * config.break_factor ** (trips - 1)
    except OverflowError:
        return cap
    spread_out = grown * (1 + config.break_jitter * (2 * spread - 1))
    return max(config.recovery_timeout, min(cap, spread_out))


def must_throttle(
    failures: int, calls: int, in_flight: int, config: CircuitConfig, slow: int = 0
) -> bool:
    """Refuse a call while failures are pending, if the calls already in flight would trip
    the breaker by themselves should they fail too.

    This is what bounds the calls a fleet sends to a dead service: every admitted call is
    in flight until its outcome is known, so failures + in flight never pass the threshold
    (once the throughput minimum is met), whatever the number of processes. ``slow`` calls
    are pending failures already; ``in_flight`` counts the other calls.
    """
    pending = failures + slow + in_flight
    return pending >= config.failure_threshold and calls >= config.min_throughput


# -- slow calls ------------------------------------------------------------------------
# A call's lease expires half_open_timeout after it started, so its start is known from
# the lease. ``answered`` is the latest start of a call known to have ended: its slot
# asked again (a sequential caller's next call proves the last one over) or it reported
# a success. A call started after that and in flight longer than slow_call_duration is
# evidence that the service stopped answering: a service that answers other calls
# started after a slow one has an outlier, not a hang, and is left alone.


def lease_start(expiry: float, config: CircuitConfig) -> float:
    return expiry - config.half_open_timeout


def is_unanswered(start: float, answered: float) -> bool:
    return start > answered


def is_slow(start: float, now: float, config: CircuitConfig) -> bool:
    """In flight longer than the slow-call duration (a lease that lapsed no longer counts)."""
    return start < now - config.slow_call_duration


def slow_and_young(
    expiries: Iterable[float], now: float, answered: float, config: CircuitConfig
) -> tuple[int, int]:
    """Of the unexpired, unanswered leases: how many are slow, and how many are not (yet)."""
    slow = young = 0
    for expiry in expiries:
        start = lease_start(expiry, config)
        if expiry <= now or not is_unanswered(start, answered):
            continue
        if is_slow(start, now, config):
            slow += 1
        else:
            young += 1
    return slow, young


def clean_calls_count(now: float, suspect_since: float, config: CircuitConfig) -> bool:
    """Whether calls admitted before failures began still count as in flight.

    Their successes are not reported (that is what keeps a healthy call at one round trip),
    so a finished one looks in flight until its slot calls again. They are presumed settled
    ``throttle_wait`` after the first failure: a dead service fails them well within it, and
    a call waiting on the throttle is never refused because of an idle process's lease.
    """
    return now < suspect_since + config.throttle_wait


def trials_close(successes: int, config: CircuitConfig) -> bool:
    return successes >= config.success_threshold


def trip_reason(failures: int, calls: int, config: CircuitConfig, slow: int = 0) -> str:
    if slow:
        return (
            f"{failures} failures and {slow} calls slower than "
            f"{config.slow_call_duration:g} s in the last {config.failure_window:g} s "
            f"({calls} calls)"
        )
    return f"{failures} failures in the last {config.failure_window:g} s ({calls} calls)"


def slow_trial_reason(config: CircuitConfig) -> str:
    return f"trial call slower than {config.slow_call_duration:g} s"


def close_reason(successes: int) -> str:
    return f"{successes} trial call{'s' if successes != 1 else ''} succeeded"


RECOVERY_REASON = "recovery timeout elapsed"
TRIAL_FAILED_REASON = "trial call failed"
