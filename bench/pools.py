"""Analyses per second on each worker pool at 0, 20 and 100 ms downstream latency, each
against the bare chain on the same pool, in one run.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set) and the reference services,
then one worker per pool in turn: prefork -c 4, threads -c 32, gevent -c 100 (gevent only
when it is installed: the ``gevent`` extra; otherwise the run says so and skips it). On
each, for each latency (the reference services' injected ``latency_ms``, on every call),
the full pipeline and the bare chain run in alternating rounds; each rate is the median of
its rounds.

The bare chain is Celery's four-link chain of no-op tasks whose first two links wait the
latency, as long as the pipeline's two downstream calls (fetch_context, predict), storing
only the last link's result as the pipeline does: what the pool gives an analysis that
does nothing but wait for its services. The ratio pipeline / bare chain is what the
pipeline's own work costs on that pool; the pool ratios compare each pool's pipeline with
prefork's at the same latency.

    python bench/pools.py [--n 100] [--rounds 2] [--latencies 0,20,100]
                          [--pools prefork:4,threads:32,gevent:100] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LIFTED_LIMITS, machine, median, stdout_to_stderr
from bench.pipeline import pipeline_round

DEFAULT_POOLS = "prefork:4,threads:32,gevent:100"
PAYLOAD = {"request_id": "bare", "client_id": "bench", "context_id": "c", "pattern_id": "p"}


def bare_round(n: int, wait: float) -> float:
    """N four-link chains of no-op tasks, the first two waiting ``wait`` seconds each; only
    the last link stores its result."""
    from celery import chain

    from bench.noop import noop, noop_wait
    from tasks.submit import wait_for  # as Analysis.get() waits (celery #4039)

    quiet = {"ignore_result": True}

    def links() -> Any:
        return chain(
            noop_wait.s(PAYLOAD, wait).set(**quiet),
            noop_wait.s(wait).set(**quiet),
            noop.s().set(**quiet),
            noop.s(),
        )

    started = time.perf_counter()
    results = [links().apply_async() for _ in range(n)]
    for result in results:
        wait_for(result, 300)
    return n / (time.perf_counter() - started)


def set_latency(urls: list[str], latency_ms: int) -> None:
    from intent.reference import ReferenceControl

    for url in urls:
        control = ReferenceControl(url)
        if latency_ms:
            control.set_faults(latency_ms=latency_ms)
        else:
            control.clear_faults()
        control.clear_requests()


def parse_pools(text: str) -> list[tuple[str, int]]:
    pools = []
    for item in text.split(","):
        kind, _, concurrency = item.strip().partition(":")
        pools.append((kind, int(concurrency or 1)))
    return pools


def run_pool(
    kind: str, concurrency: int, urls: list[str], latencies: list[int], n: int, rounds: int
) -> dict[str, Any]:
    """Start a worker of ``kind``, measure every latency on it, stop it."""
    from intent.dev.stack import WorkerProcess

    worker = WorkerProcess(concurrency, pool=kind, include=["bench.noop"])
    try:
        worker.wait_ready()
        set_latency(urls, 0)
        bare_round(max(1, n // 2), 0.0)  # warm-up: connections, scripts, imports
        pipeline_round(max(1, n // 2))
        figures: dict[str, Any] = {}
        for latency in latencies:
            set_latency(urls, latency)
            rates: dict[str, list[float]] = {"bare": [], "pipeline": []}
            for _ in range(rounds):
                rates["bare"].append(bare_round(n, latency / 1000))
                rates["pipeline"].append(pipeline_round(n))
            bare, full = median(rates["bare"]), median(rates["pipeline"])
            figures[str(latency)] = {
                "pipeline_per_s": round(full, 1),
                "bare_chain_per_s": round(bare, 1),
                "ratio": round(full / bare, 3),
                "pipeline_rounds": [round(r, 1) for r in rates["pipeline"]],
                "bare_chain_rounds": [round(r, 1) for r in rates["bare"]],
            }
            print(
                f"  {kind} -c {concurrency}, {latency} ms: pipeline {full:.1f}/s, "
                f"bare {bare:.1f}/s",
                file=sys.stderr,
            )
        set_latency(urls, 0)
        return {"concurrency": concurrency, "latency_ms": figures}
    finally:
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="analyses (and chains) per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latencies", default="0,20,100", help="downstream latencies, ms")
    parser.add_argument("--pools", default=DEFAULT_POOLS, help="kind:concurrency,...")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    latencies = [int(x) for x in args.latencies.split(",") if x.strip()]

    from intent.dev.stack import Stack

    results: dict[str, Any] = {}
    with stdout_to_stderr(), Stack(workers=0, env=LIFTED_LIMITS) as stack:
        urls = [stack.context_url, stack.prediction_url]
        for kind, concurrency in parse_pools(args.pools):
            if kind == "gevent" and importlib.util.find_spec("gevent") is None:
                why = "gevent is not installed (pip install 'intent-pipeline[gevent]')"
                print(f"  skipping the gevent pool: {why}", file=sys.stderr)
                results[kind] = {"concurrency": concurrency, "skipped": why}
                continue
            results[kind] = run_pool(kind, concurrency, urls, latencies, args.n, args.rounds)

    base = results.get("prefork", {}).get("latency_ms")
    for figures in results.values():
        for latency, row in figures.get("latency_ms", {}).items():
            if base and latency in base:
                prefork_rate = base[latency]["pipeline_per_s"]
                row["to_prefork"] = round(row["pipeline_per_s"] / prefork_rate, 3)
    summary = {
        "machine": machine(),
        "n": args.n,
        "rounds": args.rounds,
        "latencies_ms": latencies,
        "pools": results,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"machine   {summary['machine']}")
    print(f"rounds    {args.rounds} of {args.n} per figure; rates are medians")
    print(
        f"{'pool':<14} {'latency':>8} {'pipeline/s':>11} {'bare chain/s':>13} "
        f"{'ratio':>7} {'to prefork':>11}"
    )
    for kind, figures in results.items():
        label = f"{kind} -c {figures['concurrency']}"
        if "skipped" in figures:
            print(f"{label:<14} skipped: {figures['skipped']}")
            continue
        for latency, row in figures["latency_ms"].items():
            to_prefork = row.get("to_prefork")
            shown = f"{to_prefork:.3f}" if to_prefork is not None else "-"
            print(
                f"{label:<14} {latency + ' ms':>8} {row['pipeline_per_s']:>11.1f} "
                f"{row['bare_chain_per_s']:>13.1f} {row['ratio']:>7.3f} {shown:>11}"
            )
    print("ratio: pipeline / bare chain on the same pool; to prefork: pipeline / prefork's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
