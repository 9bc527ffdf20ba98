"""A consumer's configuration, and the redelivery policy as plain functions of it."""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from intent.retry import Backoff
from intent.settings import Settings

UnknownTypePolicy = Literal["ack", "dead_letter"]

# The settings' own defaults (no environment read): each default is written once, there.
DEFAULTS = Settings.model_construct()
# settings.py checks the value against the same two words.
_UNKNOWN_TYPE = cast(UnknownTypePolicy, DEFAULTS.consumer_unknown_type)

# Group and consumer names end up in Redis keys (idempotency marks) and in logs.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")  # fullmatch: "$" lets "x\n" in


def default_consumer_name() -> str:
    """``host-pid``: unique per process, so a restarted consumer never inherits a dead one's
    name (its pending entries are taken over by XAUTOCLAIM instead)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:80] or "host"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class ConsumerConfig:
    """How one consumer reads, retries, takes over and stops (times in seconds)."""

    group: str
    consumer: str
    batch_size: int = DEFAULTS.consumer_batch_size  # entries per XREADGROUP (COUNT)
    # The longest wait of one read (BLOCK); also bounds a stop's delay when idle.
    block: float = DEFAULTS.consumer_block
    # Deliveries of a failing event before it is dead-lettered.
    max_deliveries: int = DEFAULTS.consumer_max_deliveries
    # The wait before the 2nd delivery; doubles each delivery, up to the max.
    retry_backoff: float = DEFAULTS.consumer_retry_backoff
    retry_backoff_max: float = DEFAULTS.consumer_retry_backoff_max
    # Each wait is drawn from [wait * (1 - jitter), wait].
    retry_jitter: float = DEFAULTS.retry_jitter
    # The idle time after which another consumer takes an entry over.
    claim_idle: float = DEFAULTS.consumer_claim_idle
    unknown_type: UnknownTypePolicy = _UNKNOWN_TYPE
    # After a stop request, keep handling events in hand this long.
    shutdown_grace: float = DEFAULTS.consumer_shutdown_grace
    start_id: str = "$"  # where a group created by this consumer starts ("$": new events only)

    def __post_init__(self) -> None:
        for label, name in (("group", self.group), ("consumer", self.consumer)):
            if not _NAME.fullmatch(name):
                raise ValueError(f"{label} name {name!r}: use 1-128 of A-Z a-z 0-9 . _ : @ -")
        if self.batch_size < 1 or self.max_deliveries < 1:
            raise ValueError("batch_size and max_deliveries must be at least 1")
        if min(self.block, self.retry_backoff, self.retry_backoff_max, self.claim_idle) <= 0:
            raise ValueError("block, retry_backoff(_max) and claim_idle must be positive")
        if self.unknown_type not in ("ack", "dead_letter"):
            raise ValueError("unknown_type must be 'ack' or 'dead_letter'")

    @classmethod
    def from_settings(
        cls, settings: Settings, group: str, consumer: str | None = None, **overrides: object
    ) -> ConsumerConfig:
        values: dict[str, object] = {
            "batch_size": settings.consumer_batch_size,
            "block": settings.consumer_block,
            "max_deliveries": settings.consumer_max_deliveries,
            "retry_backoff": settings.consumer_retry_backoff,
            "retry_backoff_max": settings.consumer_retry_backoff_max,
            "retry_jitter": settings.retry_jitter,
            "claim_idle": settings.consumer_claim_idle,
            "unknown_type": settings.consumer_unknown_type,
            "shutdown_grace": settings.consumer_shutdown_grace,
        }
        values.update(overrides)
        return cls(group=group, consumer=consumer or default_consumer_name(), **values)  # type: ignore[arg-type]

    @property
    def backoff(self) -> Backoff:
        return Backoff(
            initial=self.retry_backoff,
            maximum=self.retry_backoff_max,
            jitter=self.retry_jitter,
            max_retries=self.max_deliveries - 1,
        )

    @property
    def claim_interval(self) -> float:
        """How often to look for other consumers' stale entries: half the idle time, so an
        entry waits between ``claim_idle`` and 1.5 x ``claim_idle`` after its consumer died."""
        return min(max(self.claim_idle / 2, 0.05), 30.0)

    @property
    def lease_renewal(self) -> float:
        """Entries held longer than this are re-claimed (idle reset) before being handled,
        so a slow batch is not taken over by another consumer halfway: a quarter of the
        idle time leaves the handler in progress most of it."""
        return self.claim_idle / 4

    @property
    def max_retrying(self) -> int:
        """Failed events waiting for a retry beyond which no new entries are read."""
        return 10 * self.batch_size


def retry_delay(
    config: ConsumerConfig, deliveries: int, rand: Callable[[], float] = random.random
) -> float:
    """The wait before delivering again an event whose ``deliveries``-th delivery failed."""
    return config.backoff.delay(max(0, deliveries - 1), rand)


def gives_up(config: ConsumerConfig, deliveries: int) -> bool:
    """Whether an event that failed on its ``deliveries``-th delivery goes to the dead letters."""
    return deliveries >= config.max_deliveries
