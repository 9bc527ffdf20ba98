"""The fleet-wide retry budget per downstream service, Finagle's ``RetryBudget`` shared by
every worker process: retries of a service's transient failures may spend at most
``INTENT_RETRY_BUDGET_PERCENT`` of its calls in the last ``INTENT_RETRY_BUDGET_WINDOW``
seconds, plus ``INTENT_RETRY_BUDGET_MIN_PER_SECOND`` for each of those seconds.

The calls are the ones the service's breaker already counts (its ``calls`` hash, one bucket
per ``failure_window / 20`` seconds; the window is rounded up to whole buckets), so a call
costs nothing more; a retry costs one script run, which counts it and answers atomically
for the whole fleet. A step over budget does not retry: its fallback answers, else it
waits (``RetryBudgetExceeded``, a deferral that counts as one of its retries). While Redis cannot be
reached the budget allows every retry: each step's own ``INTENT_RETRY_MAX`` still bounds
them, and the breaker's fallback still guards the service.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from intent import scripts
from intent.breaker.policy import WINDOW_BUCKETS
from intent.breaker.stores.redis import BreakerKeys
from intent.keys import Keys
from intent.settings import Settings

log = logging.getLogger("intent.budget")

# Heard of each spend: (service, allowed).
OnSpend = Callable[[str, bool], None]


@dataclass(frozen=True)
class BudgetStatus:
    """One service's budget now: ``retries`` spent of ``allowance`` over the ``calls`` of
    the last ``window`` seconds (the setting rounded up to whole breaker buckets)."""

    service: str
    calls: int
    retries: int
    allowance: float
    percent: float
    min_per_second: float
    window: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RetryBudget:
    """Spends and shows the retry budgets of the downstream services, in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        failure_window: float,
        percent: float,
        min_per_second: float,
        window: float,
        on_spend: OnSpend | None = None,
        warn_interval: float = 30.0,
    ):
        self.client = client
        self.keys = keys
        self.failure_window = failure_window
        self.percent = percent
        self.min_per_second = min_per_second
        self.window = window
        # What the script counts over: the window rounded up to whole breaker buckets.
        width = failure_window / WINDOW_BUCKETS
        self.span = max(1, min(WINDOW_BUCKETS, math.ceil(window / width - 1e-9))) * width
        self.on_spend = on_spend
        self.warn_interval = warn_interval
        self._script = scripts.register(client, "retry_budget", family="breaker", prelude="_common")
        self._warned_at = float("-inf")

    @classmethod
    def from_settings(
        cls, client: redis.Redis, settings: Settings, on_spend: OnSpend | None = None
    ) -> RetryBudget:
        return cls(
            client,
            Keys(settings.key_prefix),
            failure_window=settings.circuit_failure_window,
            percent=settings.retry_budget_percent,
            min_per_second=settings.retry_budget_min_per_second,
            window=settings.retry_budget_window,
            on_spend=on_spend,
        )

    def _run(self, service: str, spend: bool) -> list[str]:
        keys = [*BreakerKeys.of(self.keys, service).as_list(), self.keys.retry_budget(service)]
        args = [self.failure_window, self.window, self.percent, self.min_per_second]
        reply = self._script(keys=keys, args=[*args, "1" if spend else "0"])
        return [str(part) for part in json.loads(reply)]

    def spend(self, service: str) -> float | None:
        """Spend one retry of ``service``: ``None`` if the budget had it, else the seconds
        until it may be asked again (the next bucket: old retries leave the window)."""
        try:
            allowed, _calls, _retries, _allowance, next_bucket = self._run(service, spend=True)
        except redis.RedisError as exc:
            self._warn(exc)
            return None
        granted = allowed == "1"
        if self.on_spend is not None:
            self.on_spend(service, granted)
        return None if granted else max(0.0, float(next_bucket))

    def status(self, service: str) -> BudgetStatus:
        """What ``service``'s budget holds now (spends nothing)."""
        _allowed, calls, retries, allowance, _next = self._run(service, spend=False)
        return BudgetStatus(
            service,
            int(calls),
            int(retries),
            float(allowance),
            self.percent,
            self.min_per_second,
            self.span,
        )

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= self.warn_interval:
            self._warned_at = now
            log.warning("retry budget: Redis unreachable (%s); retries allowed meanwhile", exc)
