"""A request refused after its request_id was claimed gives the claim back (its own
module: the worker here is the only one on the queue)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from intent.dev.stack import WorkerProcess, running_worker
from intent.errors import ValidationError
from intent.reference import ReferenceServices
from tasks import submit
from tests.helpers import request, wait_until
from tests.integration.conftest import FAST_RETRY_ENV

pytestmark = pytest.mark.integration


@pytest.fixture
def strict_worker(reference: ReferenceServices) -> Iterator[WorkerProcess]:
    """A worker whose limits are tighter than its clients' (a web app a version behind)."""
    with running_worker(concurrency=1, env={**FAST_RETRY_ENV, "INTENT_MAX_JSON_DEPTH": "8"}) as w:
        yield w


def test_a_request_refused_after_its_claim_gives_the_claim_back(
    strict_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    """submit() (limits of 32 levels) claims the request_id and enqueues; the worker (8
    levels) refuses the first step. The caller gets the refusal, and the corrected request
    under the same request_id runs instead of answering duplicate."""
    rid = f"late-{uuid.uuid4().hex[:8]}"
    deep: Any = "leaf"
    for _ in range(10):
        deep = {"d": deep}
    first = submit({**request(request_id=rid), "context_id": None, "data": deep})
    with pytest.raises(ValidationError) as info:
        first.get(timeout=15)
    assert "nested deeper" in info.value.message
    wait_until(
        lambda: (redis_client.get(f"intent:request:{rid}") or "").startswith("given-back:"),
        5,
        "the claim given back",
    )
    corrected = submit({**request(request_id=rid), "context_id": None, "data": {"d": "leaf"}})
    assert not corrected.duplicate
    assert corrected.get(timeout=30).status == "completed"
