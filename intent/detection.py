"""Pattern detection: a pure decision over the previous state, committed atomically in Redis.

:func:`decide` holds the rules (DESIGN.md) and needs no Redis. :class:`PatternDetector`
reads the state, decides, and commits only if nobody changed the state meanwhile
(compare-and-set on a version, in one Lua script); on a conflict it decides again
against the newer state. The decision is memoised per request, so a redelivered step
repeats its decision instead of comparing against the state it already wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from intent import scripts
from intent.connections import redis_errors
from intent.errors import DetectionConflict
from intent.keys import Keys
from intent.models import IntentEvent, PatternResult, PredictionSet, utcnow_iso

_EPSILON = 1e-9  # confidences are 3-decimal floats: 0.7 - 0.6 must count as a 0.1 move


@dataclass(frozen=True)
class PatternState:
    """What is remembered per (context, pattern) between analyses."""

    label: str | None
    confidence: float | None
    context_hash: str


@dataclass(frozen=True)
class Rules:
    threshold: float = 0.6
    update_delta: float = 0.1


def decide(
    previous: PatternState | None,
    predictions: PredictionSet,
    context_hash: str,
    live: bool,
    rules: Rules,
    decided_at: str,
) -> tuple[PatternResult, PatternState]:
    """Apply the detection rules; return the decision and the state to remember.

    The remembered confidence is the one last reported in an event, so a slow drift
    adds up to an update instead of hiding below the delta step by step. A pattern
    that falls below the threshold is forgotten: its return is a new detection.
    """
    top = predictions.top()
    detected = top if top is not None and top.confidence >= rules.threshold - _EPSILON else None
    before = previous.label if previous else None
    events: list[IntentEvent] = []
    if previous is not None and previous.context_hash and previous.context_hash != context_hash:
        events.append(IntentEvent.CONTEXT_CHANGED)
    if detected is not None and before is None:
        events.append(IntentEvent.PATTERN_DETECTED)
    elif (
        detected is not None
        and previous is not None
        and (
            detected.label != before
            or abs(detected.confidence - (previous.confidence or 0.0))
            >= rules.update_delta - _EPSILON
        )
    ):
        events.append(IntentEvent.PATTERN_UPDATED)
    if live:
        events.append(IntentEvent.PREDICTION_RECEIVED)

    reported = IntentEvent.PATTERN_DETECTED in events or IntentEvent.PATTERN_UPDATED in events
    if detected is None:
        state = PatternState(None, None, context_hash)
    elif reported:
        state = PatternState(detected.label, detected.confidence, context_hash)
    else:
        assert previous is not None
        state = PatternState(previous.label, previous.confidence, context_hash)
    result = PatternResult(
        label=detected.label if detected else None,
        confidence=detected.confidence if detected else None,
        previous_label=before,
        previous_confidence=previous.confidence if previous else None,
        context_hash=context_hash,
        events=events,
        decided_at=decided_at,
    )
    return result, state


class PatternDetector:
    """Compare-and-set detection over the Redis state of each (context, pattern)."""

    def __init__(
        self, client: redis.Redis, keys: Keys, rules: Rules, memo_ttl: int, max_attempts: int = 100
    ):
        self.client = client
        self.keys = keys
        self.rules = rules
        self.memo_ttl = memo_ttl
        self.max_attempts = max_attempts
        self._commit = scripts.register(client, "pattern_commit")

    @redis_errors("reading the last predictions")
    def last_predictions(self, context_id: str, pattern_id: str) -> PredictionSet | None:
        """The last live predictions seen for (context, pattern), if any."""
        raw = cast(
            "bytes | None",
            self.client.hget(self.keys.pattern_state(context_id, pattern_id), "predictions"),
        )
        return PredictionSet.model_validate_json(raw) if raw else None

    @redis_errors("detecting the pattern")
    def detect(
        self,
        request_id: str,
        context_id: str,
        pattern_id: str,
        predictions: PredictionSet,
        context_hash: str,
        live: bool = True,
    ) -> PatternResult:
        state_key = self.keys.pattern_state(context_id, pattern_id)
        memo_key = self.keys.pattern_decision(context_id, pattern_id, request_id)
        for _ in range(self.max_attempts):
            with self.client.pipeline(transaction=False) as pipe:
                pipe.get(memo_key)
                pipe.hgetall(state_key)
                memo, raw = pipe.execute()
            if memo is not None:
                return PatternResult.model_validate_json(memo)
            previous, version = _parse_state(raw)
            result, state = decide(
                previous, predictions, context_hash, live, self.rules, utcnow_iso()
            )
            decision = result.model_dump_json()
            fields = _state_fields(state)
            if live:  # remembered as the fallback for when the service is unavailable
                fields += ["predictions", predictions.model_dump_json()]
            outcome, payload = self._commit(
                keys=[state_key, memo_key], args=[version, decision, self.memo_ttl, *fields]
            )
            if _text(outcome) in ("ok", "memo"):
                return PatternResult.model_validate_json(payload)
        raise DetectionConflict(f"pattern state of {context_id}/{pattern_id} kept changing")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _state_fields(state: PatternState) -> list[str]:
    return [
        "label",
        json.dumps(state.label),
        "confidence",
        json.dumps(state.confidence),
        "context_hash",
        state.context_hash,
    ]


def _parse_state(raw: Mapping[Any, Any]) -> tuple[PatternState | None, int]:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return None, 0
    state = PatternState(
        label=json.loads(fields.get("label", "null")),
        confidence=json.loads(fields.get("confidence", "null")),
        context_hash=fields.get("context_hash", ""),
    )
    return state, int(fields.get("version", "0"))
