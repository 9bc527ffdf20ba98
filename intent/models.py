"""The shapes that cross a task boundary, as pydantic models (JSON in, JSON out)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from intent.errors import ServiceRequestError, ValidationError

SCHEMA_VERSION = 1

# The names the pipeline is built of (task names, breaker and metric labels, lanes).
CONTEXT_SERVICE = "context-service"
PREDICTION_SERVICE = "prediction-service"
SERVICES = (CONTEXT_SERVICE, PREDICTION_SERVICE)
STEP_NAMES = ("fetch_context", "predict", "detect_pattern", "emit_events")
# How an analysis ends: its result's status, or an error (failed at a step, rejected at
# intake: invalid, or over its client's limit).
OUTCOMES = ("completed", "expired", "failed", "rejected")
FALLBACK_NAMES = ("context", "predictions")
# What a resilience drill injects into a call (intent/drills.py): an HTTP error status, a
# timeout, or latency alone.
DrillKind = Literal["status", "timeout", "latency"]
DRILL_KINDS: tuple[DrillKind, ...] = get_args(DrillKind)

# Identifiers end up in Redis keys, URLs and logs: a safe alphabet, bounded length.
Identifier = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
]
# Strict: a number is a number and a flag a flag, never a string coerced; finite only.
SignalValue = (
    Annotated[str, Field(strict=True)]
    | Annotated[bool, Field(strict=True)]
    | Annotated[int, Field(strict=True)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | None
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntentRequest(_Model):
    """One analysis to run: what a web application submits."""

    # The schema says what _one_context_source checks: exactly one context source.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "oneOf": [
                {"required": ["context_id"], "properties": {"context_id": {"type": "string"}}},
                {
                    "required": ["data"],
                    "properties": {"data": {"type": "object", "minProperties": 1}},
                },
            ]
        },
    )

    request_id: Identifier = Field(default_factory=lambda: uuid.uuid4().hex)
    client_id: Identifier
    context_id: Identifier | None = None
    data: dict[str, Any] | None = None
    pattern_id: Identifier
    # Epoch seconds after which the analysis stops with status "expired" (submit() sets
    # now + INTENT_ANALYSIS_DEADLINE when absent).
    deadline: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)] | None = None
    signals: (
        Annotated[
            dict[Annotated[str, StringConstraints(max_length=64)], SignalValue],
            Field(max_length=64),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_context_source(self) -> IntentRequest:
        if (self.context_id is None) == (self.data is None):
            raise ValueError("context_id: give exactly one of context_id or data")
        if self.data is not None and not self.data:
            raise ValueError("data: must not be empty")
        return self


class Context(_Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    context_id: str
    version: int | str
    attributes: dict[str, Any]
    updated_at: str

    def content_hash(self) -> str:
        """A stable digest of the context's content (not its timestamps)."""
        import hashlib

        canonical = json.dumps(self.attributes, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Prediction(_Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    label: str
    confidence: Annotated[float, Field(ge=0, le=1)]


class PredictionSet(_Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    pattern_id: str
    predictions: list[Prediction]
    model_version: str

    def top(self) -> Prediction | None:
        return max(self.predictions, key=lambda p: p.confidence, default=None)


class ErrorInfo(_Model):
    """An error as JSON, for clients without this project's code: its type and message,
    and the fields it carries (a failed batch item's ``error``, a failed analysis's stored
    result, ``intent submit``'s answer)."""

    type: str
    message: str
    field: str | None = None  # ValidationError: the offending field
    service: str | None = None  # a service's errors and the breaker's
    status: int | None = None  # ServiceRequestError: the HTTP status
    retry_after: float | None = None  # RateLimitExceeded, ServiceUnavailableError
    until: float | None = None  # CircuitOpenError: when the breaker admits a trial

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        service = getattr(exc, "service", None)
        retry_after = getattr(exc, "retry_after", None)
        return cls(
            type=type(exc).__name__,
            message=str(exc),
            field=exc.field if isinstance(exc, ValidationError) else None,
            service=service if isinstance(service, str) else None,
            status=exc.status if isinstance(exc, ServiceRequestError) else None,
            retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
            until=_number(getattr(exc, "until", None)),
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class IntentEvent(StrEnum):
    PATTERN_DETECTED = "pattern_detected"
    PATTERN_UPDATED = "pattern_updated"
    CONTEXT_CHANGED = "context_changed"
    PREDICTION_RECEIVED = "prediction_received"


class PatternResult(_Model):
    """What detection decided for one analysis, and the events that follow from it."""

    label: str | None
    confidence: float | None
    previous_label: str | None = None
    previous_confidence: float | None = None
    context_hash: str
    events: list[IntentEvent]
    decided_at: str


class Event(_Model):
    """An event on the bus: the guide's schema plus ``request_id`` and a schema version."""

    id: str
    type: IntentEvent
    pattern_id: str
    data: dict[str, Any]
    timestamp: str
    source: str = "intent_service"
    request_id: str
    schema_version: int = SCHEMA_VERSION


Self_ = TypeVar("Self_", bound="_Waits")


class _Waits:
    """What a step spends, kept in the analysis (or batch) itself: transient-error retries
    per step, deferrals per step, the seconds waited for breakers and limits in all, and
    since when it waits now. The recovery decision (intent.pipeline.recovery) reads them;
    Celery's own retry counter is never used."""

    if TYPE_CHECKING:  # the models below declare them as fields, in their own order
        retries: dict[str, int]
        deferrals: dict[str, int]
        deferred_seconds: float
        waiting_since: float | None

        def model_copy(
            self: Self_, *, update: dict[str, Any] | None = None, deep: bool = False
        ) -> Self_: ...

    def with_retries(self: Self_, step: str, count: int, due: float | None = None) -> Self_:
        """``count`` retries of ``step``; the next one due at ``due``: held past it (for an
        open breaker), the step counts the extra time as waited."""
        if not count:
            return self
        update: dict[str, Any] = {"retries": {**self.retries, step: count}}
        if due is not None:
            update["waiting_since"] = due
        return self.model_copy(update=update)

    def with_deferral(self: Self_, step: str, now: float) -> Self_:
        """One more deferral of ``step``, waiting from ``now``."""
        deferrals = {**self.deferrals, step: self.deferrals.get(step, 0) + 1}
        return self.model_copy(update={"deferrals": deferrals, "waiting_since": now})

    def resumed(self: Self_, now: float) -> Self_:
        """Running again at ``now``: the time waited since a deferral counts, as waited."""
        if self.waiting_since is None:
            return self
        waited = max(0.0, now - self.waiting_since)
        return self.model_copy(
            update={"deferred_seconds": self.deferred_seconds + waited, "waiting_since": None}
        )


AnalysisStatus = Literal["running", "completed", "expired", "duplicate"]


class IntentResult(_Model, _Waits):
    """The analysis as it moves down the chain; each step fills in its part."""

    # First, so a shortened repr (logs, Flower) still tells what happened.
    # "duplicate": nothing ran, the request_id's analysis is duplicate_of.
    status: AnalysisStatus = "running"
    # A request_id already claimed: the analysis that has it (its result is found under
    # the request_id, however it was submitted). Nothing ran for this one.
    duplicate_of: str | None = None
    request: IntentRequest
    context: Context | None = None
    predictions: PredictionSet | None = None
    pattern: PatternResult | None = None
    events: list[Event] = Field(default_factory=list)
    published: int = 0  # events this analysis added to the stream (0 on a replay)
    retries: dict[str, int] = Field(default_factory=dict)  # transient-error retries per step
    # Re-schedules that waited for an open breaker (or a rate limit): per step, and the
    # total seconds waited (while waiting: since when). They are not retries, spend none.
    deferrals: dict[str, int] = Field(default_factory=dict)
    deferred_seconds: float = 0.0
    waiting_since: float | None = None
    degraded: bool = False
    degraded_reasons: list[str] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)  # "context", "predictions"
    # Epoch seconds the analysis was submitted (its chain built): the start of its duration.
    submitted_at: float | None = None
    expired_at: str | None = None  # the step that found the deadline passed

    def degrade(self, fallback: str, reason: str, **update: object) -> IntentResult:
        """This result, with ``fallback`` used instead of a live answer because of ``reason``."""
        return self.model_copy(
            update={
                **update,
                "degraded": True,
                "degraded_reasons": [*self.degraded_reasons, f"{fallback}: {reason}"],
                "fallbacks": [*self.fallbacks, fallback],
            }
        )


# -- batches -----------------------------------------------------------------------------

ItemStatus = Literal["running", "completed", "failed", "expired"]


class BatchItem(_Model):
    """One request of a batch. ``result`` is None only for a request that failed
    validation; a failed item keeps whatever its result had reached."""

    index: int
    request_id: str | None
    status: ItemStatus = "running"
    result: IntentResult | None = None
    error: ErrorInfo | None = None

    def advance(self, result: IntentResult) -> BatchItem:
        """This item with its result moved on (completed or expired, as the result says)."""
        status: ItemStatus = "running"
        if result.status == "completed":
            status = "completed"
        elif result.status == "expired":
            status = "expired"
        return self.model_copy(update={"result": result, "status": status})

    def fail(self, exc: BaseException) -> BatchItem:
        return self.model_copy(update={"status": "failed", "error": ErrorInfo.from_exception(exc)})


class BatchResult(_Model, _Waits):
    """A batch as it moves down the chain; ``status`` is ``completed`` once no item runs."""

    batch_id: str
    items: list[BatchItem]
    status: Literal["running", "completed"] = "running"
    retries: dict[str, int] = Field(default_factory=dict)  # of the batch's own calls, per step
    deferrals: dict[str, int] = Field(default_factory=dict)  # waits for a breaker or a limit
    deferred_seconds: float = 0.0
    waiting_since: float | None = None

    def by_status(self, status: ItemStatus) -> list[BatchItem]:
        return [item for item in self.items if item.status == status]

    def with_items(self, changes: dict[int, BatchItem]) -> BatchResult:
        """This batch with the items at the given indexes replaced."""
        items = [changes.get(item.index, item) for item in self.items]
        running = any(item.status == "running" for item in items)
        return self.model_copy(
            update={"items": items, "status": "running" if running else "completed"}
        )


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
