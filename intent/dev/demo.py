"""``intent demo`` (``make demo``): the whole product on one machine, in one run.

Starts Redis (embedded unless INTENT_REDIS_URL is set), the reference services and a
prefork worker, then runs five phases: transient faults retried; an outage of both
services (the shared breakers open, analyses with a cached context come back degraded,
the others wait for the breaker and complete after recovery, one runs out of time);
a burst over one client's intake limit; a batch sent by task name with one bad request;
resubmissions answered as duplicates. Breaker transitions are printed as they happen and
a summary table follows. Exits 1 if part of that story did not happen.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intent.errors import IntentError, RateLimitExceeded, ValidationError
from intent.models import (
    CONTEXT_SERVICE,
    PREDICTION_SERVICE,
    SERVICES,
    BatchItem,
    BatchResult,
    IntentResult,
)
from intent.settings import ENV_PREFIX, Settings

# Settings the demo shortens so one run takes seconds (the ratios between them are kept
# roughly as in production). Stack puts them in the environment: the worker and this
# process (submit(), the intake limit) read the same values.
DEMO_SETTINGS = {
    "circuit_recovery_timeout": "4",
    "retry_initial_delay": "0.25",
    "retry_max_delay": "2",
    "context_cache_ttl": "1",
    "max_requests_per_window": "5",
    "defer_jitter": "0.2",
}
DEMO_ENV = {ENV_PREFIX + name.upper(): value for name, value in DEMO_SETTINGS.items()}
POLL_INTERVAL = 0.1  # how often the breakers' shared state is read
PHASE_TIMEOUT = 60.0  # an analysis not done this long after its phase ends is "timed out"

OPEN, HALF_OPEN, CLOSED = "open", "half-open", "closed"


def timings_line(settings: Settings) -> str:
    """What the demo shortened, with the production defaults in brackets."""

    def both(name: str, unit: str = " s") -> str:
        value, default = getattr(settings, name), Settings.model_fields[name].default
        return f"{value:g}{unit} ({default:g}{unit})"

    return (
        "demo timings, production in brackets: "
        f"breaker recovery {both('circuit_recovery_timeout')}, "
        f"first retry {both('retry_initial_delay')}, longest retry {both('retry_max_delay')}, "
        f"context cache TTL {both('context_cache_ttl')}, intake limit per client "
        f"{both('max_requests_per_window', '')} per {settings.rate_limit_window} s, "
        f"defer jitter {both('defer_jitter')}"
    )


class Console:
    """The demo's output. The breaker watch prints from its own thread, so every line goes
    through one lock; live lines carry the seconds since the analyses began."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str = "") -> None:
        with self._lock:
            print(text, flush=True)

    def live(self, text: str) -> None:
        self.line(f"[{self.elapsed():5.1f} s] {text}")

    def header(self, title: str, *explanation: str) -> None:
        self.line(f"\n== {title}")
        for text in explanation:
            self.line(f"   {text}")


# -- the breakers, as operators see them --------------------------------------------------


@dataclass(frozen=True)
class Transition:
    at: float
    breaker: str
    old: str
    new: str
    reason: str

    def __str__(self) -> str:
        return (
            f"[{self.at:5.1f} s] breaker {self.breaker}: {self.old} -> {self.new} ({self.reason})"
        )


def moves(old: str, new: str, count: int) -> list[tuple[str, str]]:
    """The moves between two polls, ``count`` generations apart: a trial that ended within
    one poll went open -> half-open -> open or closed."""
    if count == 2 and old == OPEN and new in (OPEN, CLOSED):
        return [(OPEN, HALF_OPEN), (HALF_OPEN, new)]
    return [(old, new)]


