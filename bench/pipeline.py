"""Throughput of the full pipeline against Celery's bare four-link chain, in one run.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set), the reference services
(no injected latency) and one prefork worker; the workloads run on that same worker,
alternating rounds, and each rate is the median of its rounds.

Then the end-to-end latency at light load: one analysis (or bare chain) in flight at a
time, from submit to its result in hand, ``--latency-n`` of each in alternating chunks;
p50 and p99 of each.

The baseline is Celery's chain as it comes: every link stores its result. The pipeline
stores only the analysis result (its steps' results are read by nobody), so a second
baseline gives the bare chain the same policy, and the run reports both ratios.

    python bench/pipeline.py [--n 200] [--rounds 5] [--concurrency 4] [--latency-n 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LIFTED_LIMITS,
    alternate,
    alternate_samples,
    analyses,
    machine,
    median,
    percentile,
    rounds_line,
    stdout_to_stderr,
)


def _bare_chain(payload: dict[str, Any], last_result_only: bool = False) -> Any:
    """Celery's four-link chain of no-op tasks; with ``last_result_only`` the first three
    links do not store their result, as the pipeline's steps do not."""
    from celery import chain

    from bench.noop import noop

    first = {"ignore_result": last_result_only}
    return chain(
        noop.s(payload).set(**first), noop.s().set(**first), noop.s().set(**first), noop.s()
    )


def bare_round(n: int, payload: dict[str, Any], last_result_only: bool = False) -> float:
    """N bare chains submitted at once; chains per second until the last result."""

    from tasks.submit import wait_for  # as Analysis.get() waits (celery #4039)

    def links() -> Any:
        return _bare_chain(payload, last_result_only)

    started = time.perf_counter()
    results = [links().apply_async() for _ in range(n)]
    for result in results:
        wait_for(result, 120)
    return n / (time.perf_counter() - started)


def pipeline_round(n: int) -> float:
    """N analyses submitted one by one through the full pipeline."""
    from tasks import submit

    requests = analyses(n, uuid.uuid4().hex[:8])
    started = time.perf_counter()
    submitted = [submit(request) for request in requests]
    for analysis in submitted:
        result = analysis.get(timeout=120)
        assert result.status == "completed", result
    return n / (time.perf_counter() - started)


def bare_latencies(n: int, payload: dict[str, Any]) -> list[float]:
    """N bare chains one at a time: seconds from submit to the last link's result."""
    from tasks.submit import wait_for

    samples = []
    for _ in range(n):
        started = time.perf_counter()
        wait_for(_bare_chain(payload).apply_async(), 120)
        samples.append(time.perf_counter() - started)
    return samples


def pipeline_latencies(n: int) -> list[float]:
    """N analyses one at a time: seconds from submit() to the completed result."""
    from tasks import submit

    samples = []
    for request in analyses(n, uuid.uuid4().hex[:8]):
        started = time.perf_counter()
        result = submit(request).get(timeout=120)
        samples.append(time.perf_counter() - started)
        assert result.status == "completed", result
    return samples


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="analyses (and chains) per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    parser.add_argument(
        "--latency-n", type=int, default=200, help="analyses (and chains) timed one at a time"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from intent.dev.stack import Stack

    payload = {"request_id": "bare", "client_id": "bench", "context_id": "c", "pattern_id": "p"}
    with (
        stdout_to_stderr(),
        Stack(concurrency=args.concurrency, env=LIFTED_LIMITS, include=["bench.noop"]),
    ):
        rates = alternate(
            {
                "bare": lambda n: bare_round(n, payload),
                "bare_last_result_only": lambda n: bare_round(n, payload, last_result_only=True),
                "pipeline": pipeline_round,
            },
            args.n,
            args.rounds,
        )
        latencies = alternate_samples(
            {"bare": lambda n: bare_latencies(n, payload), "pipeline": pipeline_latencies},
            args.latency_n,
            chunks=4,
        )
    bare_rate, full_rate = median(rates["bare"]), median(rates["pipeline"])
    same_policy_rate = median(rates["bare_last_result_only"])
    figures = {
        "pipeline_per_s": round(full_rate, 1),
        "bare_chain_per_s": round(bare_rate, 1),
        "ratio": round(full_rate / bare_rate, 3),
        "n": args.n,
        "bare_chain_last_result_only_per_s": round(same_policy_rate, 1),
        "ratio_last_result_only": round(full_rate / same_policy_rate, 3),
        "latency_n": args.latency_n,
        "pipeline_p50_ms": _ms(percentile(latencies["pipeline"], 50)),
        "pipeline_p99_ms": _ms(percentile(latencies["pipeline"], 99)),
        "bare_p50_ms": _ms(percentile(latencies["bare"], 50)),
        "bare_p99_ms": _ms(percentile(latencies["bare"], 99)),
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"machine          {machine()}")
    print(
        f"worker           prefork, {args.concurrency} processes; {args.rounds} rounds of {args.n}"
    )
    print(rounds_line("bare chain", rates["bare"], "chains/s"))
    print(rounds_line("bare, last only", rates["bare_last_result_only"], "chains/s"))
    print(rounds_line("full pipeline", rates["pipeline"], "analyses/s"))
    print(f"ratio            {figures['ratio']:.3f}  (full pipeline / bare chain)")
    print(
        f"ratio            {figures['ratio_last_result_only']:.3f}  (full pipeline / bare "
        "chain storing only its last link's result, as the pipeline does)"
    )
    print(
        f"latency          one in flight at a time, {args.latency_n} of each: "
        f"full pipeline p50 {figures['pipeline_p50_ms']:.1f} ms, "
        f"p99 {figures['pipeline_p99_ms']:.1f} ms; bare chain p50 "
        f"{figures['bare_p50_ms']:.1f} ms, p99 {figures['bare_p99_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
