"""Throughput of analyses submitted as batches against the same analyses submitted one by
one, in one run.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set), the reference services
(no injected latency) and one prefork worker; both ways run on that same worker, in
alternating rounds, and each rate is the median of its rounds.

    python bench/batch.py [--n 200] [--batch-size 50] [--rounds 5] [--concurrency 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LIFTED_LIMITS,
    alternate,
    analyses,
    machine,
    median,
    rounds_line,
    stdout_to_stderr,
)
from bench.pipeline import pipeline_round


def batch_round(n: int, batch_size: int) -> float:
    from intent.models import BatchResult
    from tasks import submit_batch
    from tasks.submit import wait_for  # celery #4039: a stored result's message missed

    requests = analyses(n, uuid.uuid4().hex[:8])
    started = time.perf_counter()
    submitted = [
        submit_batch(requests[start : start + batch_size]) for start in range(0, n, batch_size)
    ]
    for handle in submitted:
        batch = BatchResult.model_validate(wait_for(handle, 120))
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

    from intent.dev.stack import Stack

    with stdout_to_stderr(), Stack(concurrency=args.concurrency, env=LIFTED_LIMITS):
        rates = alternate(
            {"single": pipeline_round, "batch": lambda n: batch_round(n, args.batch_size)},
            args.n,
            args.rounds,
        )
    single_rate, batch_rate = median(rates["single"]), median(rates["batch"])
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
    print(
        f"worker           prefork, {args.concurrency} processes; {args.rounds} rounds of "
        f"{args.n} analyses each way, batches of {args.batch_size}"
    )
    print(rounds_line("one by one", rates["single"], "analyses/s"))
    print(rounds_line("batched", rates["batch"], "analyses/s"))
    print(f"ratio            {figures['ratio']:.2f}  (batched / one by one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