class BreakerWatch:
    """Polls both breakers' shared state (``get_runtime().circuits``, the operators' view)
    and prints each transition as it happens. Every move starts a new generation, so a
    move quicker than a poll still shows."""

    def __init__(self, circuits: Any, console: Console, interval: float = POLL_INTERVAL):
        self.circuits = circuits
        self.console = console
        self.interval = interval
        self.transitions: list[Transition] = []
        self._last: dict[str, tuple[str, int]] = {}
        self._failing = False  # the last poll failed (said once, not every poll)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="breaker-watch", daemon=True)

    def __enter__(self) -> BreakerWatch:
        self._poll()  # where each breaker stands now (a persistent Redis remembers)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def seen(self, breaker: str, old: str, new: str) -> bool:
        with self._lock:
            return any((t.breaker, t.old, t.new) == (breaker, old, new) for t in self.transitions)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._poll()
            except Exception as exc:  # Redis busy or away: the next poll tries again
                if not self._failing:
                    self.console.live(f"(breaker watch: cannot read the breakers: {exc})")
                self._failing = True
            else:
                self._failing = False

    def _poll(self) -> None:
        for name in SERVICES:
            status = self.circuits.status(name)
            last = self._last.get(name)
            self._last[name] = (status.state, status.generation)
            if last is None or status.generation == last[1]:
                continue
            for old, new in moves(last[0], status.state, status.generation - last[1]):
                reason = "recovery timeout elapsed" if new == HALF_OPEN else status.reason
                self._record(Transition(self.console.elapsed(), name, old, new, reason))

    def _record(self, transition: Transition) -> None:
        with self._lock:
            self.transitions.append(transition)
        self.console.line(str(transition))


# -- analyses and their outcomes ----------------------------------------------------------


