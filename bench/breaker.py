"""The shared circuit breaker against pybreaker's Redis storage and bare Redis, in one run.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set). Measures, in the closed
state, microseconds and Redis commands per guarded call (commands from INFO commandstats
deltas: requests clients sent, not the commands scripts ran inside Redis, nor INFO itself)
for this breaker, the same breaker with every policy enabled (failure rate, slow-call rate,
growing break, a bulkhead at a limit never reached), pybreaker with CircuitRedisStorage and a
bare GET; then the throughput of 32 threads calling a 20 ms downstream through no breaker,
pybreaker, this breaker and this breaker with every policy.
Variants alternate over several rounds and each figure is the median of its rounds, so a
noisy machine shifts them all alike.

    python bench/breaker.py [--calls 5000] [--seconds 2] [--rounds 3] [--threads 32] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import redis_url
from intent import scripts
from intent.breaker import CircuitBreaker, CircuitConfig, FallbackStore, RedisStore
from intent.breaker.stores.redis import SCRIPT_FAMILY

Call = Callable[[Callable[[], Any]], Any]


def script_commands() -> set[str]:
    """Commands the breaker's scripts run inside Redis: INFO counts them, clients never
    sent them."""
    lua = scripts.folder(SCRIPT_FAMILY)
    text = "".join(f.read_text() for f in lua.iterdir() if f.name.endswith(".lua"))
    return {name.lower() for name in re.findall(r"redis\.call\('([A-Z]+)'", text)}


def commands_sent(client: redis.Redis, run: Callable[[], None]) -> int:
    """Requests clients sent during ``run``, from INFO commandstats deltas."""
    inside = script_commands() | {"info"}  # INFO: the measurement's own calls
    before = client.info("commandstats")
    run()
    after = client.info("commandstats")
    return sum(
        stats["calls"] - before.get(key, {"calls": 0})["calls"]
        for key, stats in after.items()
        if key.removeprefix("cmdstat_") not in inside
    )


def noop() -> None:
    return None


def per_call(client: redis.Redis, call: Call, calls: int) -> tuple[float, float]:
    """(microseconds, Redis commands) per guarded no-op call, sequentially."""
    elapsed = 0.0

    def run() -> None:
        nonlocal elapsed
        started = time.perf_counter()
        for _ in range(calls):
            call(noop)
        elapsed = time.perf_counter() - started

    sent = commands_sent(client, run)
    return elapsed / calls * 1e6, sent / calls


def throughput(call: Call, threads: int, seconds: float, latency: float) -> float:
    """Calls per second that ``threads`` threads get through a ``latency`` s downstream."""

    def downstream() -> None:
        time.sleep(latency)

    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    deadline = 0.0

    def worker(index: int) -> None:
        start.wait()
        while time.perf_counter() < deadline:
            call(downstream)
            counts[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="sequential calls per variant")
    parser.add_argument("--seconds", type=float, default=2.0, help="per threaded round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.02, help="downstream seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import pybreaker

    owned = contextlib.ExitStack()  # the embedded Valkey, when this run starts one
    url = owned.enter_context(redis_url())
    try:
        tag = uuid.uuid4().hex[:8]
        stats_client = redis.Redis.from_url(url, decode_responses=True)
        ours = CircuitBreaker(
            f"bench-{tag}", store=FallbackStore(RedisStore.from_url(url, prefix="bench:"))
        )
        # Every issue-15 policy on: the rates (judged, never reached by healthy calls), the
        # growing break (factor 2, on here), and a bulkhead far above the 32 threads' calls.
        policies = CircuitBreaker(
            f"bench-{tag}-policies",
            CircuitConfig(
                failure_rate_threshold=50.0,
                slow_call_rate_threshold=50.0,
                break_factor=2.0,
                break_max=600.0,
                break_jitter=0.1,
                max_concurrent_calls=10 * args.threads,
            ),
            store=FallbackStore(RedisStore.from_url(url, prefix="bench:")),
        )
        theirs = pybreaker.CircuitBreaker(
            fail_max=5,
            reset_timeout=60,
            state_storage=pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, redis.Redis.from_url(url), namespace=f"bench-{tag}"
            ),
        )
        get_client = redis.Redis.from_url(url)
        get_client.set(f"bench:{tag}:key", "value")

        def bare_get(func: Callable[[], Any]) -> Any:
            get_client.get(f"bench:{tag}:key")
            return func()

        def direct(func: Callable[[], Any]) -> Any:
            return func()

        sequential: dict[str, Call] = {
            "get": bare_get,
            "pybreaker": theirs.call,
            "ours": ours.call,
            "policies": policies.call,
        }
        for call in sequential.values():
            for _ in range(50):  # warm up: connections, script load, registration
                call(noop)
        micros: dict[str, list[float]] = {label: [] for label in sequential}
        commands: dict[str, list[float]] = {label: [] for label in sequential}
        rounds = max(1, args.rounds)
        for _ in range(rounds):
            for label, call in sequential.items():
                us, cmds = per_call(stats_client, call, max(1, args.calls // rounds))
                micros[label].append(us)
                commands[label].append(cmds)
        # "get" is a control: one plain redis-py GET per call, the cost of any round trip here
        threaded: dict[str, Call] = {
            "none": direct,
            "get": bare_get,
            "pybreaker": theirs.call,
            "ours": ours.call,
            "policies": policies.call,
        }
        samples: dict[str, list[float]] = {label: [] for label in threaded}
        for index in range(rounds):
            order = list(threaded.items())
            shift = index % len(order)
            for label, call in order[shift:] + order[:shift]:
                samples[label].append(throughput(call, args.threads, args.seconds, args.latency))
        for pattern in (f"*bench-{tag}*", f"bench:{tag}:*"):  # leave a shared Redis as found
            for key in stats_client.scan_iter(match=pattern):
                stats_client.delete(key)
        stats_client.srem("bench:cb:names", f"bench-{tag}", f"bench-{tag}-policies")
        ours.store.close()
        policies.store.close()
    finally:
        owned.close()

    rates = {label: statistics.median(values) for label, values in samples.items()}
    labels = ("get", "pybreaker", "ours")
    get_us, theirs_us, ours_us = (statistics.median(micros[label]) for label in labels)
    get_cmds, theirs_cmds, ours_cmds = (statistics.fmean(commands[label]) for label in labels)
    policies_us = statistics.median(micros["policies"])
    policies_cmds = statistics.fmean(commands["policies"])
    figures = {
        "cmds_per_call": round(ours_cmds, 3),
        "us_per_call": round(ours_us, 1),
        "pybreaker_cmds_per_call": round(theirs_cmds, 3),
        "pybreaker_us_per_call": round(theirs_us, 1),
        "get_us": round(get_us, 1),
        "threads_ratio": round(rates["ours"] / rates["none"], 3),
        "pybreaker_threads_ratio": round(rates["pybreaker"] / rates["none"], 3),
        "policies_cmds_per_call": round(policies_cmds, 3),
        "policies_us_per_call": round(policies_us, 1),
        "policies_threads_ratio": round(rates["policies"] / rates["none"], 3),
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"closed state, {args.calls} sequential no-op calls    us/call   Redis cmds/call")
    print(f"  bare Redis GET                             {get_us:8.1f}   {get_cmds:6.2f}")
    print(f"  pybreaker + CircuitRedisStorage            {theirs_us:8.1f}   {theirs_cmds:6.2f}")
    print(f"  intent breaker                             {ours_us:8.1f}   {ours_cmds:6.2f}")
    print(f"  intent breaker, every policy on            {policies_us:8.1f}   {policies_cmds:6.2f}")
    print(f"    vs pybreaker: {ours_us / theirs_us:.2f}x time, vs GET: {ours_us / get_us:.2f}x")
    print()
    print(
        f"{args.threads} threads, {args.latency * 1000:g} ms downstream, "
        f"median of {rounds} x {args.seconds:g} s     calls/s   ratio to no breaker"
    )
    for label, name in (
        ("none", "no breaker"),
        ("get", "(control: one bare GET per call)"),
        ("pybreaker", "pybreaker + Redis storage"),
        ("ours", "intent breaker"),
        ("policies", "intent breaker, every policy on"),
    ):
        print(f"  {name:40} {rates[label]:9.0f}   {rates[label] / rates['none']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
