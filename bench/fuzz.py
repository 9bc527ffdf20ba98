"""Fuzzing every way in, by the ten thousand: the cases of tests/strategies.py (requests by
task name and submit(), raw task messages, raw queue items, event stream entries) against
one prefork worker and one event consumer, each case judged as tests/integration/test_fuzz.py
judges it.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set) and the reference services
(no injected faults), and a prefork worker of its own (restarted should one die, and the
input that killed it looked for); the consumer runs in this process. Rate limits are lifted
(one client process sends everything). First a baseline: valid cases alone, of every kind
in the same proportions; then the mixed run, seeded, in chunks (each drained, and checked
against the services' request logs, before the next).

The figures (``--json`` prints them as one object):

- cases: the mixed run's cases; by_kind breaks every figure down by kind.
- refused_with_field: bad inputs refused as expected: answered with a ValidationError naming
  their field, or (no usable task id, no message at all, a malformed event) dead-lettered
  with the expected field and reason.
- refused_without_field: bad inputs refused otherwise: another error type or field, an
  answer that cannot be read, a dead letter where an answer was due, a consumer stop.
- accepted: bad inputs that ran (or were handled) as if valid.
- hung: cases without an outcome in time (an answer, a dead letter, a handled event).
- worker_deaths: the worker's main or pool processes that died; consumer_stops alike.
- retried_bad_inputs: bad inputs the worker retried or deferred, plus retries of no case.
- downstream_problems: calls the reference services received that no completed valid case
  explains (a bad input's, a second call for one case).
- valid_completed / valid_total: valid cases completed at once (no retry, no fallback).
- cases_per_second, and the baseline's valid_per_second; ratio is mixed / valid-only.

The bar: worker_deaths 0, hung 0, retried_bad_inputs 0, refused_without_field 0, accepted 0,
valid_completed == valid_total.

    python bench/fuzz.py [--cases 10000] [--seed 1] [--baseline 1000] [--chunk 2000]
        [--window 100] [--concurrency 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LIFTED_LIMITS, machine, stdout_to_stderr
from tests.strategies import (
    KINDS,
    VALID,
    Case,
    Engine,
    Results,
    Target,
    Uids,
    Verdict,
    generate,
    summary,
)

ANSWER_TIMEOUT = 30.0  # seconds for a bad input's answer or dead letter
VALID_TIMEOUT = 120.0  # for a valid case's result: a whole analysis, in a queue 100 deep


def chunks(cases: Iterable[Case], size: int) -> Iterator[list[Case]]:
    batch: list[Case] = []
    for case in cases:
        batch.append(case)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(target: Target, cases: Iterable[Case], chunk: int, window: int) -> Results:
    """Every case, a chunk at a time; the results of all chunks together."""
    total = Results()
    for batch in chunks(cases, chunk):
        target.clear_requests_log()
        engine = Engine(target, window, ANSWER_TIMEOUT, VALID_TIMEOUT, find_culprits=4)
        part = engine.run(batch)
        for name in ("verdicts", "deaths", "consumer_deaths", "downstream", "retries"):
            getattr(total, name).extend(getattr(part, name))
        total.worker_errors += part.worker_errors
        total.unattributed += part.unattributed
        total.seconds += part.seconds
        print(f"  {len(total.verdicts)} cases, {len(total.failures())} failed", file=sys.stderr)
    return total


def bad_outcome(v: Verdict) -> str:
    """Which figure a bad input's verdict counts in."""
    if v.ok:
        return "refused_with_field"
    if v.outcome in ("ran", "completed"):
        return "accepted"
    if v.outcome in ("hung", "lost"):
        return "hung"
    if v.outcome == "unsent":
        return "unsent"
    return "refused_without_field"  # refused, dead-lettered or stopped the consumer: not so


