"""The context cache in Redis: fresh hits skip the Context Service, stale entries serve as
its fallback. Invalidated by API (``invalidate``) and by ``context_changed`` events.
A Redis that cannot be reached is ``ServiceUnavailableError("redis")``, as everywhere."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import cast

import redis

from intent.connections import redis_errors
from intent.keys import Keys
from intent.models import Context


@dataclass(frozen=True)
class CachedContext:
    context: Context
    age: float  # seconds since it was fetched
    fresh: bool


class ContextCache:
    def __init__(self, client: redis.Redis, keys: Keys, ttl: int, stale_ttl: int):
        self.client = client
        self.keys = keys
        self.ttl = ttl
        self.stale_ttl = max(stale_ttl, ttl)

    @redis_errors("reading the context cache")
    def get(self, context_id: str, now: float | None = None) -> CachedContext | None:
        raw = cast("bytes | None", self.client.get(self.keys.context_cache(context_id)))
        if raw is None:
            return None
        entry = json.loads(raw)
        age = max(0.0, (now if now is not None else time.time()) - float(entry["stored_at"]))
        return CachedContext(Context.model_validate(entry["context"]), age, age < self.ttl)

    @redis_errors("writing the context cache")
    def put(self, context: Context, now: float | None = None) -> None:
        entry = {
            "context": context.model_dump(mode="json"),
            "stored_at": now if now is not None else time.time(),
        }
        self.client.set(
            self.keys.context_cache(context.context_id), json.dumps(entry), ex=self.stale_ttl
        )

    @redis_errors("invalidating a cached context")
    def invalidate(self, context_id: str) -> bool:
        """Forget a context (fresh and stale); True if there was one."""
        return bool(self.client.delete(self.keys.context_cache(context_id)))
