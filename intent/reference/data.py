"""Deterministic answers of the reference services: contexts and predictions as pure
functions of their inputs (sha256-derived, no I/O, no clock, no global RNG)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

MODEL_VERSION = "ref-1.0.0"
LABELS = ("purchase", "browse", "churn", "support", "upgrade", "compare")
SEGMENTS = ("new", "returning", "loyal", "at_risk", "vip")
REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south")
PAGES = ("/", "/products", "/product/detail", "/cart", "/checkout", "/pricing", "/support")

# A fixed epoch, so timestamps are reproducible; each revision moves it an hour on.
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
# The top confidence is spread over [_LOW, _HIGH); a third of the hash space lands below
# the detection threshold (0.6), two thirds at or above it.
_LOW, _THRESHOLD, _HIGH = 0.3, 0.6, 0.95


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: equal data always hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _unit(digest: bytes, offset: int) -> float:
    """A float in [0, 1) from 4 bytes of ``digest`` starting at ``offset``."""
    return int.from_bytes(digest[offset : offset + 4], "big") / 2**32


def _pick(options: tuple[str, ...], digest: bytes, offset: int) -> str:
    return options[digest[offset] % len(options)]


def _timestamp(hours: int) -> str:
    return (_EPOCH + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def context_for(context_id: str, revision: int) -> dict[str, Any]:
    """The context ``context_id`` at ``revision`` (a new revision: new attributes)."""
    digest = _digest(f"{context_id}:{revision}")
    attributes = {
        "segment": _pick(SEGMENTS, digest, 0),
        "sessions": 1 + int.from_bytes(digest[1:3], "big") % 50,
        "cart_value": round(_unit(digest, 3) * 500, 2),
        "region": _pick(REGIONS, digest, 7),
        "last_page": _pick(PAGES, digest, 8),
    }
    return {
        "context_id": context_id,
        "version": revision,
        "attributes": attributes,
        "updated_at": _timestamp(revision),
    }


def context_from_data(data: dict[str, Any]) -> dict[str, Any]:
    """The context the service derives from inline ``data`` (same data, same context)."""
    text = canonical_json(data)
    digest = _digest(text)
    return {
        "context_id": "ctx-" + digest.hex()[:16],
        "version": 1,
        "attributes": {
            "input": data,
            "fields": sorted(data),
            "segment": _pick(SEGMENTS, digest, 0),
        },
        "updated_at": _timestamp(0),
    }


def _top_confidence(u: float) -> float:
    # Piecewise linear and monotonic: u < 1/3 -> [0.3, 0.6), u >= 1/3 -> [0.6, 0.95).
    if u < 1 / 3:
        return _LOW + u * 3 * (_THRESHOLD - _LOW)
    return _THRESHOLD + (u - 1 / 3) * 1.5 * (_HIGH - _THRESHOLD)


def predictions_for(pattern_id: str, context: dict[str, Any]) -> dict[str, Any]:
    """Predictions for ``pattern_id`` given a context (its ``attributes`` when present)."""
    attributes = context.get("attributes", context)
    digest = _digest(pattern_id + canonical_json(attributes))
    count = 3 + digest[4] % 3
    # Order the labels by hash-derived keys: a deterministic shuffle.
    order = sorted(LABELS, key=lambda label: _digest(label + digest.hex()))
    top = _top_confidence(_unit(digest, 0))
    # The rest share what the top leaves of 1.0, each kept below the top.
    weights = [0.2 + _unit(digest, 8 + 4 * i) for i in range(count - 1)]
    total = sum(weights)
    rest = [min((1 - top) * w / total, top * 0.9) for w in weights]
    confidences = sorted([top, *rest], reverse=True)
    return {
        "pattern_id": pattern_id,
        "predictions": [
            {"label": label, "confidence": round(confidence, 3)}
            for label, confidence in zip(order, confidences, strict=False)
        ],
        "model_version": MODEL_VERSION,
    }
