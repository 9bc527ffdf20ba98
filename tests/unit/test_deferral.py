"""How long a step waits for an open breaker: until its trial admission, plus jitter."""

from __future__ import annotations

import random

from intent.errors import CircuitOpenError
from intent.settings import Settings
from tasks.base import deferral_delay

SETTINGS = Settings(circuit_recovery_timeout=60, defer_jitter=1.0)


def test_waits_until_the_breaker_admits_a_trial_plus_jitter() -> None:
    random.seed(1)
    delays = [deferral_delay(CircuitOpenError("svc", 1000.0 + 12.5), SETTINGS, 1000.0)
              for _ in range(200)]  # fmt: skip
    assert min(delays) >= 12.5
    assert max(delays) <= 13.5
    assert max(delays) - min(delays) > 0.5  # the fleet is spread, not synchronised


def test_a_past_until_means_now_and_an_unknown_one_means_a_recovery_timeout() -> None:
    assert deferral_delay(CircuitOpenError("svc", 900.0), SETTINGS, 1000.0) <= 1.0
    assert 60.0 <= deferral_delay(CircuitOpenError("svc", None), SETTINGS, 1000.0) <= 61.0


def test_a_skewed_clock_never_waits_longer_than_a_recovery_timeout() -> None:
    far = CircuitOpenError("svc", 1000.0 + 3600)
    assert deferral_delay(far, SETTINGS, 1000.0) <= 61.0