@dataclass
class Row:
    """One analysis (or batch item) as the summary shows it."""

    phase: int
    label: str
    outcome: str = "pending"
    pattern: str = "-"
    retries: int = 0
    deferrals: int = 0
    waited: float = 0.0
    fallbacks: str = "-"
    events: str = "-"
    note: str = ""
    batch: bool = False

    @property
    def waited_long(self) -> bool:
        """Deferred, or held by an open breaker (a retry parked when it opened): a short
        wait is only the release's latency."""
        return self.deferrals > 0 or self.waited >= 0.5

    def detail(self) -> str:
        parts = []
        if self.retries:
            parts.append(f"retries={self.retries}")
        if self.deferrals:
            parts.append(f"deferrals={self.deferrals}")
        if self.waited_long:
            parts.append(f"waited {self.waited:.1f} s")
        if self.fallbacks != "-":
            parts.append(f"fallbacks: {self.fallbacks}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def line(self) -> str:
        detail = self.detail()
        events = f"{self.events}  {detail}" if detail else self.events
        return f"{self.label:<30} {self.outcome:<9} {self.pattern:<15} {events}"

    def fill(self, result: IntentResult) -> None:
        """Take what ``result`` says; a duplicate stays one (nothing of it ran again)."""
        pattern = result.pattern
        if pattern is not None and pattern.label:
            self.pattern = f"{pattern.label} ({pattern.confidence:.2f})"
        self.events = ", ".join(e.type.value for e in result.events) or "-"
        if self.outcome == "duplicate":
            return
        self.retries = sum(result.retries.values())
        self.deferrals = sum(result.deferrals.values())
        self.waited = result.deferred_seconds
        self.fallbacks = ", ".join(result.fallbacks) or "-"
        if result.status == "expired":
            self.outcome, self.note = "expired", f"expired at {result.expired_at}"
        else:
            self.outcome = "degraded" if result.degraded else "completed"


@dataclass
class Pending:
    rows: list[Row]
    ready: Callable[[], bool]
    finish: Callable[[], None]


class Tracker:
    """Submits analyses and batches, prints each as it ends, keeps every row."""

    def __init__(self, console: Console, submit: Callable[[dict[str, Any]], Any], app: Any):
        self.console = console
        self._submit = submit
        self._app = app
        self.rows: list[Row] = []
        self._pending: list[Pending] = []

    def submit(self, phase: int, label: str, request: dict[str, Any]) -> Row:
        row = Row(phase, label)
        self.rows.append(row)
        try:
            analysis = self._submit(request)
        except RateLimitExceeded as exc:
            row.outcome = "refused"
            row.note = f"over the intake limit, retry after {exc.retry_after:.0f} s"
            self.console.live(row.line())
            return row
        except ValidationError as exc:
            row.outcome, row.note = "refused", f"invalid {exc.field}: {exc.message}"
            self.console.live(row.line())
            return row
        if analysis.duplicate:
            row.outcome, row.note = "duplicate", "the first analysis's result; nothing ran"
        self._pending.append(Pending([row], analysis.ready, lambda: self._finish(row, analysis)))
        return row

    def submit_batch(self, phase: int, labels: list[str], requests: list[dict[str, Any]]) -> None:
        """``intent.analyze_batch`` by task name, as an application without this code sends it."""
        rows = [Row(phase, f"batch[{i}] {label}", batch=True) for i, label in enumerate(labels)]
        self.rows += rows
        result = self._app.send_task("intent.analyze_batch", args=[requests])
        self._pending.append(Pending(rows, result.ready, lambda: self._finish_batch(rows, result)))

    def _finish(self, row: Row, analysis: Any) -> None:
        try:
            result = analysis.get(timeout=5)
        except IntentError as exc:
            row.outcome, row.note = "failed", f"{type(exc).__name__}: {exc}"
            self.console.live(row.line())
            return
        row.fill(result)
        self.console.live(row.line())
        if row.outcome == "degraded":
            for reason in result.degraded_reasons:
                self.console.line(f"{'':>10}{reason}")

    def _finish_batch(self, rows: list[Row], result: Any) -> None:
        try:
            batch = BatchResult.model_validate(result.get(timeout=5))
        except Exception as exc:
            for row in rows:
                row.outcome, row.note = "failed", f"the batch failed: {exc}"
                self.console.live(row.line())
            return
        for row, item in zip(rows, batch.items, strict=True):
            _fill_item(row, item)
            self.console.live(row.line())

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Print analyses as they end until ``done()``; False if it took over ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for pending in list(self._pending):
                if pending.ready():
                    self._pending.remove(pending)
                    pending.finish()
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def drain(self, timeout: float = PHASE_TIMEOUT) -> None:
        """Wait for every analysis submitted so far; what is still running is timed out."""
        if self.wait_until(lambda: not self._pending, timeout):
            return
        for pending in self._pending:
            for row in pending.rows:
                row.outcome = "timed out"
                self.console.live(row.line())
        self._pending.clear()


def _fill_item(row: Row, item: BatchItem) -> None:
    if item.result is not None:
        row.fill(item.result)  # completed, degraded or expired
    if item.status == "failed":
        row.outcome = "failed"
    if item.error is not None:
        row.note = f"{item.error.type}: {item.error.message}"


# -- the story ----------------------------------------------------------------------------


@dataclass
class Demo:
    run_id: str
    settings: Settings
    console: Console
    tracker: Tracker
    watch: BreakerWatch
    context: Any  # ReferenceControl of the Context Service
    prediction: Any  # ... and of the Prediction Service
    first_round: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _count: int = 0

    def request(
        self, client: str, context: str | None, pattern: str, **more: Any
    ) -> dict[str, Any]:
        """A request of this run: its request_id, client_id and context_id end in the run id,
        so a second run against the same Redis runs everything again."""
        self._count += 1
        request = {
            "request_id": f"demo-{self.run_id}-{self._count:02d}",
            "client_id": f"{client}.{self.run_id}",
            "pattern_id": pattern,
            **more,
        }
        if context is not None:
            request["context_id"] = self.ctx(context)
        return request

    def ctx(self, name: str) -> str:
        return f"{name}.{self.run_id}"

    def submit(
        self, phase: int, client: str, context: str, pattern: str, prefix: str = "", **more: Any
    ) -> Row:
        request = self.request(client, context, pattern, **more)
        return self.tracker.submit(phase, f"{prefix}{context}/{pattern}", request)

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float) -> bool:
        if self.tracker.wait_until(done, timeout):
            return True
        self.console.live(f"(no {what} within {timeout:.0f} s)")
        return False


