"""``intent demo`` (``make demo``): the whole pipeline on one machine, start to finish.

Starts Redis (embedded unless INTENT_REDIS_URL is set), the reference services and a
prefork worker; injects a few faults so retries show; submits a realistic set of
analyses; prints progress and a summary; stops everything it started.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from intent.errors import IntentError
from intent.models import IntentResult

# Faster than the production schedule (1 s, 2 s, 4 s) so the demo's retries finish quickly;
# the schedule's shape is the same.
DEMO_ENV = {"INTENT_RETRY_INITIAL_DELAY": "0.25", "INTENT_RETRY_MAX_DELAY": "2"}

CONTEXTS = [f"ctx-{n}" for n in range(1001, 1007)]
PATTERNS = ["checkout", "churn-risk", "support"]


@dataclass
class Row:
    label: str
    request_id: str
    outcome: str = "pending"
    pattern: str = ""
    events: str = ""
    retries: int = 0
    published: int = 0


def _requests(round_no: int) -> list[tuple[str, dict[str, Any]]]:
    batch: list[tuple[str, dict[str, Any]]] = []
    for i, context_id in enumerate(CONTEXTS):
        pattern_id = PATTERNS[i % len(PATTERNS)]
        rid = f"demo-r{round_no}-{context_id}-{pattern_id}"
        batch.append((f"{context_id}/{pattern_id}", {
            "request_id": rid, "client_id": "web-shop",
            "context_id": context_id, "pattern_id": pattern_id,
        }))  # fmt: skip
    if round_no == 1:
        batch.append(("inline data/checkout", {
            "request_id": "demo-r1-inline", "client_id": "mobile-app", "pattern_id": "checkout",
            "data": {"cart": ["sku-1", "sku-7"], "visits": 3, "channel": "mobile"},
        }))  # fmt: skip
        batch.append(("ctx-flaky/checkout", {
            "request_id": "demo-r1-flaky", "client_id": "web-shop",
            "context_id": "ctx-flaky", "pattern_id": "checkout",
        }))  # fmt: skip
        batch.append(("missing-ctx/checkout", {
            "request_id": "demo-r1-missing", "client_id": "web-shop",
            "context_id": "missing-ctx", "pattern_id": "checkout",
        }))  # fmt: skip
    return batch


def _describe(result: IntentResult) -> tuple[str, str]:
    pattern = result.pattern
    shown = f"{pattern.label} ({pattern.confidence:.2f})" if pattern and pattern.label else "-"
    events = ", ".join(e.type.value for e in result.events) or "-"
    return shown, events


def _run_round(submit: Any, title: str, requests: list[tuple[str, dict[str, Any]]]) -> list[Row]:
    print(f"\n== {title}: submitting {len(requests)} analyses")
    pending: dict[str, tuple[Row, Any]] = {}
    rows: list[Row] = []
    for label, payload in requests:
        analysis = submit(payload)
        row = Row(label, payload["request_id"])
        if analysis.duplicate:
            row.outcome = "duplicate"
        rows.append(row)
        pending[row.request_id] = (row, analysis)
    done = 0
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for rid, (row, analysis) in list(pending.items()):
            if not analysis.ready():
                continue
            del pending[rid]
            done += 1
            try:
                result = analysis.get(timeout=5)
            except IntentError as exc:
                row.outcome = f"failed: {type(exc).__name__}"
                print(f"  [{done:>2}/{len(requests)}] {row.label:<24} FAILED  {exc}")
                continue
            row.pattern, row.events = _describe(result)
            row.retries = 0 if row.outcome == "duplicate" else sum(result.retries.values())
            row.published = 0 if row.outcome == "duplicate" else result.published
            row.outcome = row.outcome if row.outcome == "duplicate" else "completed"
            note = f" retries={row.retries}" if row.retries else ""
            print(f"  [{done:>2}/{len(requests)}] {row.label:<24} {row.pattern:<20} "
                  f"{row.events}{note}")  # fmt: skip
        time.sleep(0.05)
    for row, _ in pending.values():
        row.outcome = "timed out"
    return rows


def _summary(rows: list[Row], elapsed: float, stream_length: int) -> bool:
    print("\n== Summary")
    print(f"  {'analysis':<24} {'outcome':<28} {'pattern':<20} {'retries':>7}  events")
    for r in rows:
        print(f"  {r.label:<24} {r.outcome:<28} {r.pattern or '-':<20} {r.retries:>7}  "
              f"{r.events or '-'}")  # fmt: skip
    completed = sum(r.outcome in ("completed", "duplicate") for r in rows)
    failed = sum(r.outcome.startswith("failed") for r in rows)
    timed_out = sum(r.outcome == "timed out" for r in rows)
    runs = sum(r.outcome != "duplicate" for r in rows)
    print(
        f"\n  {len(rows)} submitted, {completed} completed, {failed} failed, "
        f"{timed_out} timed out; {sum(r.retries for r in rows)} retries; "
        f"{sum(r.published for r in rows)} events published "
        f"(stream intent:events holds {stream_length})"
    )
    print(f"  {elapsed:.2f} s, {runs / elapsed:.1f} analyses/s")
    return timed_out == 0


def run(concurrency: int = 4) -> int:
    from intent.reference import ReferenceControl
    from intent.runtime import get_runtime
    from tasks.stack import Stack, signals_stop

    logdir = Path(tempfile.mkdtemp(prefix="intent-demo-"))
    stack = Stack(concurrency=concurrency, env=DEMO_ENV, logfile=str(logdir / "worker.log"))
    with signals_stop(), stack:
        from tasks.submit import submit

        print(f"Redis      {'embedded Valkey' if stack.redis else 'INTENT_REDIS_URL'}")
        print(f"services   context {stack.context_url}, prediction {stack.prediction_url}")
        print(f"worker     prefork, {concurrency} processes (log: {logdir / 'worker.log'})")
        context = ReferenceControl(stack.context_url)
        prediction = ReferenceControl(stack.prediction_url)
        # ctx-flaky answers 503 twice before it recovers, and the prediction service's
        # first three answers are 503s: each is retried on the backoff schedule.
        context.set_faults(status=503, count=2, match="ctx-flaky")
        prediction.set_faults(status=503, count=3)

        started = time.monotonic()
        rows = _run_round(submit, "round 1", _requests(1))
        for context_id in CONTEXTS[:3]:
            context.bump_context(context_id)
            # What a context_changed consumer does when the Context Service announces it.
            get_runtime().context_cache.invalidate(context_id)
        prediction.clear_faults()
        rows += _run_round(submit, "round 2 (three contexts changed upstream)", _requests(2))
        rows += _run_round(submit, "round 3 (a web app resubmits round 2)", _requests(2)[:2])
        elapsed = time.monotonic() - started
        rt = get_runtime()
        stream_length = int(cast("int", rt.redis.xlen(rt.keys.events_stream)))
        ok = _summary(rows, elapsed, stream_length)
    print("\nstopped: worker, reference services" + (", Redis" if stack.redis else ""))
    return 0 if ok else 1
