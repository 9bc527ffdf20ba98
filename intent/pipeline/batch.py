"""Batches of analyses: the steps of ``intent.analyze_batch`` over a :class:`BatchResult`,
with one bulk call per service per step and every error kept on its own item."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from intent import codec, tracing
from intent.errors import (
    DetectionConflict,
    IntentError,
    RateLimitExceeded,
    ServiceRequestError,
    ServiceUnavailableError,
    ValidationError,
)
from intent.events.publisher import build_events
from intent.models import BatchItem, BatchResult, Context, IntentResult, PredictionSet
from intent.pipeline import recovery
from intent.pipeline.intake import admit
from intent.pipeline.steps import (
    FALLBACKS,
    detect_pattern,
    expire_if_late,
    parse_body,
    use_fallback,
)
from intent.ratelimit import GET_CONTEXT, PREDICT
from intent.runtime import Runtime
from intent.validation import parse_request, request_limits
from intent.waiting import OTHER

BatchStep = Callable[[Runtime, "BatchResult"], "BatchResult"]

# What each step adds to an item's result: an item still lacking it is pending there.
_STEP_OUTPUT = {"fetch_context": "context", "predict": "predictions", "detect_pattern": "pattern"}


# -- intake ------------------------------------------------------------------------------


def parse_requests(requests: Any, max_size: int, limits: codec.Limits) -> list[Any]:
    """The raw requests of a batch (a list, or a JSON text of one) of 1 to ``max_size``
    items; anything else is refused as a whole with ``ValidationError("requests", ...)``.
    ``limits`` are one request's: the text may hold ``max_size`` of them, a level down."""
    if isinstance(requests, str | bytes | bytearray):
        requests = codec.loads(requests, limits.nested(1, max_size), "requests")
    if not isinstance(requests, list | tuple):
        raise ValidationError(
            "requests", f"must be a list of requests, not {type(requests).__name__}"
        )
    if not requests:
        raise ValidationError("requests", "must hold at least one request")
    if len(requests) > max_size:
        raise ValidationError(
            "requests", f"holds {len(requests)} requests; a batch takes at most {max_size}"
        )
    return list(requests)


def start_batch(rt: Runtime, requests: Any, batch_id: str, max_size: int) -> BatchResult:
    """Validate and admit each request: a bad one (or one over its client's intake limit)
    fails alone with its error, the others start running."""
    submitted_at = time.time()  # each item's duration runs from here, as a chain's does
    first_index: dict[str, int] = {}
    items: list[BatchItem] = []
    limits = request_limits(rt.settings)
    for index, payload in enumerate(parse_requests(requests, max_size, limits)):
        given = payload.get("request_id") if isinstance(payload, dict) else None
        item = BatchItem(index=index, request_id=given if isinstance(given, str) else None)
        try:
            request = parse_request(payload, rt.settings)
            first = first_index.setdefault(request.request_id, index)
            if first != index:
                # Its events and decision are keyed by request_id: it would be item `first`.
                raise ValidationError("request_id", f"repeats the request_id of item {first}")
            request = admit(rt, request)
        except (ValidationError, RateLimitExceeded) as exc:
            items.append(item.fail(exc))
            continue
        items.append(
            item.model_copy(
                update={
                    "request_id": request.request_id,
                    "result": IntentResult(request=request, submitted_at=submitted_at),
                }
            )
        )
    # with_items settles the status: a batch of nothing but bad requests is already done.
    return BatchResult(batch_id=batch_id, items=items).with_items({})


# -- the steps ---------------------------------------------------------------------------


def batch_lane(step: str) -> str:
    """Where a batch step waits to run again: the endpoint its bulk call counts against."""
    return {"fetch_context": GET_CONTEXT, "predict": PREDICT}.get(step, OTHER)


def pending(step: str, batch: BatchResult) -> list[BatchItem]:
    """The items ``step`` still has to do: running, and lacking the step's output."""
    output = _STEP_OUTPUT.get(step)
    return [
        item
        for item in batch.items
        if item.status == "running"
        and item.result is not None
        and (output is None or getattr(item.result, output) is None)
    ]


def _result(item: BatchItem) -> IntentResult:
    assert item.result is not None, "a running item has a result"
    return item.result


