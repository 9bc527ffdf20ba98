"""A drill across worker processes on one Redis: processes are forked, start together behind
a barrier, each with its own per-process cache of the drill (as each pool process has), and
report through a Redis list. Counts are asserted, never speeds."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from multiprocessing.synchronize import Barrier

import pytest
import redis

from intent.drills import DrillSource, DrillStore
from intent.keys import Keys

pytestmark = pytest.mark.integration

FORK = multiprocessing.get_context("fork")
SERVICE = "prediction-service"
PROCESSES = 4
CALLS_EACH = 250
REFRESH = 0.05  # each process re-reads the drill this often (the default is 1 s)


def _calls(url: str, prefix: str, expires_at: float, barrier: Barrier) -> None:
    client = redis.Redis.from_url(url)
    source = DrillSource(DrillStore(client, Keys(prefix), 3600).get, REFRESH)
    barrier.wait()
    hits = sum(source(SERVICE) is not None for _ in range(CALLS_EACH))
    # Past the drill's expiry (and one refresh): no call meets it any more.
    time.sleep(max(0.0, expires_at - time.time()) + 2 * REFRESH)
    after = sum(source(SERVICE) is not None for _ in range(CALLS_EACH))
    client.rpush(f"{prefix}test:hits", f"{hits}:{after}")


def test_a_drill_injects_at_its_rate_across_four_processes_and_expires_everywhere(
    redis_client: redis.Redis,
) -> None:
    url = os.environ["INTENT_REDIS_URL"]
    prefix = f"drill{uuid.uuid4().hex[:6]}:"
    drill = DrillStore(redis_client, Keys(prefix), 3600).start(
        SERVICE, {"rate": 0.5, "kind": "status", "status": 503, "duration": 3}
    )
    barrier = FORK.Barrier(PROCESSES)
    workers = [
        FORK.Process(target=_calls, args=(url, prefix, drill.expires_at, barrier))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0, f"worker exited with {worker.exitcode}"

    reports = [str(r).split(":") for r in redis_client.lrange(f"{prefix}test:hits", 0, -1)]
    assert len(reports) == PROCESSES
    hits = sum(int(during) for during, _ in reports)
    # Binomial(1000, 0.5): sd 15.8; 420..580 is more than 5 sd either side.
    assert 420 <= hits <= 580, hits
    assert all(int(during) > 0 for during, _ in reports)  # every process met the drill
    assert [int(after) for _, after in reports] == [0] * PROCESSES  # and it ended for all
    assert redis_client.exists(Keys(prefix).drill(SERVICE)) == 0  # its key lapsed by itself
