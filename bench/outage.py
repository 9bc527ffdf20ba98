"""A long Context Service outage under a steady inflow: what reaches the dead service, what
the analyses become, and how the fleet recovers.

Starts its own Redis (embedded unless INTENT_REDIS_URL is set), the reference services and
one prefork worker. One thread submits analyses of new contexts (no cache can stand in) at
``--rate`` per second from t = 0; at t = 5 s the Context Service's fault is set, and it is
cleared ``--outage`` seconds later; then the run waits until every analysis is ready.

Settings stay at their defaults (rate limits included: the intake limit is met by spreading
the inflow over enough client_ids) except three, printed with the results:
INTENT_CIRCUIT_RECOVERY_TIMEOUT and INTENT_ANALYSIS_DEADLINE, which a short run may scale,
and INTENT_MAX_DEFERRAL, raised with the deadline because the whole run is one long outage
(at its default a step waiting out the outage would fail on its deferral budget first).

Faults (``--fault``): ``down`` drops the connection of every API request and still answers
/health; ``dead-host`` drops /health too; ``hang`` holds every API request for 10 minutes
(well past the client's read timeout) and answers /health.

The figures (``--json`` prints them as one object):

- submitted: analyses the inflow offered; submitted = completed + degraded + failed + lost.
- completed / degraded: completed analyses without and with a fallback.
- failed: refused by submit(), ended with an error, or expired.
- lost: not ready when the wait ends (the last submission + the deadline + 300 s).
- duplicate_events: entries of the events stream whose event id appears more than once.
- calls_to_dead_service_per_open_cycle: requests that met the fault (the paths it applies
  to: API paths, and /health too for dead-host; a /health probe that was answered reached
  no dead service and is left out, the text report counts it apart) that the Context
  Service received during the fault window, per open cycle of its breaker. The fault window
  runs from the moment set_faults returned to the moment clear_faults was sent, so the
  fault was on for every request in it. Cycle 1 runs from the start of the window to the end
  (``until``) of the first open period, cycle k from the end of open period k - 1 to the
  end of open period k, cut at the end of the window: each cycle is the calls that tripped
  (or re-tripped, by half-open trials) the breaker plus any that still arrived while it was
  open. Calls after the last open period that did not open the breaker again before the
  fault was cleared form one more entry (only when there are any); with no open period at
  all the list is the one count of the whole window. The bar: each entry at most
  INTENT_CIRCUIT_FAILURE_THRESHOLD.
- calls_first_10s_after_recovery: requests the Context Service received in the 10 s after
  clear_faults returned.
- peak_worker_rss_mb: the highest sum of the worker's main process's and pool processes'
  RSS, sampled every second.
- drain_s: seconds from the fault being cleared until the last analysis was seen ready
  (results are polled about twice a second).

    python bench/outage.py [--n N] [--rate 20] [--outage 120] [--fault down|dead-host|hang]
        [--recovery-timeout 60] [--deadline 1800] [--concurrency 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, stdout_to_stderr

WARMUP_S = 5.0  # inflow before the fault: the pipeline is warm and the breaker closed
AFTER_RECOVERY_S = 10.0
SAMPLE_S = 0.2  # breaker sampling: an open period lasts seconds, none is missed
RSS_EVERY = 5  # samples (1 s)
LOG_EVERY = 10  # samples (2 s): the service keeps its last 10,000 requests, far more
POLL_S = 0.5
LOST_AFTER_S = 300.0  # beyond the deadline: a result not ready by then is lost
HANG_MS = 600_000  # the reference service's longest latency; the client gives up at 10 s

FAULTS: dict[str, dict[str, Any]] = {
    "down": {"down": True},
    "dead-host": {"down": True, "include_health": True},
    "hang": {"latency_ms": HANG_MS, "match": "/api/"},
}


# -- the run's settings and requests -------------------------------------------------------


def default_n(rate: float, outage: float) -> int:
    """At least 2,000 analyses, and enough that the inflow lasts the whole outage and 10 s
    beyond: the outage is met by a steady inflow, not by a queue that stopped growing."""
    return max(2000, math.ceil(rate * (WARMUP_S + outage + AFTER_RECOVERY_S)))


def settings_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        "INTENT_CIRCUIT_RECOVERY_TIMEOUT": str(args.recovery_timeout),
        "INTENT_ANALYSIS_DEADLINE": str(args.deadline),
        # Raised with the deadline: the whole run is one long outage, and a step must be
        # able to wait it out until its analysis's deadline.
        "INTENT_MAX_DEFERRAL": str(max(args.deadline, 600.0)),
    }


def client_count(rate: float, settings: Any) -> int:
    """Clients to spread the inflow over so none nears its intake limit: twice what the
    moving window strictly needs, as submissions bunch up after a slow one."""
    per_window = rate * settings.rate_limit_window
    return max(1, math.ceil(2 * per_window / settings.max_requests_per_window))


def outage_requests(n: int, clients: int) -> list[dict[str, object]]:
    """N analyses of new contexts, round robin over ``clients`` client_ids."""
    tag = uuid.uuid4().hex[:8]
    return [
        {
            "request_id": f"outage-{tag}-{i}",
            "client_id": f"outage-{tag}-c{i % clients}",
            "context_id": f"ctx-outage-{tag}-{i}",
            "pattern_id": ("checkout", "support")[i % 2],
        }
        for i in range(n)
    ]


# -- the inflow and the fault ----------------------------------------------------------------


@dataclass
class Inflow:
    """What the submitting thread did; ``ids`` grows while it runs (appends are atomic)."""

    ids: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    ended: float | None = None


def submit_all(requests: list[dict[str, object]], rate: float, t0: float, inflow: Inflow) -> None:
    """Submit on a fixed schedule (request i at t0 + i / rate), not back to back: a slow
    submit delays the next ones but does not lower the rate the schedule keeps to."""
    from tasks import submit

    for i, request in enumerate(requests):
        delay = t0 + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        try:
            inflow.ids.append(submit(request).request_id)
        except Exception as exc:  # a refusal is a figure of the run, not its end
            inflow.refused[type(exc).__name__] += 1
    inflow.ended = time.time()


@dataclass
class FaultWindow:
    """Epoch times around setting and clearing the fault."""

    started: float | None = None  # set_faults returned: every later request met it
    ended: float | None = None  # clear_faults about to be sent: every earlier one met it
    cleared: float | None = None  # clear_faults returned


def run_fault(
    context_url: str, fault: dict[str, Any], t0: float, outage: float, window: FaultWindow
) -> None:
    from intent.reference.server import ReferenceControl

    control = ReferenceControl(context_url)  # its own session: sessions are per thread
    try:
        time.sleep(max(0.0, t0 + WARMUP_S - time.time()))
        control.set_faults(**fault)
        window.started = time.time()
        time.sleep(max(0.0, window.started + outage - time.time()))
        window.ended = time.time()
        control.clear_faults()
        window.cleared = time.time()
    finally:
        control.close()


def fault_applies(fault: dict[str, Any], path: str) -> bool:
    """Whether the reference service applies ``fault`` to a request for ``path`` (its own
    rule: /health only with include_health, and only paths containing ``match``)."""
    if path == "/health" and not fault.get("include_health"):
        return False
    return fault.get("match") is None or fault["match"] in path


# -- the monitor: breaker, request log, worker RSS, waiting steps ---------------------------


@dataclass(frozen=True)
class Sample:
    """The context breaker as one sample saw it, kept when it differs from the last."""

    at: float  # epoch, this process's clock
    state: str
    opened_at: float | None
    until: float | None
    generation: int


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass  # a pool process that just exited
    return 0


class Monitor(threading.Thread):
    """Samples what the run is judged by while it runs; every read is guarded, so a slow
    or failing read costs a sample, never the monitor."""

    def __init__(self, stack: Any):
        super().__init__(name="outage-monitor", daemon=True)
        from intent.breaker.view import CircuitAdmin
        from intent.clients import ContextServiceClient
        from intent.reference.server import ReferenceControl
        from intent.runtime import get_runtime

        runtime = get_runtime()
        self.admin = CircuitAdmin(runtime.breaker_store)
        self.breaker = ContextServiceClient.service
        self.waiting = runtime.waiting
        self.control = ReferenceControl(stack.context_url)
        self.worker = stack.workers[0]
        self.halt = threading.Event()
        self.samples: list[Sample] = []
        self.opens: dict[float, float | None] = {}  # opened_at -> until
        # The service's log is a bounded deque of recent requests: merged here, entries
        # keyed by arrival, the latest copy kept (an answered request gains its status).
        self.requests: dict[tuple[float, str, str], dict[str, Any]] = {}
        self.peak_rss_kb = 0
        self.peak_waiting = 0
        self.peak_waiting_lanes: dict[str, int] = {}
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        tick = 0
        while not self.halt.wait(SAMPLE_S):
            self._guarded(self.sample_breaker)
            if tick % RSS_EVERY == 0:
                self._guarded(self.sample_rss)
                self._guarded(self.sample_waiting)
            if tick % LOG_EVERY == 0:
                self._guarded(self.merge_log)
            tick += 1

    def finish(self) -> None:
        """Stop sampling, then take the request log one last time."""
        self.halt.set()
        self.join(timeout=30)
        self._guarded(self.merge_log)
        self.control.close()

    def _guarded(self, read: Any) -> None:
        try:
            read()
        except Exception as exc:
            self.errors[f"{read.__name__}: {type(exc).__name__}"] += 1

    def sample_breaker(self) -> None:
        status = self.admin.status(self.breaker)
        sample = Sample(
            time.time(), status.state, status.opened_at, status.until, status.generation
        )
        if not self.samples or self._key(self.samples[-1]) != self._key(sample):
            self.samples.append(sample)
        # Every opening sets a new opened_at: one key per open period.
        if sample.state == "open" and sample.opened_at is not None:
            self.opens[sample.opened_at] = sample.until

    @staticmethod
    def _key(sample: Sample) -> tuple[str, float | None, int]:
        return sample.state, sample.opened_at, sample.generation

    def sample_rss(self) -> None:
        pids = [self.worker.process.pid, *self.worker.child_pids()]
        self.peak_rss_kb = max(self.peak_rss_kb, sum(rss_kb(pid) for pid in pids))

    def sample_waiting(self) -> None:
        lanes = self.waiting.depth()
        total = sum(lanes.values())
        if total > self.peak_waiting:
            self.peak_waiting, self.peak_waiting_lanes = total, lanes

    def merge_log(self) -> None:
        for entry in self.control.requests_log():
            self.requests[(float(entry["time"]), entry["method"], entry["path"])] = entry

    def arrivals(self, fault: dict[str, Any] | None = None, met: bool = True) -> list[float]:
        """Arrival times of every request; with ``fault``, of those it applied to (``met``)
        or of the others."""
        return sorted(
            at
            for at, _, path in self.requests
            if fault is None or fault_applies(fault, path) == met
        )


# -- waiting for the analyses and counting them ---------------------------------------------


def collect(inflow: Inflow, submitter: threading.Thread, deadline: float) -> dict[str, float]:
    """Poll until every submitted analysis is ready, or until the last submission plus the
    deadline plus LOST_AFTER_S; returns when each was first seen ready (epoch)."""
    from celery.result import AsyncResult

    from tasks.app import app

    pending: dict[str, AsyncResult] = {}
    ready_at: dict[str, float] = {}
    seen = 0
    while True:
        for request_id in inflow.ids[seen:]:
            pending[request_id] = AsyncResult(request_id, app=app)
            seen += 1
        now = time.time()
        for request_id, result in list(pending.items()):
            if result.ready():
                ready_at[request_id] = now
                del pending[request_id]
        if not submitter.is_alive() and seen == len(inflow.ids):
            if not pending:
                return ready_at
            if now > (inflow.ended or now) + deadline + LOST_AFTER_S:
                return ready_at
        time.sleep(POLL_S)


@dataclass
class Tally:
    completed: int = 0
    degraded: int = 0
    failed: int = 0
    lost: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # why analyses failed
    retries: int = 0
    deferrals: int = 0


def tally(inflow: Inflow, ready_at: dict[str, float]) -> Tally:
    from celery.result import AsyncResult

    from intent.models import IntentResult
    from tasks.app import app

    counts = Tally(failed=sum(inflow.refused.values()))
    counts.reasons.update({f"refused: {name}": k for name, k in inflow.refused.items()})
    for request_id in inflow.ids:
        if request_id not in ready_at:
            counts.lost += 1
            continue
        result = AsyncResult(request_id, app=app)
        if not result.successful():
            counts.failed += 1
            counts.reasons[type(result.result).__name__] += 1
            continue
        analysis = IntentResult.model_validate(result.result)
        counts.retries += sum(analysis.retries.values())
        counts.deferrals += sum(analysis.deferrals.values())
        if analysis.status != "completed":
            counts.failed += 1
            counts.reasons[analysis.status] += 1
        elif analysis.degraded:
            counts.degraded += 1
        else:
            counts.completed += 1
    return counts


def stream_events() -> tuple[int, int]:
    """(entries, entries whose event id appears more than once) in the events stream."""
    from intent.runtime import get_runtime

    runtime = get_runtime()
    stream = runtime.keys.events_stream
    ids: Counter[bytes] = Counter()
    start = "-"
    while entries := runtime.redis.xrange(stream, min=start, max="+", count=1000):
        ids.update(fields.get(b"id", b"") for _, fields in entries)
        start = "(" + entries[-1][0].decode()
    return sum(ids.values()), sum(k for k in ids.values() if k > 1)


# -- the figures ------------------------------------------------------------------------------


def calls_per_open_cycle(
    arrivals: list[float], window: FaultWindow, opens: dict[float, float | None]
) -> list[int]:
    """Requests in the fault window, per open cycle (defined in the module docstring)."""
    start, end = window.started, window.ended
    if start is None or end is None:
        return []
    inside = [t for t in arrivals if start <= t < end]
    cycles = sorted((at, until) for at, until in opens.items() if start <= at < end)
    counts, begin = [], start
    for _, until in cycles:
        # An open period whose end is unknown (never sampled) holds to the window's end.
        stop = min(until if until is not None else end, end)
        counts.append(sum(1 for t in inside if begin <= t < stop))
        begin = max(begin, stop)
    rest = sum(1 for t in inside if t >= begin)
    if rest or not cycles:
        counts.append(rest)
    return counts


def figures(
    n: int,
    fault: dict[str, Any],
    counts: Tally,
    monitor: Monitor,
    window: FaultWindow,
    ready_at: dict[str, float],
    duplicates: int,
) -> dict[str, Any]:
    arrivals = monitor.arrivals()
    after = window.cleared
    last_ready = max(ready_at.values(), default=None)
    return {
        "submitted": n,
        "completed": counts.completed,
        "degraded": counts.degraded,
        "failed": counts.failed,
        "lost": counts.lost,
        "duplicate_events": duplicates,
        "calls_to_dead_service_per_open_cycle": calls_per_open_cycle(
            monitor.arrivals(fault), window, monitor.opens
        ),
        "calls_first_10s_after_recovery": (
            None
            if after is None
            else sum(1 for t in arrivals if after <= t < after + AFTER_RECOVERY_S)
        ),
        "peak_worker_rss_mb": round(monitor.peak_rss_kb / 1024, 1),
        "drain_s": (
            None if after is None or last_ready is None else round(max(0.0, last_ready - after), 1)
        ),
    }


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    figures: dict[str, Any]
    tally: Tally
    monitor: Monitor
    window: FaultWindow
    inflow: Inflow
    t0: float
    clients: int
    events: int
    threshold: int  # INTENT_CIRCUIT_FAILURE_THRESHOLD, the bar of every open cycle


def measure(stack: Any, args: argparse.Namespace) -> Run:
    from intent.settings import get_settings

    settings = get_settings()
    clients = client_count(args.rate, settings)
    requests = outage_requests(args.n, clients)
    monitor, inflow, window = Monitor(stack), Inflow(), FaultWindow()
    monitor.start()
    t0 = time.time() + 0.5  # the threads' schedules start together
    submitter = threading.Thread(
        target=submit_all, args=(requests, args.rate, t0, inflow), daemon=True
    )
    fault = threading.Thread(
        target=run_fault,
        args=(stack.context_url, FAULTS[args.fault], t0, args.outage, window),
        daemon=True,
    )
    submitter.start()
    fault.start()
    try:
        ready_at = collect(inflow, submitter, args.deadline)
        # The after-recovery window must be over before the log is read the last time.
        fault.join()
        if window.cleared is not None:
            time.sleep(max(0.0, window.cleared + AFTER_RECOVERY_S - time.time()))
    finally:
        monitor.finish()
    counts = tally(inflow, ready_at)
    events, duplicates = stream_events()
    result = figures(args.n, FAULTS[args.fault], counts, monitor, window, ready_at, duplicates)
    threshold = settings.circuit_failure_threshold
    return Run(result, counts, monitor, window, inflow, t0, clients, events, threshold)


# -- printing -------------------------------------------------------------------------------------


def settings_line(env: dict[str, str]) -> str:
    shown = ", ".join(f"{name}={value}" for name, value in env.items())
    return (
        f"settings         {shown} (INTENT_MAX_DEFERRAL raised with the deadline: the whole "
        "run is one long outage); every other setting at its default"
    )


def relative(at: float | None, origin: float | None) -> str:
    if at is None or origin is None:
        return "-"
    return f"{at - origin:+.1f} s"


def transitions_lines(run: Run) -> list[str]:
    """The breaker's states as sampled, times from the fault's start."""
    origin = run.window.started
    return [
        f"  {relative(s.at, origin):>10}  {s.state:<15} opened_at {relative(s.opened_at, origin)}"
        f"  until {relative(s.until, origin)}  generation {s.generation}"
        for s in run.monitor.samples
    ]


def spared(run: Run, fault: dict[str, Any]) -> int:
    """Requests in the fault window that the fault let through (answered /health probes)."""
    start, end = run.window.started, run.window.ended
    if start is None or end is None:
        return 0
    return sum(1 for t in run.monitor.arrivals(fault, met=False) if start <= t < end)


def report(run: Run, args: argparse.Namespace, env: dict[str, str]) -> None:
    f, counts, inflow = run.figures, run.tally, run.inflow
    span = (inflow.ended or run.t0) - run.t0
    threshold = run.threshold
    print(f"machine          {machine()}")
    print(f"worker           prefork, {args.concurrency} processes")
    print(settings_line(env))
    print(
        f"run              fault {args.fault} for {args.outage:g} s from t={WARMUP_S:g} s; "
        f"{args.n} analyses of new contexts at {args.rate:g}/s over {run.clients} client_ids "
        f"(inflow took {span:.1f} s, {args.n / span if span else 0:.1f}/s)"
    )
    for name in ("submitted", "completed", "degraded", "failed", "lost", "duplicate_events"):
        print(f"{name:<16} {f[name]}")
    if counts.reasons:
        print("failed because   " + ", ".join(f"{k}: {v}" for k, v in counts.reasons.most_common()))
    cycles = f["calls_to_dead_service_per_open_cycle"]
    verdict = "ok" if cycles and max(cycles) <= threshold else f"over {threshold}"
    print(f"calls per cycle  {cycles}  ({verdict}; bar: each <= {threshold})")
    print(
        f"not faulted      {spared(run, FAULTS[args.fault])} requests in the fault window "
        "the fault did not apply to (/health probes), left out of the cycles"
    )
    print(f"after recovery   {f['calls_first_10s_after_recovery']} calls in the first 10 s")
    print(f"drain            {f['drain_s']} s from the fault cleared to the last result")
    print(f"worker RSS peak  {f['peak_worker_rss_mb']} MB (main process and pool)")
    lanes = ", ".join(f"{k}: {v}" for k, v in run.monitor.peak_waiting_lanes.items() if v)
    print(f"waiting peak     {run.monitor.peak_waiting} steps ({lanes or 'none'})")
    print(f"events           {run.events} in the stream")
    print(f"retries          {counts.retries}, deferrals {counts.deferrals} (of ready results)")
    print(f"breaker          {len(run.monitor.opens)} open periods; states as sampled:")
    for line in transitions_lines(run):
        print(line)
    if run.monitor.errors:
        print("monitor errors   " + ", ".join(f"{k}: {v}" for k, v in run.monitor.errors.items()))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--n", type=int, help="analyses (default: 2000, or enough to outlast the outage)")
    add("--rate", type=float, default=20.0, help="analyses submitted per second")
    add("--outage", type=float, default=120.0, help="seconds the fault lasts")
    add("--fault", choices=sorted(FAULTS), default="down")
    add("--recovery-timeout", type=float, default=60.0, help="INTENT_CIRCUIT_RECOVERY_TIMEOUT")
    add("--deadline", type=float, default=1800.0, help="INTENT_ANALYSIS_DEADLINE")
    add("--concurrency", type=int, default=8, help="worker pool processes")
    add("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.n is None:
        args.n = default_n(args.rate, args.outage)
    return args


def main() -> int:
    args = parse_args()
    env = settings_env(args)

    from intent.dev.stack import Stack

    with stdout_to_stderr(), Stack(concurrency=args.concurrency, env=env) as stack:
        run = measure(stack, args)
    if args.json:
        print(settings_line(env), file=sys.stderr)  # stdout carries the object alone
        print(json.dumps(run.figures))
        return 0
    report(run, args, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
