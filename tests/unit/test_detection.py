"""Detection rules (DESIGN.md), as a pure function of the previous state and new input."""

from __future__ import annotations

from intent.detection import PatternState, Rules, decide
from intent.models import IntentEvent, Prediction, PredictionSet

RULES = Rules(threshold=0.6, update_delta=0.1)
E = IntentEvent


def preds(*pairs: tuple[str, float]) -> PredictionSet:
    return PredictionSet(
        pattern_id="p1",
        predictions=[Prediction(label=label, confidence=c) for label, c in pairs],
        model_version="m1",
    )


def run(previous: PatternState | None, ps: PredictionSet, h: str = "h1", live: bool = True):
    return decide(previous, ps, h, live, RULES, "2026-01-01T00:00:00Z")


def test_first_detection_above_threshold() -> None:
    result, state = run(None, preds(("buy", 0.8), ("browse", 0.1)))
    assert result.events == [E.PATTERN_DETECTED, E.PREDICTION_RECEIVED]
    assert (result.label, result.confidence) == ("buy", 0.8)
    assert state == PatternState("buy", 0.8, "h1")


def test_exactly_at_threshold_detects() -> None:
    result, _ = run(None, preds(("buy", 0.6)))
    assert E.PATTERN_DETECTED in result.events


def test_below_threshold_detects_nothing() -> None:
    result, state = run(None, preds(("buy", 0.59)))
    assert result.events == [E.PREDICTION_RECEIVED]
    assert result.label is None
    assert state == PatternState(None, None, "h1")


def test_same_label_small_move_is_no_update() -> None:
    result, state = run(PatternState("buy", 0.8, "h1"), preds(("buy", 0.85)))
    assert result.events == [E.PREDICTION_RECEIVED]
    assert state.confidence == 0.8  # the reported confidence is kept


def test_move_of_exactly_delta_is_an_update() -> None:
    result, state = run(PatternState("buy", 0.6, "h1"), preds(("buy", 0.7)))
    assert E.PATTERN_UPDATED in result.events
    assert state.confidence == 0.7


def test_slow_drift_adds_up_to_an_update() -> None:
    state = PatternState("buy", 0.7, "h1")
    seen = []
    for c in (0.74, 0.78, 0.81):
        result, state = run(state, preds(("buy", c)))
        seen.append(E.PATTERN_UPDATED in result.events)
    assert seen == [False, False, True]


def test_label_change_is_an_update() -> None:
    result, _ = run(PatternState("buy", 0.8, "h1"), preds(("churn", 0.8)))
    assert E.PATTERN_UPDATED in result.events
    assert (result.previous_label, result.label) == ("buy", "churn")


def test_context_change_needs_a_previous_hash() -> None:
    first, _ = run(None, preds(("buy", 0.3)), h="h1")
    changed, _ = run(PatternState(None, None, "h1"), preds(("buy", 0.3)), h="h2")
    assert E.CONTEXT_CHANGED not in first.events
    assert E.CONTEXT_CHANGED in changed.events


def test_lost_pattern_is_forgotten_and_its_return_is_a_new_detection() -> None:
    _, state = run(PatternState("buy", 0.8, "h1"), preds(("buy", 0.4)))
    assert state.label is None
    result, _ = run(state, preds(("buy", 0.9)))
    assert E.PATTERN_DETECTED in result.events


def test_fallback_predictions_emit_no_prediction_received() -> None:
    result, _ = run(None, preds(("buy", 0.9)), live=False)
    assert result.events == [E.PATTERN_DETECTED]


def test_no_predictions_detects_nothing() -> None:
    result, _ = run(None, preds())
    assert result.label is None
    assert E.PATTERN_DETECTED not in result.events