WARM = [("ctx-1001", "checkout"), ("ctx-1002", "churn-risk"), ("ctx-1003", "support")]
WARM_OTHER = [("ctx-1004", "checkout"), ("ctx-1005", "churn-risk"), ("ctx-1006", "support")]
# Cached contexts with patterns phase 1 did not predict for them: no last predictions.
WARM_NEW_PATTERN = [("ctx-1004", "support"), ("ctx-1005", "checkout")]


def phase_transient(demo: Demo) -> None:
    demo.console.header(
        "1. Everyday traffic, with transient faults",
        "ctx-flaky answers 503 twice and the Prediction Service's next three answers are 503s:",
        "each is retried on the backoff schedule, unseen by the caller. missing-ctx does not",
        "exist: a 404 is permanent, so that analysis fails at once, without a retry.",
    )
    demo.context.set_faults(status=503, count=2, match=demo.ctx("ctx-flaky"))
    demo.prediction.set_faults(status=503, count=3)
    for client, pairs in (("web-shop", WARM), ("mobile-app", WARM_OTHER)):
        for context, pattern in pairs:
            request = demo.request(client, context, pattern)
            demo.first_round.append((f"{context}/{pattern}", request))
            demo.tracker.submit(1, f"{context}/{pattern}", request)
    inline = {"cart": ["sku-1", "sku-7"], "visits": 3, "channel": "mobile", "run": demo.run_id}
    request = demo.request("partner-api", None, "checkout", data=inline)
    demo.tracker.submit(1, "inline data/checkout", request)
    demo.submit(1, "partner-api", "ctx-flaky", "checkout")
    demo.submit(1, "partner-api", "missing-ctx", "checkout")
    demo.tracker.drain()
    demo.context.clear_faults()
    demo.prediction.clear_faults()


def phase_outage(demo: Demo) -> None:
    recovery = demo.settings.circuit_recovery_timeout
    demo.console.header(
        "2. An outage: both services answer 503 to every call",
        "Failures count toward each service's circuit breaker, shared in Redis by every worker",
        f"process; once open, nobody calls the service until a trial call {recovery:g} s later.",
        "Analyses whose context is cached (stale by now) are served it and their last",
        "predictions, marked degraded; the others wait for the breaker (a deferral: no retry",
        "spent) and complete after recovery, unless their deadline comes first.",
    )
    time.sleep(demo.settings.context_cache_ttl)  # what phase 1 cached is stale now
    for control in (demo.context, demo.prediction):
        control.clear_requests()
        control.set_faults(status=503, include_health=True)
    demo.console.live("both services answer 503")
    for n, pattern in enumerate(["checkout", "churn-risk", "support"], start=1):
        demo.submit(2, "checkout-api", f"ctx-200{n}", pattern)
    demo.submit(2, "checkout-api", "ctx-2004", "checkout", deadline=time.time() + 2.0)
    demo.console.live(
        "submitted 4 analyses of contexts never cached (ctx-2004 with a 2 s deadline)"
    )
    demo.wait_for(
        "open context breaker", lambda: demo.watch.seen(CONTEXT_SERVICE, CLOSED, OPEN), 15
    )
    for context, pattern in WARM_NEW_PATTERN:
        demo.submit(2, "storefront", context, pattern)
    demo.console.live("submitted 2 analyses of cached contexts, with patterns new to them")
    demo.wait_for(
        "open prediction breaker", lambda: demo.watch.seen(PREDICTION_SERVICE, CLOSED, OPEN), 15
    )
    demo.prediction.clear_faults()
    demo.console.live("the Prediction Service is back: its breaker closes after a trial call")
    for context, pattern in WARM:  # cached contexts with predictions from phase 1
        demo.submit(2, "storefront", context, pattern)
    demo.console.live("submitted 3 analyses of cached contexts that phase 1 predicted")
    demo.wait_for(
        "failed trial call",
        lambda: demo.watch.seen(CONTEXT_SERVICE, HALF_OPEN, OPEN),
        recovery * 3,
    )
    demo.context.clear_faults()
    demo.console.live("the Context Service is back: the next trial call will succeed")
    demo.tracker.drain()
    calls = [_failed_calls(control) for control in (demo.context, demo.prediction)]
    demo.console.line(
        f"   while down, the Context Service was called {calls[0]} times and the Prediction "
        f"Service {calls[1]}: the breakers stopped the rest"
    )