def figures(results: Results) -> dict[str, Any]:
    def tally(verdicts: list[Verdict]) -> dict[str, int]:
        valid = [v for v in verdicts if v.case.expect.outcome == VALID]
        bad = Counter(bad_outcome(v) for v in verdicts if v.case.expect.outcome != VALID)
        hung = bad["hung"] + sum(1 for v in valid if v.outcome in ("hung", "lost"))
        retried = sum(1 for v in verdicts if v.case.expect.outcome != VALID and retried_(v))
        return {
            "cases": len(verdicts),
            "refused_with_field": bad["refused_with_field"],
            "refused_without_field": bad["refused_without_field"],
            "accepted": bad["accepted"],
            "hung": hung,
            "unsent": bad["unsent"] + sum(1 for v in valid if v.outcome == "unsent"),
            "retried_bad_inputs": retried,
            "valid_completed": sum(1 for v in valid if v.passed),
            "valid_total": len(valid),
        }

    def retried_(v: Verdict) -> bool:
        return any(b.startswith("was retried") for b in v.blame)

    out: dict[str, Any] = tally(results.verdicts)
    owned = sum(1 for v in results.verdicts for b in v.blame if b.startswith("was retried"))
    out["retried_bad_inputs"] += len(results.retries) - owned  # retries of no known case
    out["worker_deaths"] = len(results.deaths)
    out["consumer_stops"] = len(results.consumer_deaths)
    out["downstream_problems"] = len(results.downstream)
    out["worker_errors"] = len(results.worker_errors)
    out["dead_letters_of_no_case"] = len(results.unattributed)
    out["seconds"] = round(results.seconds, 1)
    out["cases_per_second"] = round(len(results.verdicts) / max(results.seconds, 1e-9), 1)
    out["by_kind"] = {
        kind: tally([v for v in results.verdicts if v.case.kind == kind]) for kind in KINDS
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000, help="cases of the mixed run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", type=int, default=1000, help="valid cases (0: none)")
    parser.add_argument("--chunk", type=int, default=2000, help="cases per drained chunk")
    parser.add_argument("--window", type=int, default=100, help="cases in flight at once")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from intent.dev.stack import Stack, WorkerProcess

    uids = Uids()
    log = str(Path(tempfile.mkdtemp(prefix="intent-fuzz-")) / "worker.log")

    def new_worker() -> WorkerProcess:
        # INFO: the retry and deferral lines the judging looks for.
        return WorkerProcess(args.concurrency, loglevel="INFO", logfile=log)

    with stdout_to_stderr(), Stack(workers=0, env=LIFTED_LIMITS) as stack:
        redis_url = os.environ["INTENT_REDIS_URL"]
        target = Target(redis_url, new_worker, stack.context_url, stack.prediction_url, log)
        target.start()
        try:
            baseline = None
            if args.baseline > 0:
                valid_only = generate(args.baseline, args.seed + 1, uids, valid_only=True)
                baseline = run(target, valid_only, args.chunk, args.window)
            mixed = run(target, generate(args.cases, args.seed, uids), args.chunk, args.window)
            alive = target.worker.process.poll() is None and target.ping()
            consumer_alive = target.consumer_alive()
        finally:
            target.close()

    out = figures(mixed)
    out["worker_alive_at_end"] = alive
    out["consumer_alive_at_end"] = consumer_alive
    out["seed"] = args.seed
    if baseline is not None:
        base = figures(baseline)
        out["baseline"] = {
            key: base[key]
            for key in ("cases", "valid_completed", "hung", "worker_deaths", "seconds")
        }
        out["baseline"]["valid_per_second"] = base["cases_per_second"]
        out["ratio"] = round(out["cases_per_second"] / base["cases_per_second"], 3)
    if args.json:
        print(json.dumps(out))
        return 0
    print(report(out, args, mixed))
    return 0


def report(out: dict[str, Any], args: argparse.Namespace, mixed: Results) -> str:
    lines = [
        f"machine          {machine()}",
        f"worker           prefork, {args.concurrency} processes; {out['cases']} cases "
        f"(seed {args.seed}), {args.window} in flight, chunks of {args.chunk}",
        f"bad inputs       {out['refused_with_field']} refused as expected, "
        f"{out['refused_without_field']} refused otherwise, {out['accepted']} accepted",
        f"valid inputs     {out['valid_completed']} of {out['valid_total']} completed",
        f"hung             {out['hung']}",
        f"worker deaths    {out['worker_deaths']}, consumer stops {out['consumer_stops']}",
        f"retried bad      {out['retried_bad_inputs']}, downstream problems "
        f"{out['downstream_problems']}, worker errors {out['worker_errors']}",
        f"throughput       {out['cases_per_second']:.1f} cases/s mixed ({out['seconds']} s)",
    ]
    if "baseline" in out:
        lines.append(
            f"                 {out['baseline']['valid_per_second']:.1f} cases/s valid only "
            f"({out['baseline']['cases']} cases)"
        )
        lines.append(f"ratio            {out['ratio']:.3f}  (mixed / valid only)")
    for kind, row in out["by_kind"].items():
        lines.append(
            f"  {kind:<9} {row['cases']:>6} cases: {row['refused_with_field']} refused, "
            f"{row['valid_completed']}/{row['valid_total']} valid completed, "
            f"{row['cases'] - row['refused_with_field'] - row['valid_completed']} other"
        )
    problems = summary(mixed, limit=40)
    if problems:
        lines += ["what broke an expectation:", problems]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
