"""What the benchmarks share: the machine line, a Redis to run against, the alternating
rounds with their medians, and the limits lifted for the pipeline benches."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from intent.embedded import EmbeddedRedis

# One client submits everything, far above the default limits: lift them for both sides
# alike (every check still runs), so neither is measured waiting for a limit.
UNLIMITED = "1000000"
LIFTED_LIMITS = {
    "INTENT_MAX_REQUESTS_PER_WINDOW": UNLIMITED,
    "INTENT_RATE_LIMIT_GET_CONTEXT": UNLIMITED,
    "INTENT_RATE_LIMIT_PREDICT": UNLIMITED,
}


def analyses(n: int, tag: str) -> list[dict[str, object]]:
    """N requests with unique contexts, so no cache hit: every layer and call is paid for."""
    return [
        {
            "request_id": f"bench-{tag}-{i}",
            "client_id": "bench",
            "context_id": f"ctx-bench-{tag}-{i}",
            "pattern_id": ("checkout", "support")[i % 2],
        }
        for i in range(n)
    ]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """INTENT_REDIS_URL when set, else a private embedded Valkey for the run."""
    url = os.environ.get("INTENT_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send fd 1 to stderr meanwhile: the worker and servers started here inherit it and
    print banners, and ``--json`` promises one object alone on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def alternate(
    variants: dict[str, Callable[[int], float]], n: int, rounds: int
) -> dict[str, list[float]]:
    """Warm every variant up on n // 2, then run them in turn, ``rounds`` times each, so a
    noisy machine shifts them alike; returns each variant's rates."""
    for run in variants.values():
        run(max(1, n // 2))
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            rates[name].append(run(n))
    return rates


def median(rates: list[float]) -> float:
    return statistics.median(rates)


def rounds_line(label: str, rates: list[float], unit: str) -> str:
    shown = ", ".join(f"{r:.1f}" for r in rates)
    return f"{label:<16} {median(rates):8.1f} {unit:<11} rounds: {shown}"


def percentile(samples: list[float], pct: float) -> float:
    """The ``pct``-th percentile of ``samples`` (nearest rank: a value that was measured)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def alternate_samples(
    variants: dict[str, Callable[[int], list[float]]], n: int, chunks: int
) -> dict[str, list[float]]:
    """``n`` samples of each variant, taken in ``chunks`` turns alternating between them
    (as :func:`alternate` does for rates), so a noisy machine shifts them alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    sizes = [n // chunks + (1 if i < n % chunks else 0) for i in range(chunks)]
    for size in sizes:
        for name, run in variants.items():
            samples[name].extend(run(size))
    return samples
