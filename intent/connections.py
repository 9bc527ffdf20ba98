"""Redis as the service meets it: its errors in the project's own terms.

(The clients by purpose and the one Lua loader join this module; see issue notes.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis

from intent.errors import ServiceUnavailableError


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Inside, a Redis that cannot be reached is ``ServiceUnavailableError("redis", ...)``
    (transient: retried, never a raw redis-py error reaching a caller); ``what`` says what
    was being done."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailableError("redis", f"{what}: {type(exc).__name__}: {exc}") from exc
