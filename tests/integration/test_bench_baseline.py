"""The pipeline benchmark's baselines store what they claim to: Celery's chain as it
comes stores every link's result; the second baseline, like the pipeline, only the last."""

from __future__ import annotations

import pytest
import redis

import bench.noop  # noqa: F401  # the bare chain's task, registered before the worker starts
from bench.pipeline import bare_round
from tasks.app import app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("inprocess_worker")]

PAYLOAD = {"request_id": "bare", "client_id": "bench", "context_id": "c", "pattern_id": "p"}


def _stored(client: redis.Redis) -> int:
    prefix = app.backend.task_keyprefix.decode()
    return sum(1 for _ in client.scan_iter(match=f"{prefix}*"))


def test_the_bare_chain_stores_every_links_result(clean: redis.Redis) -> None:
    before = _stored(clean)
    bare_round(5, PAYLOAD)
    assert _stored(clean) - before == 4 * 5


def test_the_same_policy_baseline_stores_only_the_last_links_result(clean: redis.Redis) -> None:
    before = _stored(clean)
    bare_round(5, PAYLOAD, last_result_only=True)
    assert _stored(clean) - before == 5
