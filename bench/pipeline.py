"""Throughput of the full pipeline against Celery's bare four-link chain, in one run.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set), the reference services
(no injected latency) and one prefork worker; both workloads run on that same worker,
alternating rounds, and each rate is the median of its rounds.

    python bench/pipeline.py [--n 200] [--rounds 5] [--concurrency 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def bare_round(n: int, payload: dict[str, Any]) -> float:
    from celery import chain

    from tasks.noop import noop

    started = time.perf_counter()
    results = [chain(noop.s(payload), noop.s(), noop.s(), noop.s()).apply_async() for _ in range(n)]
    for result in results:
        result.get(timeout=120)
    return n / (time.perf_counter() - started)


def pipeline_round(n: int, tag: str) -> float:
    from tasks import submit

    started = time.perf_counter()
    analyses = [
        submit(
            {
                "request_id": f"bench-{tag}-{i}",
                "client_id": "bench",
                # Unique contexts: no cache hit, every layer and call is paid for.
                "context_id": f"ctx-bench-{tag}-{i}",
                "pattern_id": ("checkout", "support")[i % 2],
            }
        )
        for i in range(n)
    ]
    for analysis in analyses:
        result = analysis.get(timeout=120)
        assert result.status == "completed", result
    return n / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="analyses (and chains) per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from tasks.stack import Stack

    payload = {"request_id": "bare", "client_id": "bench", "context_id": "c", "pattern_id": "p"}
    bare: list[float] = []
    full: list[float] = []
    # The run makes more calls a minute than the default limits allow: lift them so the
    # figure measures the layers, not the throttle (every limit check still runs).
    lifted = {
        "INTENT_MAX_REQUESTS_PER_WINDOW": "1000000",
        "INTENT_RATE_LIMIT_GET_CONTEXT": "1000000",
        "INTENT_RATE_LIMIT_PREDICT": "1000000",
    }
    with Stack(concurrency=args.concurrency, env=lifted):
        # Warm up connections, pool processes and Redis before anything is measured.
        bare_round(args.n // 2, payload)
        pipeline_round(args.n // 2, uuid.uuid4().hex[:8])
        for _ in range(args.rounds):
            bare.append(bare_round(args.n, payload))
            full.append(pipeline_round(args.n, uuid.uuid4().hex[:8]))
    bare_rate, full_rate = statistics.median(bare), statistics.median(full)
    figures = {
        "pipeline_per_s": round(full_rate, 1),
        "bare_chain_per_s": round(bare_rate, 1),
        "ratio": round(full_rate / bare_rate, 3),
        "n": args.n,
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"machine          {machine()}")
    print(f"worker           prefork, {args.concurrency} processes; {args.rounds} rounds of "
          f"{args.n}")  # fmt: skip
    print(
        f"bare chain       {bare_rate:8.1f} chains/s    rounds: "
        + ", ".join(f"{r:.1f}" for r in bare)
    )
    print(
        f"full pipeline    {full_rate:8.1f} analyses/s  rounds: "
        + ", ".join(f"{r:.1f}" for r in full)
    )
    print(f"ratio            {figures['ratio']:.3f}  (full pipeline / bare chain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
