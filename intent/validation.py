"""Turning untrusted payloads into models, with errors that name the offending field."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import pydantic

from intent import codec
from intent.errors import ValidationError
from intent.models import IntentRequest, IntentResult
from intent.settings import Settings

M = TypeVar("M", bound=pydantic.BaseModel)


# pydantic appends the member type to the location of a union's error ("signals.k.str").
_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def _field_name(loc: tuple[int | str, ...]) -> str:
    if len(loc) > 1 and loc[-1] in _UNION_TAGS:
        loc = loc[:-1]
    return ".".join(str(part) for part in loc) or "request"


def _describe(err: Any) -> dict[str, str]:
    field, message = _field_name(err["loc"]), str(err["msg"])
    # Model-level rules name their field as "field: message" (see IntentRequest).
    named = re.match(r"^Value error, ([a-z_]+): (.*)$", message)
    if field == "request" and named:
        field, message = named.group(1), named.group(2)
    return {"field": field, "message": message}


def request_limits(settings: Settings) -> codec.Limits:
    """What one request may hold (``INTENT_MAX_PAYLOAD_BYTES``, ``INTENT_MAX_JSON_DEPTH``)."""
    return codec.Limits(
        max_bytes=settings.max_payload_bytes,
        max_depth=settings.max_json_depth,
        max_string=settings.max_payload_bytes,
    )


def parse_model(model: type[M], payload: Any, *, what: str, limits: codec.Limits) -> M:
    """Validate ``payload`` (a dict, or a JSON text of one) as ``model``: the strict codec
    first (size, depth, Unicode, finite numbers, no type markers: intent.codec), then the
    model's own rules."""
    max_bytes = limits.max_bytes
    if isinstance(payload, str | bytes | bytearray):
        payload = codec.loads(payload, limits, what)
        if not isinstance(payload, dict):
            raise ValidationError(what, f"must be a JSON object, not {type(payload).__name__}")
    elif not isinstance(payload, dict):
        raise ValidationError(what, f"must be a JSON object, not {type(payload).__name__}")
    else:
        codec.check(payload, limits, what)
        try:
            size = len(json.dumps(payload, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise ValidationError(what, f"is not JSON-serialisable ({exc})") from None
        if size > max_bytes:
            raise ValidationError(what, f"is {size} bytes, larger than the {max_bytes} byte cap")
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as exc:
        errors = [_describe(err) for err in exc.errors(include_url=False)]
        first = errors[0]
        message = first["message"]
        if len(errors) > 1:
            others = ", ".join(e["field"] for e in errors[1:])
            message += f" (also invalid: {others})"
        raise ValidationError(first["field"], message, errors) from None


def parse_request(payload: Any, settings: Settings) -> IntentRequest:
    return parse_model(IntentRequest, payload, what="request", limits=request_limits(settings))


def parse_result(payload: Any, settings: Settings) -> IntentResult:
    # A step's input also carries the context and predictions: allow it more room, and the
    # levels the analysis wraps its request in.
    limits = request_limits(settings).nested(4, 8)
    return parse_model(IntentResult, payload, what="analysis", limits=limits)
