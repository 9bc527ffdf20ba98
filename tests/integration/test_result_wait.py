"""``Analysis.get()`` against Celery's result subscription missing a stored result's message
(celery #4039: ``get()`` timed out with the result stored; seen in bench/pools.py about once
in 1,700 chains on a threads worker). Simulated as it looks to the waiting client: the
result is written to the backend with no message published."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import redis
from celery.result import AsyncResult

from intent.reference import ReferenceControl
from tasks import AnalysisTimeout, submit
from tasks.app import app
from tasks.submit import Analysis
from tests.helpers import request

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("inprocess_worker")]


def test_a_stored_result_whose_message_never_came_is_read_all_the_same(
    clean: redis.Redis, context_service: ReferenceControl, prediction_service: ReferenceControl
) -> None:
    payload = request()
    done = submit(payload).get(timeout=30)
    backend = app.backend
    meta = json.loads(backend.client.get(backend.get_key_for_task(payload["request_id"])))
    missed = f"missed-{uuid.uuid4().hex[:8]}"
    meta["task_id"] = missed
    waiting = Analysis(missed, AsyncResult(missed, app=app))

    def store_without_a_message() -> None:  # a SET, no PUBLISH: the subscription hears nothing
        backend.client.set(backend.get_key_for_task(missed), json.dumps(meta))

    threading.Timer(0.5, store_without_a_message).start()
    try:
        assert waiting.get(timeout=15) == done
    finally:
        backend.client.delete(backend.get_key_for_task(missed))
        waiting.forget_subscription()


def test_no_stored_result_is_still_a_timeout() -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    waiting = Analysis(nobody, AsyncResult(nobody, app=app))
    with pytest.raises(AnalysisTimeout, match=nobody):
        waiting.get(timeout=1.5)
    waiting.forget_subscription()
