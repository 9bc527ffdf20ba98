"""Throughput of analyses submitted as batches against the same analyses submitted one by
one, in one run.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set), the reference services
(no injected latency) and one prefork worker; both ways run on that same worker, in
alternating rounds, and each rate is the median of its rounds.

    python bench/batch.py [--n 200] [--batch-size 50] [--rounds 5] [--concurrency 4] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline import machine

# One client submits everything, far above the default limits: lift them for both ways
# alike (every check still runs), so neither is measured waiting for a limit.
UNLIMITED = "1000000"
BENCH_ENV = {
    "INTENT_MAX_REQUESTS_PER_WINDOW": UNLIMITED,
    "INTENT_RATE_LIMIT_GET_CONTEXT": UNLIMITED,
    "INTENT_RATE_LIMIT_PREDICT": UNLIMITED,
}


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


def analyses(n: int, tag: str) -> list[dict[str, Any]]:
    """N requests; unique contexts, so no cache hit: every layer and call is paid for."""
    return [
        {
            "request_id": f"bench-{tag}-{i}",
            "client_id": "bench",
            "context_id": f"ctx-bench-{tag}-{i}",
            "pattern_id": ("checkout", "support")[i % 2],
        }
        for i in range(n)
    ]


def single_round(n: int) -> float:
    from tasks import submit

    requests = analyses(n, uuid.uuid4().hex[:8])
    started = time.perf_counter()
    submitted = [submit(request) for request in requests]
    for analysis in submitted:
        result = analysis.get(timeout=120)
        assert result.status == "completed", result
    return n / (time.perf_counter() - started)


def batch_round(n: int, batch_size: int) -> float:
    from intent.batch import BatchResult
    from tasks.batch import submit_batch

    requests = analyses(n, uuid.uuid4().hex[:8])
    started = time.perf_counter()
    submitted = [
        submit_batch(requests[start : start + batch_size]) for start in range(0, n, batch_size)
    ]
    for handle in submitted:
        batch = BatchResult.model_validate(handle.get(timeout=120))
        assert len(batch.by_status("completed")) == len(batch.items), batch
    return n / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="analyses per round, each way")
    parser.add_argument("--batch-size", type=int, default=50, help="requests per batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from tasks.stack import Stack

    single: list[float] = []
    batched: list[float] = []
    with stdout_to_stderr(), Stack(concurrency=args.concurrency, env=BENCH_ENV):
        # Warm up connections, pool processes and Redis before anything is measured.
        single_round(args.n // 2)
        batch_round(args.n // 2, args.batch_size)
        for _ in range(args.rounds):
            single.append(single_round(args.n))
            batched.append(batch_round(args.n, args.batch_size))
    single_rate, batch_rate = statistics.median(single), statistics.median(batched)
    figures = {
        "single_per_s": round(single_rate, 1),
        "batch_per_s": round(batch_rate, 1),
        "ratio": round(batch_rate / single_rate, 2),
        "n": args.n,
        "batch_size": args.batch_size,
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"machine          {machine()}")
    print(f"worker           prefork, {args.concurrency} processes; {args.rounds} rounds of "
          f"{args.n} analyses each way, batches of {args.batch_size}")  # fmt: skip
    print(
        f"one by one       {single_rate:8.1f} analyses/s  rounds: "
        + ", ".join(f"{r:.1f}" for r in single)
    )
    print(
        f"batched          {batch_rate:8.1f} analyses/s  rounds: "
        + ", ".join(f"{r:.1f}" for r in batched)
    )
    print(f"ratio            {figures['ratio']:.2f}  (batched / one by one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
