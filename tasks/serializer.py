"""``application/json`` in this process: the strict codec (:mod:`intent.codec`) in place of
kombu's JSON, whose decoder revives ``{"__type__": ..., "__value__": ...}`` objects into
bytes, Decimal, UUID or datetime and reads documents of any depth and size.

Every message and result this process decodes goes through it. A worker checks each task
message before Celery sees it (tasks/consumer.py), so a refusal here is only met by a
client reading a result it cannot trust.
"""

from __future__ import annotations

from typing import Any

from kombu.serialization import register

from intent import codec
from intent.messages import message_limits


def install() -> None:
    limits: list[codec.Limits] = []

    def decode(data: Any) -> Any:
        if not limits:  # settings are read on first use, not at import
            limits.append(message_limits())
        return codec.loads(data, limits[0], "body")

    register("json", codec.dumps, decode, content_type="application/json", content_encoding="utf-8")