def _failed_calls(control: Any) -> int:
    return sum(1 for entry in control.requests_log() if entry["status"] == 503)


def phase_burst(demo: Demo) -> None:
    limit = demo.settings.max_requests_per_window
    window = demo.settings.rate_limit_window
    demo.console.header(
        "3. One client sends a burst",
        f"At most {limit} analyses per client per {window} s are taken in; submit() refuses the",
        "rest with RateLimitExceeded and its retry_after. Nothing is enqueued, nothing retried.",
    )
    for n in range(limit + 2):
        context, pattern = (WARM + WARM_OTHER)[n % 6]
        demo.submit(3, "crawler", context, pattern, prefix=f"crawler #{n + 1} ")
    demo.tracker.drain()


def phase_batch(demo: Demo) -> None:
    demo.console.header(
        "4. A batch, sent by task name",
        'send_task("intent.analyze_batch", args=[[...]]) with 4 requests, one with a bad',
        "pattern_id: that one fails alone with an error naming the field; the others complete.",
    )
    pairs = [("ctx-3001", "checkout"), ("ctx-3002", "support"), ("ctx-3003", "check out!")]
    pairs.append(("ctx-3004", "churn-risk"))
    requests = [demo.request("importer", context, pattern) for context, pattern in pairs]
    demo.tracker.submit_batch(4, [f"{c}/{p}" for c, p in pairs], requests)
    demo.tracker.drain()


def phase_resubmit(demo: Demo) -> None:
    demo.console.header(
        "5. Resubmissions",
        "A web app that lost its answer submits the same request_id again: it gets the first",
        "result back and nothing runs twice. A request refused as invalid was never taken in,",
        "so its corrected version runs under the same request_id.",
    )
    for label, request in demo.first_round[:2]:
        demo.tracker.submit(5, label, request)
    request = demo.request("mobile-app", "ctx-1007", "checkout")
    demo.tracker.submit(5, "ctx 1007/checkout", {**request, "context_id": "ctx 1007"})
    demo.tracker.submit(5, "ctx-1007/checkout", request)
    demo.tracker.drain()


# -- the summary --------------------------------------------------------------------------


def summary(demo: Demo, elapsed: float) -> list[str]:
    """Print the table and totals; return what the story lacked (nothing: it all happened)."""
    console, rows = demo.console, demo.tracker.rows
    console.header("Summary")
    head = ("", "analysis", "outcome", "pattern", "retries", "deferrals", "waited")
    console.line(_table_line((*head, "fallbacks", "events")))
    for r in rows:
        waited = f"{r.waited:.1f} s" if r.waited_long else "-"
        cells = (r.phase, r.label, r.outcome, r.pattern, r.retries, r.deferrals, waited)
        console.line(_table_line((*cells, r.fallbacks, r.events)))
    singles = [r for r in rows if not r.batch]
    items = [r for r in rows if r.batch]
    count = _counter(singles)
    console.line(
        f"\n  totals: {count('completed')} completed, {count('degraded')} degraded, "
        f"{sum(r.waited_long for r in singles)} deferred, "
        f"{sum(r.retries > 0 for r in singles)} retried, {count('expired')} expired, "
        f"{count('refused')} refused (intake), {count('failed')} failed, "
        f"{count('duplicate')} duplicates, {count('timed out')} timed out"
    )
    console.line("  (deferred and retried analyses are also counted by how they ended)")
    console.line(
        f"  batch items: {len(items)} ({_counter(items)('completed')} completed, "
        f"{_counter(items)('failed')} failed)"
    )
    console.line(f"  breaker transitions: {len(demo.watch.transitions)}")
    for transition in demo.watch.transitions:
        console.line(f"    {transition}")
    console.line(f"  {elapsed:.1f} s from the first analysis to the last")
    return missing_parts(demo, singles)


