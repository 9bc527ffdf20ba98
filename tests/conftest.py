"""Test session set-up: a private Redis for the whole run, named in the environment before
any test module imports the Celery app.

``INTENT_TEST_REDIS_URL`` points the tests at a given server instead (they write into it
and delete their own keys). Otherwise an embedded Valkey is started on a free port and
stopped at the end, so a Redis that belongs to someone else is never touched.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import redis

from intent.embedded import EmbeddedRedis
from intent.settings import get_settings

_embedded: EmbeddedRedis | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _embedded
    url = os.environ.get("INTENT_TEST_REDIS_URL")
    if not url:
        # Append-only, as production runs: a test may restart it and find its data again.
        _embedded = EmbeddedRedis(appendonly=True).start()
        url = _embedded.url
    os.environ["INTENT_REDIS_URL"] = url
    # Messages a test's worker takes as its broker goes away are kept here, not in /tmp's.
    os.environ["INTENT_RESCUE_DIR"] = tempfile.mkdtemp(prefix="intent-test-rescued-")
    for name in ("INTENT_BROKER_URL", "INTENT_RESULT_BACKEND_URL"):
        os.environ.pop(name, None)
    get_settings.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Let Celery's finished AsyncResults unsubscribe while their Redis is still there.
    gc.collect()
    if _embedded is not None:
        _embedded.close()
    shutil.rmtree(os.environ.get("INTENT_RESCUE_DIR", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["INTENT_REDIS_URL"]


@pytest.fixture
def embedded_only() -> None:
    """Skip a test that stops or restarts the server unless the tests started it."""
    if _embedded is None:
        pytest.skip("needs the embedded Redis (INTENT_TEST_REDIS_URL is set)")


@pytest.fixture
def session_redis(embedded_only: None) -> EmbeddedRedis:
    """The tests' own server (append-only), for a test that restarts it; running again
    afterwards whatever the test did."""
    assert _embedded is not None
    yield _embedded
    if not _embedded.running:
        _embedded.start()


def delete_service_keys(client: redis.Redis) -> None:
    prefix = get_settings().key_prefix
    for pattern in (f"{prefix}*", f"{{{prefix}*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        if batch:
            client.delete(*batch)


@pytest.fixture
def results_redis() -> Iterator[redis.Redis]:
    """A client on the Redis of the Celery results (``INTENT_REDIS_URL``): the test Redis,
    also where a module keeps the state elsewhere (on a Redis Cluster)."""
    client = redis.Redis.from_url(os.environ["INTENT_REDIS_URL"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test Redis, with the service's keys removed before and after."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    delete_service_keys(client)
    yield client
    delete_service_keys(client)
    client.close()
