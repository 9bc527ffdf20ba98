"""Batches end to end on real Redis, the reference services' bulk routes over HTTP and an
in-process worker: per-item errors, bulk calls, the single-call fallback, the size cap."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from intent.clients import ContextServiceClient, PredictionServiceClient
from intent.errors import ServiceRequestError, ValidationError
from intent.events import event_from_fields
from intent.models import BatchItem, BatchResult, Context, Event, IntentEvent
from intent.reference import ReferenceControl, ReferenceServices
from intent.reference.data import context_for
from intent.runtime import get_runtime
from intent.settings import get_settings
from tasks import submit, submit_batch
from tasks.app import app
from tests.conftest import delete_service_keys
from tests.integration.conftest import api_calls, stored_without_its_message

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("inprocess_worker")]

TIMEOUT = 30


def requests_for(tag: str, count: int, **overrides: Any) -> list[dict[str, Any]]:
    return [
        {
            "request_id": f"b-{tag}-{i}",
            "client_id": "web",
            "context_id": f"ctx-batch-{tag}-{i % 7}",
            "pattern_id": ("checkout", "support", "upgrade")[i % 3],
            **overrides,
        }
        for i in range(count)
    ]


def run_batch(requests: list[Any]) -> BatchResult:
    return BatchResult.model_validate(submit_batch(requests).get(timeout=TIMEOUT))


def stream_events(client: redis.Redis) -> list[Event]:
    key = get_settings().key_prefix + "events"
    return [event_from_fields(fields) for _, fields in client.xrange(key)]


def outcome(events: list[Event]) -> list[tuple[IntentEvent, dict[str, Any]]]:
    """What an analysis decided, without what differs between runs (ids, times)."""
    return [(event.type, event.data) for event in events]


@pytest.fixture
def bulk_off(
    context_service: ReferenceControl, prediction_service: ReferenceControl
) -> Iterator[None]:
    context_service.set_bulk(False)
    prediction_service.set_bulk(False)
    yield
    context_service.set_bulk(True)
    prediction_service.set_bulk(True)


def test_a_batch_decides_as_single_analyses_would(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Repeated contexts and patterns: detection within a batch runs in item order.
    batch = run_batch(requests_for(tag, 24))

    assert batch.status == "completed"
    assert [item.status for item in batch.items] == ["completed"] * 24
    assert [item.index for item in batch.items] == list(range(24))
    delete_service_keys(clean)  # the same starting state (no pattern state, no cache)
    singles = [
        submit({**request, "request_id": f"{request['request_id']}-single"})
        for request in requests_for(tag, 24)
    ]
    for item, analysis in zip(batch.items, singles, strict=True):
        single = analysis.get(timeout=TIMEOUT)
        assert item.result is not None and item.error is None
        assert item.result.pattern is not None and single.pattern is not None
        assert item.result.context == single.context
        assert item.result.predictions == single.predictions
        assert (item.result.pattern.label, item.result.pattern.confidence) == (
            single.pattern.label,
            single.pattern.confidence,
        )
        assert outcome(item.result.events) == outcome(single.events)
    assert any(IntentEvent.PATTERN_DETECTED in item.result.pattern.events for item in batch.items)


def test_bad_items_fail_alone_with_their_own_errors(
    clean: redis.Redis, context_service: ReferenceControl, prediction_service: ReferenceControl
) -> None:
    tag = uuid.uuid4().hex[:8]
    good = requests_for(tag, 3)
    inline = {
        "request_id": f"b-{tag}-data",
        "client_id": "web",
        "pattern_id": "checkout",
        "data": {"cart": ["sku-1"], "visits": 2},
    }
    requests: list[Any] = [
        good[0],
        {"request_id": f"b-{tag}-x", "client_id": "web", "pattern_id": "p", "context_id": "../x"},
        good[1],
        {
            "request_id": f"b-{tag}-missing",
            "client_id": "web",
            "pattern_id": "checkout",
            "context_id": "missing-1",
        },
        "not a request",
        {"client_id": "web", "context_id": "ctx-1"},  # no pattern_id
        {**good[2], "signals": {"k": [1]}},
        good[2],
        {**good[0], "context_id": "ctx-other"},  # request_id of item 0 again
        inline,
    ]
    batch = run_batch(requests)

    statuses = {item.index: item.status for item in batch.items}
    assert statuses == {
        0: "completed",
        1: "failed",
        2: "completed",
        3: "failed",
        4: "failed",
        5: "failed",
        6: "failed",
        7: "completed",
        8: "failed",
        9: "completed",
    }
    errors = {item.index: item.error for item in batch.items if item.error is not None}
    assert all(e.type == "ValidationError" for i, e in errors.items() if i != 3)
    assert {i: e.field for i, e in errors.items() if i != 3} == {
        1: "context_id",
        4: "request",
        5: "pattern_id",
        6: "signals.k",
        8: "request_id",
    }
    missing = errors[3]
    assert (missing.type, missing.status, missing.service) == (
        "ServiceRequestError",
        404,
        "context-service",
    )
    assert "context not found" in missing.message
    assert batch.items[1].request_id == f"b-{tag}-x" and batch.items[4].request_id is None
    assert batch.items[9].result is not None and batch.items[9].result.context is not None
    # The bad items reached no service; the missing context was asked for once.
    published = {event.request_id for event in stream_events(clean)}
    assert published == {
        good[0]["request_id"],
        good[1]["request_id"],
        good[2]["request_id"],
        inline["request_id"],
    }
    bulk = [r for r in api_calls(context_service) if r["path"].endswith("/batch")]
    assert len(bulk) == 1
    assert len(api_calls(prediction_service)) == 1


def test_each_step_makes_one_bulk_call(
    clean: redis.Redis, context_service: ReferenceControl, prediction_service: ReferenceControl
) -> None:
    batch = run_batch(requests_for(uuid.uuid4().hex[:8], 40))

    assert len(batch.by_status("completed")) == 40
    assert [(r["method"], r["path"], r["status"]) for r in api_calls(context_service)] == [
        ("POST", "/api/v1/context/batch", 200)
    ]
    assert [(r["method"], r["path"], r["status"]) for r in api_calls(prediction_service)] == [
        ("POST", "/api/v1/predict/batch", 200)
    ]


def test_only_the_batch_result_is_stored(clean: redis.Redis) -> None:
    """Each batch step's output travels in the next step's message: no copy is kept."""
    analysis = submit_batch(requests_for(uuid.uuid4().hex[:8], 3))
    analysis.get(timeout=TIMEOUT)

    assert clean.exists(app.backend.get_key_for_task(analysis.id)) == 1
    for step in ("fetch_context", "predict", "detect_pattern"):
        assert clean.exists(app.backend.get_key_for_task(f"{analysis.id}.batch_{step}")) == 0


@pytest.mark.usefixtures("bulk_off")
def test_without_bulk_routes_the_client_falls_back_to_single_calls(
    clean: redis.Redis, context_service: ReferenceControl, prediction_service: ReferenceControl
) -> None:
    tag = uuid.uuid4().hex[:8]
    requests = requests_for(tag, 6)
    requests[4]["context_id"] = "missing-2"
    first = run_batch(requests)
    second = run_batch(requests_for(tag + "b", 3))

    assert [item.status for item in first.items] == ["completed"] * 4 + ["failed", "completed"]
    assert first.items[4].error is not None and first.items[4].error.status == 404
    assert second.status == "completed" and len(second.by_status("completed")) == 3
    contexts = [(r["path"], r["status"]) for r in api_calls(context_service)]
    # One refused bulk attempt, remembered: then single calls (six distinct context ids in
    # the first batch, three in the second).
    assert contexts[0] == ("/api/v1/context/batch", 404)
    assert [path for path, _ in contexts[1:]] == [
        *(f"/api/v1/context/ctx-batch-{tag}-{i}" for i in (0, 1, 2, 3)),
        "/api/v1/context/missing-2",
        f"/api/v1/context/ctx-batch-{tag}-5",
        *(f"/api/v1/context/ctx-batch-{tag}b-{i}" for i in range(3)),
    ]
    predictions = [(r["path"], r["status"]) for r in api_calls(prediction_service)]
    assert predictions == [("/api/v1/predict/batch", 404)] + [("/api/v1/predict", 200)] * 8


def test_an_oversized_batch_is_refused_naming_requests(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    requests = requests_for(uuid.uuid4().hex[:8], 101)
    with pytest.raises(ValidationError) as info:
        submit_batch(requests)
    assert info.value.field == "requests"
    assert "at most 100" in info.value.message

    by_name = app.send_task("intent.analyze_batch", args=[requests])
    with pytest.raises(ValidationError) as info:
        by_name.get(timeout=TIMEOUT)
    assert info.value.field == "requests"
    assert by_name.state == "FAILURE"
    for empty in ([], "not a list"):
        with pytest.raises(ValidationError) as info:
            submit_batch(empty)
        assert info.value.field == "requests"
    assert api_calls(context_service) == []
    assert stream_events(clean) == []


def test_analyze_batch_by_task_name(clean: redis.Redis) -> None:
    requests = requests_for(uuid.uuid4().hex[:8], 5)
    result = app.send_task("intent.analyze_batch", args=[requests]).get(timeout=TIMEOUT)

    assert result["status"] == "completed"
    assert [item["status"] for item in result["items"]] == ["completed"] * 5
    assert [item["request_id"] for item in result["items"]] == [r["request_id"] for r in requests]
    # Every request refused: the batch answers at once, nothing enqueued after it.
    refused = app.send_task("intent.analyze_batch", args=[[{"client_id": "web"}] * 2])
    assert [item["status"] for item in refused.get(timeout=TIMEOUT)["items"]] == ["failed"] * 2


def test_events_are_published_once_per_item(clean: redis.Redis) -> None:
    requests = requests_for(uuid.uuid4().hex[:8], 12)
    first = run_batch(requests)
    again = run_batch(requests)  # resubmitted: same decisions, nothing published twice

    published = stream_events(clean)
    assert len(published) == len({event.id for event in published})
    for item, repeat in zip(first.items, again.items, strict=True):
        assert item.result is not None and repeat.result is not None
        mine = [event for event in published if event.request_id == item.request_id]
        assert [event.id for event in mine] == [event.id for event in item.result.events]
        assert item.result.published == len(item.result.events) > 0
        assert repeat.result.events == item.result.events
        assert repeat.result.published == 0


def test_a_transient_bulk_failure_retries_the_step(
    clean: redis.Redis, context_service: ReferenceControl, prediction_service: ReferenceControl
) -> None:
    context_service.set_faults(status=503, count=1)
    prediction_service.set_faults(status=502, count=2)
    batch = run_batch(requests_for(uuid.uuid4().hex[:8], 8))

    assert batch.status == "completed" and len(batch.by_status("completed")) == 8
    assert batch.retries == {"fetch_context": 1, "predict": 2}
    assert [r["status"] for r in api_calls(context_service)] == [503, 200]
    assert [r["status"] for r in api_calls(prediction_service)] == [502, 502, 200]


def test_spent_retries_fail_the_pending_items_not_the_batch(
    clean: redis.Redis, prediction_service: ReferenceControl
) -> None:
    prediction_service.set_faults(status=503)
    batch = run_batch([*requests_for(uuid.uuid4().hex[:8], 4), "bad"])

    assert batch.status == "completed"
    failed = batch.by_status("failed")
    assert len(failed) == 5
    exhausted = [item.error for item in failed[:4]]
    assert all(e is not None and e.type == "RetriesExhaustedError" for e in exhausted)
    assert batch.retries == {"predict": get_settings().retry_max}
    assert len(api_calls(prediction_service)) == 1 + get_settings().retry_max


def test_a_stale_context_serves_the_items_that_have_one(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    tag = uuid.uuid4().hex[:8]
    requests = requests_for(tag, 3)
    cached = Context.model_validate(context_for(f"ctx-batch-{tag}-0", 1))
    get_runtime().context_cache.put(cached, now=time.time() - 3600)  # an hour old: stale
    context_service.set_faults(status=503)
    batch = run_batch(requests)

    served, missing = batch.items[0], batch.items[1:]
    assert served.status == "completed" and served.result is not None
    assert served.result.degraded and served.result.fallbacks == ["context"]
    assert served.result.context == cached
    for item in missing:
        assert item.status == "failed" and item.error is not None
        assert (item.error.type, item.error.service) == ("RetriesExhaustedError", "context-service")
    assert batch.retries == {"fetch_context": get_settings().retry_max}


def test_a_fresh_cached_context_is_not_degraded_when_the_bulk_call_fails(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    tag = uuid.uuid4().hex[:8]
    requests = requests_for(tag, 2)  # contexts ctx-batch-{tag}-0 and -1
    fresh = Context.model_validate(context_for(f"ctx-batch-{tag}-0", 1))
    get_runtime().context_cache.put(fresh)  # fresh: served without a call
    context_service.set_faults(status=503)  # the bulk call for the other never succeeds
    batch = run_batch(requests)

    served, missing = batch.items
    assert served.status == "completed" and served.result is not None
    assert not served.result.degraded and served.result.fallbacks == []
    assert served.result.context == fresh
    assert missing.status == "failed" and missing.error is not None
    assert missing.error.type == "RetriesExhaustedError"


def test_an_item_past_its_deadline_expires_without_a_call(
    clean: redis.Redis, context_service: ReferenceControl
) -> None:
    tag = uuid.uuid4().hex[:8]
    requests = requests_for(tag, 3)
    requests[1]["deadline"] = time.time() - 1
    batch = run_batch(requests)

    assert [item.status for item in batch.items] == ["completed", "expired", "completed"]
    expired = batch.items[1].result
    assert expired is not None and expired.expired_at == "fetch_context"
    assert expired.context is None
    assert f"ctx-batch-{tag}-1" not in str(api_calls(context_service))


# -- the clients on their own ---------------------------------------------------------


def test_clients_map_bulk_answers_and_remember_a_missing_route(
    reference: ReferenceServices,
    context_service: ReferenceControl,
    prediction_service: ReferenceControl,
    bulk_off: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    contexts = ContextServiceClient(reference.context_url)
    predictions = PredictionServiceClient(reference.prediction_url)
    ids = ["c-1", "missing-3", "c-2"]
    singles = [contexts.get_contexts(ids), contexts.get_contexts(ids[:1])]
    context_service.set_bulk(True)
    prediction_service.set_bulk(True)
    bulk = ContextServiceClient(reference.context_url).get_contexts(ids)

    for answers in (singles[0], bulk):
        assert answers[0] == contexts.get_context("c-1")
        assert answers[2] == contexts.get_context("c-2")
        assert isinstance(answers[1], ServiceRequestError) and answers[1].status == 404
    assert singles[1] == singles[0][:1]
    # The client that met the missing route asks single routes from then on, and says so once.
    paths = [r["path"] for r in api_calls(context_service)]
    assert paths[:5] == [
        "/api/v1/context/batch",
        "/api/v1/context/c-1",
        "/api/v1/context/missing-3",
        "/api/v1/context/c-2",
        "/api/v1/context/c-1",
    ]
    assert sum("no bulk route" in r.getMessage() for r in caplog.records) == 1
    assert contexts.get_contexts([]) == []

    pairs = [("checkout", {"attributes": {"a": 1}}), ("bad id!", {}), ("support", {"b": 2})]
    answers = predictions.get_predictions_batch(pairs)
    assert answers[0] == predictions.get_predictions(*pairs[0])
    assert answers[2] == predictions.get_predictions(*pairs[2])
    assert isinstance(answers[1], ServiceRequestError) and answers[1].status == 422
    assert "pattern_id" in answers[1].detail


def test_batch_item_errors_survive_json(clean: redis.Redis) -> None:
    item = BatchItem(index=0, request_id="r").fail(ServiceRequestError("svc", 404, "gone"))
    again = BatchItem.model_validate_json(item.model_dump_json())
    assert again == item
    assert again.error is not None and (again.error.status, again.error.service) == (404, "svc")


def test_a_batch_result_whose_message_never_came_is_read_all_the_same(
    clean: redis.Redis,
) -> None:
    """As ``Analysis.get()``: Celery's subscription can miss a result's message (celery
    #4039); the batch's ``get()`` reads the stored result between slices of its wait."""
    from tasks.submit import AnalysisTimeout, BatchAsyncResult

    done = submit_batch(requests_for(uuid.uuid4().hex[:8], 2))
    expected = done.get(timeout=TIMEOUT)
    waiting = BatchAsyncResult(f"missed-batch-{uuid.uuid4().hex[:8]}", app=app)
    try:
        with stored_without_its_message(done.id, waiting.id):
            assert waiting.get(timeout=15) == expected
    finally:
        app.backend.remove_pending_result(waiting)
    nobody = BatchAsyncResult(f"nobody-{uuid.uuid4().hex[:8]}", app=app)
    with pytest.raises(AnalysisTimeout, match=f"batch {nobody.id}"):
        nobody.get(timeout=1.5)
    app.backend.remove_pending_result(nobody)