def _table_line(cells: tuple[object, ...]) -> str:
    phase, label, outcome, pattern, retries, deferrals, waited, fallbacks, events = cells
    return (
        f"  {phase:<2}{label:<32} {outcome:<10} {pattern:<15} {retries:>7} {deferrals:>9} "
        f"{waited:>7}  {fallbacks:<21} {events}"
    )


def _counter(rows: list[Row]) -> Callable[[str], int]:
    return lambda outcome: sum(r.outcome == outcome for r in rows)


def missing_parts(demo: Demo, rows: list[Row]) -> list[str]:
    """What of the story did not happen."""
    count = _counter(rows)
    checks = {
        "a breaker transition": bool(demo.watch.transitions),
        "a degraded analysis": count("degraded") > 0,
        "a deferred analysis that completed": any(
            r.waited_long and r.outcome in ("completed", "degraded") for r in rows
        ),
        "an intake refusal": any(r.outcome == "refused" and "intake" in r.note for r in rows),
        "an expired analysis": count("expired") > 0,
    }
    missing = [what for what, happened in checks.items() if not happened]
    timed_out = _counter(demo.tracker.rows)("timed out")
    if timed_out:
        missing.append(f"{timed_out} analyses that timed out to finish")
    return missing


# -- start to finish ----------------------------------------------------------------------


def run(concurrency: int = 4) -> int:
    from intent.dev.stack import Stack
    from intent.lifecycle import interrupt_on_sigterm
    from intent.reference import ReferenceControl
    from intent.runtime import get_runtime
    from intent.settings import get_settings

    logdir = Path(tempfile.mkdtemp(prefix="intent-demo-"))
    stack = Stack(concurrency=concurrency, env=DEMO_ENV, logfile=str(logdir / "worker.log"))
    with interrupt_on_sigterm(), stack:
        from tasks.app import app
        from tasks.submit import submit

        settings = get_settings()  # read after Stack set DEMO_ENV, as the worker's was
        run_id = uuid.uuid4().hex[:6]
        print(f"Redis      {'embedded Valkey' if stack.redis else 'INTENT_REDIS_URL'}")
        print(f"services   context {stack.context_url}, prediction {stack.prediction_url}")
        print(f"worker     prefork, {concurrency} processes (log: {logdir / 'worker.log'})")
        print(f"run        {run_id}: this run's request, client and context ids end in it")
        print(timings_line(settings))
        console = Console()
        context = ReferenceControl(stack.context_url)
        prediction = ReferenceControl(stack.prediction_url)
        with BreakerWatch(get_runtime().circuits, console) as watch:
            tracker = Tracker(console, submit, app)
            demo = Demo(run_id, settings, console, tracker, watch, context, prediction)
            for phase in (phase_transient, phase_outage, phase_burst, phase_batch, phase_resubmit):
                phase(demo)
            elapsed = console.elapsed()
        missing = summary(demo, elapsed)
    print("\nstopped: worker, reference services" + (", Redis" if stack.redis else ""))
    if missing:
        print("the demo did not show: " + "; ".join(missing))
        return 1
    return 0
