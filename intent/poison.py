"""Task messages a worker refused, kept for operators: why, and their raw bytes.

A refused message (it cannot be decoded, or its shape is wrong: see
:mod:`intent.messages`) is acked so it never comes back, and added here with the reason,
its task name and id, its headers and its body as received (both cut to a bound), the
worker that refused it and when. ``intent tasks dead`` lists them.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from intent.keys import Keys

MAX_KEPT_BYTES = 65536  # of a refused message's body, and of its headers


@dataclass(frozen=True)
class DeadTask:
    stream_id: str
    reason: str
    field: str
    task: str
    task_id: str
    content_type: str
    headers: str
    body: bytes
    worker: str
    refused_at: float


def _bounded(value: Any) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "backslashreplace")
    return raw[:MAX_KEPT_BYTES]


class DeadTasks:
    """The stream of refused task messages."""

    def __init__(self, client: redis.Redis, keys: Keys, maxlen: int):
        self.client = client
        self.key = keys.dead_tasks
        self.maxlen = maxlen

    def add(
        self,
        *,
        field: str,
        reason: str,
        task: str | None,
        task_id: str | None,
        content_type: Any,
        headers: Any,
        body: Any,
    ) -> str:
        try:
            shown_headers = json.dumps(headers, default=repr)
        except (TypeError, ValueError, RecursionError):
            shown_headers = repr(type(headers))
        fields: dict[str, Any] = {
            "reason": reason[:2000],
            "field": field[:500],
            "task": (task or "")[:500],
            "task_id": (task_id or "")[:255],
            "content_type": str(content_type)[:200],
            "headers": _bounded(shown_headers),
            "body": _bounded(body if body is not None else b""),
            "worker": socket.gethostname(),
            "refused_at": repr(time.time()),
        }
        added = self.client.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        return added.decode() if isinstance(added, bytes) else str(added)

    def list(self, count: int = 100) -> list[DeadTask]:
        """The newest ``count`` refused messages, newest first."""
        rows = cast(
            "list[tuple[Any, dict[Any, Any]]]", self.client.xrevrange(self.key, count=count)
        )
        out = []
        for stream_id, raw in rows:
            f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}

            def text(name: str, fields: dict[str, Any] = f) -> str:
                value = fields.get(name, b"")
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

            body = f.get("body", b"")
            out.append(
                DeadTask(
                    stream_id=stream_id.decode() if isinstance(stream_id, bytes) else stream_id,
                    reason=text("reason"),
                    field=text("field"),
                    task=text("task"),
                    task_id=text("task_id"),
                    content_type=text("content_type"),
                    headers=text("headers"),
                    body=body if isinstance(body, bytes) else str(body).encode(),
                    worker=text("worker"),
                    refused_at=float(text("refused_at") or 0),
                )
            )
        return out
