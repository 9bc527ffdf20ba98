"""Stream entries as the consumer sees them, and their parsing into :class:`Event` in bulk.

Parsing is the consumer's main cost per event, so a batch is validated in one pydantic call
and ``data`` is decoded by pydantic-core's JSON parser. Any entry that path refuses is
parsed again by :func:`intent.events.event_from_fields`, so results and errors are exactly
that function's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
import pydantic_core
from pydantic import TypeAdapter

from intent.events import event_from_fields
from intent.models import Event, IntentEvent

StreamEntry = tuple[str, dict[str, str]]

KNOWN_TYPES = frozenset(t.value for t in IntentEvent)

_EVENT_LIST: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


def entries_from_reply(reply: Any) -> list[StreamEntry]:
    """The entries of a raw XREADGROUP/XREAD reply on one stream (RESP2, decoded)."""
    if not reply:
        return []
    # zip over one iterator pairs field with value; a comprehension: this runs per entry.
    return [
        (entry_id, dict(zip(pairs, pairs, strict=False)))
        for entry_id, flat in reply[0][1]
        for pairs in (iter(flat or ()),)
    ]


def describe_error(exc: Exception) -> str:
    """A one-line reason for a malformed entry."""
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
    if isinstance(exc, json.JSONDecodeError):
        return f"data: not valid JSON ({exc})"
    return f"{type(exc).__name__}: {exc}"


def parse_entry(fields: Mapping[str, str]) -> Event | Exception:
    """One entry as an Event, or the exception :func:`event_from_fields` raises for it."""
    try:
        return event_from_fields(fields)
    except (pydantic.ValidationError, ValueError, TypeError) as exc:
        return exc


def parse_entries(fields: Sequence[Mapping[str, str]]) -> list[Event | Exception]:
    """Every entry as an Event or the reason it is malformed, in order."""
    payloads: list[dict[str, Any]] = []
    for entry in fields:
        payload = dict(entry)
        try:
            payload["data"] = pydantic_core.from_json(entry["data"]) if "data" in entry else {}
        except ValueError:
            return [parse_entry(entry) for entry in fields]
        payloads.append(payload)
    try:
        return list(_EVENT_LIST.validate_python(payloads))
    except pydantic.ValidationError:
        # Some entry is malformed: find which, with the reference parser's own errors.
        return [parse_entry(entry) for entry in fields]


def is_unknown_type(fields: Mapping[str, str]) -> bool:
    """An entry with a ``type`` this code does not know (a newer producer, another service)."""
    event_type = fields.get("type")
    return event_type is not None and event_type not in KNOWN_TYPES