def fetch_contexts(rt: Runtime, batch: BatchResult) -> BatchResult:
    """Each pending item's context: a fresh cache entry, else one bulk call for all the
    context ids (each id asked once), and one call per item with inline data."""
    client = rt.clients.context
    changes: dict[int, BatchItem] = {}
    waiting: dict[str, list[BatchItem]] = {}
    inline: list[BatchItem] = []
    for item in pending("fetch_context", batch):
        context_id = _result(item).request.context_id
        if context_id is None:
            inline.append(item)
        else:
            waiting.setdefault(context_id, []).append(item)
    for context_id in list(waiting):
        cached = rt.context_cache.get(context_id)
        if cached is not None and cached.fresh:
            tracing.event("cache.hit", context_id=context_id, age=round(cached.age, 3))
            for item in waiting.pop(context_id):
                changes[item.index] = _with_context(item, cached.context)
    transient: list[ServiceUnavailableError] = []
    answers = client.get_contexts(list(waiting)) if waiting else []
    for items, answer in zip(waiting.values(), answers, strict=True):
        try:
            if isinstance(answer, Exception):
                raise answer
            context = parse_body(Context, client.service, answer)
        except ServiceUnavailableError as exc:
            transient.append(exc)
            continue
        except ServiceRequestError as exc:
            changes.update((item.index, item.fail(exc)) for item in items)
            continue
        # Cached at once: a retry of this step after a later failure finds it fresh.
        rt.context_cache.put(context)
        changes.update((item.index, _with_context(item, context)) for item in items)
    for item in inline:
        data = _result(item).request.data
        assert data is not None, "a request has a context_id or data"
        try:
            body = client.analyze_context(data)
            context = parse_body(Context, client.service, body)
        except ServiceRequestError as exc:
            changes[item.index] = item.fail(exc)
            continue
        rt.context_cache.put(context)
        changes[item.index] = _with_context(item, context)
    if transient:
        raise transient[0]  # the step is retried; what was fetched is in the cache
    return batch.with_items(changes)


def _with_context(item: BatchItem, context: Context) -> BatchItem:
    return item.advance(_result(item).model_copy(update={"context": context}))


def predict(rt: Runtime, batch: BatchResult) -> BatchResult:
    """Predictions for every pending item, in one bulk call."""
    client = rt.clients.prediction
    todo = pending("predict", batch)
    requests = []
    for item in todo:
        context = _result(item).context
        assert context is not None, "predict needs the context step's output"
        requests.append((_result(item).request.pattern_id, context.model_dump()))
    answers = client.get_predictions_batch(requests) if requests else []
    changes: dict[int, BatchItem] = {}
    for item, answer in zip(todo, answers, strict=True):
        try:
            if isinstance(answer, Exception):
                raise answer
            predictions = parse_body(PredictionSet, client.service, answer)
        except ServiceRequestError as exc:
            changes[item.index] = item.fail(exc)
            continue
        # ServiceUnavailableError propagates: the whole step is retried.
        changes[item.index] = item.advance(
            _result(item).model_copy(update={"predictions": predictions})
        )
    return batch.with_items(changes)


def detect_patterns(rt: Runtime, batch: BatchResult) -> BatchResult:
    """Detection for each pending item, in item order (two items of one context and
    pattern are decided one after the other, as two single analyses would be)."""
    changes: dict[int, BatchItem] = {}
    for item in pending("detect_pattern", batch):
        try:
            changes[item.index] = item.advance(detect_pattern(rt, _result(item)))
        except DetectionConflict as exc:
            changes[item.index] = item.fail(exc)
    return batch.with_items(changes)


def emit_events(rt: Runtime, batch: BatchResult) -> BatchResult:
    """Every pending item's events in one publish (each event id at most once, as for a
    single analysis); each item completes."""
    todo = pending("emit_events", batch)
    per_item = [build_events(_result(item)) for item in todo]
    added = rt.publisher.publish([event for events in per_item for event in events])
    changes: dict[int, BatchItem] = {}
    offset = 0
    for item, events in zip(todo, per_item, strict=True):
        published = sum(1 for stream_id in added[offset : offset + len(events)] if stream_id)
        offset += len(events)
        result = _result(item).model_copy(
            update={"events": events, "published": published, "status": "completed"}
        )
        changes[item.index] = item.advance(result)
    return batch.with_items(changes)


BATCH_STEPS: tuple[tuple[str, BatchStep], ...] = (
    ("fetch_context", fetch_contexts),
    ("predict", predict),
    ("detect_pattern", detect_patterns),
    ("emit_events", emit_events),
)
BATCH_STEP_FUNCTIONS: dict[str, BatchStep] = dict(BATCH_STEPS)


