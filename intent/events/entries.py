"""Stream entries as the consumer sees them, and their parsing into :class:`Event` in bulk.

Parsing is the consumer's main cost per event, so a batch is validated in one pydantic call
and ``data`` is decoded by pydantic-core's JSON parser. Any entry that path refuses is
parsed again by :func:`event_from_fields`, so results and errors are exactly that
function's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
import pydantic_core
from pydantic import TypeAdapter

from intent import codec
from intent.errors import ValidationError
from intent.models import Event, IntentEvent

StreamEntry = tuple[str, dict[str, str]]

KNOWN_TYPES = frozenset(t.value for t in IntentEvent)

_EVENT_LIST: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


# An entry's data: what an event may carry, and no more (a consumer reads untrusted entries).
DATA_LIMITS = codec.Limits(max_bytes=1 << 20, max_depth=32, max_string=1 << 20)


def event_from_fields(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> Event:
    """Parse a stream entry back into an :class:`Event`; raises pydantic's ValidationError
    or :class:`~intent.errors.ValidationError` (not UTF-8, data too deep, not JSON...)."""
    text: dict[str, str] = {}
    for key, value in fields.items():
        name, content = _text(key, "a field name"), _text(value, f"field {key!r}")
        text[name] = content
    payload: dict[str, Any] = dict(text)
    try:
        payload["data"] = codec.loads(text.get("data", "{}"), DATA_LIMITS, "data")
    except ValidationError as exc:
        field = exc.field if exc.field == "data" else f"data.{exc.field}"
        raise ValidationError(field, exc.message) from None
    return Event.model_validate(payload)


def _text(value: str | bytes, what: str) -> str:
    """UTF-8 text: a client reading with errors="surrogateescape" hands undecodable bytes
    over as lone surrogates, refused here."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError(what, "is not UTF-8 text") from None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(what, "is not UTF-8 text") from None
    return value


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


def id_order(stream_id: str) -> tuple[int, int]:
    """A stream id (``ms-seq``, or ``ms``) as what sorts it: ids of one stream in their
    order, of several streams by the time they were added."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def describe_error(exc: Exception) -> str:
    """A one-line reason for a malformed entry."""
    if isinstance(exc, ValidationError):
        return f"{exc.field}: {exc.message}"
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
    except (pydantic.ValidationError, ValidationError, ValueError, TypeError) as exc:
        return exc


def parse_entries(fields: Sequence[Mapping[str, str]]) -> list[Event | Exception]:
    """Every entry as an Event or the reason it is malformed, in order."""
    payloads: list[dict[str, Any]] = []
    for entry in fields:
        payload = dict(entry)
        raw = entry.get("data", "{}")
        try:
            if not _plain(entry) or len(raw) > DATA_LIMITS.max_string:
                raise ValueError("needs the strict parser")
            payload["data"] = pydantic_core.from_json(raw, allow_inf_nan=False)
            if not _shallow(payload["data"]):
                raise ValueError("needs the strict parser")
        except ValueError:
            return [parse_entry(entry) for entry in fields]
        payloads.append(payload)
    try:
        return list(_EVENT_LIST.validate_python(payloads))
    except pydantic.ValidationError:
        # Some entry is malformed: find which, with the reference parser's own errors.
        return [parse_entry(entry) for entry in fields]


def _plain(entry: Mapping[str, str]) -> bool:
    """Every name and value plain ASCII, or UTF-8 (no lone surrogate from undecodable
    bytes): the fast path's precondition."""
    for key, value in entry.items():
        for text in (key, value):
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return False
    return True


def _shallow(data: Any) -> bool:
    # Depth, markers and numbers (pydantic-core reads 1e400 as inf, integers of any length).
    return codec.within_limits(data, DATA_LIMITS)


def is_unknown_type(fields: Mapping[str, str]) -> bool:
    """An entry with a ``type`` this code does not know (a newer producer, another service)."""
    event_type = fields.get("type")
    # A type that is not even UTF-8 text is a malformed entry, not a producer's new type.
    return event_type is not None and event_type not in KNOWN_TYPES and _plain(fields)