def run_batch_step(
    rt: Runtime, name: str, batch: BatchResult, now: float | None = None
) -> BatchResult:
    """One step for the batch's pending items; an item past its deadline stops as
    ``expired`` first, and nothing is called for it."""
    batch = expire_pending(name, batch, time.time() if now is None else now)
    if not pending(name, batch):
        return batch
    return BATCH_STEP_FUNCTIONS[name](rt, batch)


# -- when a step fails as a whole ---------------------------------------------------------


def expire_pending(step: str, batch: BatchResult, at: float) -> BatchResult:
    """The pending items whose deadline falls before ``at`` marked expired at ``step``."""
    changes: dict[int, BatchItem] = {}
    for item in pending(step, batch):
        late = expire_if_late(step, _result(item), at)
        if late is not None:
            changes[item.index] = item.advance(late)
    return batch.with_items(changes)


def settle_pending(rt: Runtime, step: str, batch: BatchResult, now: float) -> BatchResult:
    """What a failed step still decided, before its failure is answered: items past their
    deadline expire, and at fetch_context an item whose context is fresh in the cache
    (served before the step failed, or fetched by it) takes it, not degraded."""
    batch = expire_pending(step, batch, now)
    if step != "fetch_context":
        return batch
    changes: dict[int, BatchItem] = {}
    for item in pending(step, batch):
        context_id = _result(item).request.context_id
        cached = rt.context_cache.get(context_id) if context_id is not None else None
        if cached is not None and cached.fresh:
            changes[item.index] = _with_context(item, cached.context)
    return batch.with_items(changes)


def fallback_pending(rt: Runtime, step: str, batch: BatchResult, exc: Exception) -> BatchResult:
    """The step's fallback (stale context, last predictions) for each pending item that
    has one; the others stay pending."""
    if step not in FALLBACKS:
        return batch
    changes: dict[int, BatchItem] = {}
    for item in pending(step, batch):
        degraded = use_fallback(rt, step, _result(item), exc)
        if degraded is not None:
            changes[item.index] = item.advance(degraded)
    return batch.with_items(changes)


def fail_pending(step: str, batch: BatchResult, exc: BaseException) -> BatchResult:
    """Every item still pending at ``step`` failed with ``exc``."""
    return batch.with_items({item.index: item.fail(exc) for item in pending(step, batch)})


def recover_batch(
    rt: Runtime,
    step: str,
    exc: Exception,
    current: BatchResult,
    now: float | None = None,
    rand: Callable[[], float] = random.random,
) -> BatchResult | recovery.Wait[BatchResult]:
    """The single pipeline's recovery decision for a failed bulk step, applied to the
    items it concerns: what the step had decided is kept, fallbacks serve the items they
    can, items past their deadline expire, what cannot be recovered fails those items (not
    the batch); else the wait for the caller to carry out. A bug (not an IntentError) is
    raised: the batch fails loudly."""
    now = time.time() if now is None else now
    error = recovery.as_domain_error(exc)
    if not isinstance(error, IntentError):
        raise exc
    # The step raised with its decisions unreturned: keep what it did decide.
    current = settle_pending(rt, step, current, now)
    if not pending(step, current):
        return current
    budgets = recovery.Budgets.from_settings(rt.settings)
    attempt = recovery.Attempt(step, current.retries.get(step, 0), current.deferred_seconds)
    decision = recovery.decide(error, attempt, budgets, now, rand, spend=rt.spend_retry)
    if decision.fallback:
        current = fallback_pending(rt, step, current, error)
        if not pending(step, current):
            return current
    then = decision.then
    if isinstance(then, recovery.Fail | recovery.Expire):
        return fail_pending(step, current, then.error)
    if isinstance(then, recovery.Retry):
        following = current.with_retries(step, then.retry, due=now + then.countdown)
    else:
        # Items that would only reach the step after their deadline stop now.
        current = expire_pending(step, current, now + then.delay)
        if not pending(step, current):
            return current
        following = current.with_deferral(step, now).with_retries(step, then.retry or 0)
    deadlines = [
        item.result.request.deadline
        for item in pending(step, following)
        if item.result is not None and item.result.request.deadline is not None
    ]
    # Held no longer than the earliest deadline: those items expire at their next run.
    attempt = replace(attempt, deadline=min(deadlines, default=None))
    latest = recovery.release_by(then, attempt, budgets, now)
    return recovery.Wait(f"batch_{step}", then, following, batch_lane(step), latest)
