"""A step left for redelivery (Redis or the broker away while it parks or publishes): on a
classic queue its message is rejected with requeue; on a quorum queue, whose every return
counts toward the delivery limit, it is published again as a fresh message and acked, so a
long Redis outage never reaches the gate's last-delivery refusal."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Ignore, Reject

import tasks.steptask as steptask
from intent.settings import get_settings
from tasks.pipeline import STEP_TASKS

fetch_context = STEP_TASKS[0]

CHAIN = [{"task": "intent.predict", "args": [], "kwargs": {}, "options": {}}]


class Copies:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    def __call__(self, request: Any = None, *args: Any, **options: Any) -> Any:
        copies = self

        class Copy:
            def apply_async(self) -> None:
                if copies.fail:
                    raise ConnectionError("broker away too")
                copies.sent.append({"id": request.id, "chain": request.chain, **options})

        return Copy()


@pytest.fixture
def step(monkeypatch: pytest.MonkeyPatch) -> Any:
    fetch_context.push_request(id="step-1", chain=list(CHAIN), retries=2, is_eager=False)
    yield fetch_context
    fetch_context.pop_request()


def queue_type(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    settings = get_settings().model_copy(update={"queue_type": kind})
    monkeypatch.setattr(steptask, "get_settings", lambda: settings)


def test_on_a_classic_queue_the_message_is_rejected_with_requeue(
    monkeypatch: pytest.MonkeyPatch, step: Any
) -> None:
    queue_type(monkeypatch, "classic")
    copies = Copies()
    monkeypatch.setattr(step, "signature_from_request", copies)
    with pytest.raises(Reject) as raised:
        step.leave_for_redelivery("could not park", ConnectionError("redis away"))
    assert raised.value.requeue and copies.sent == []


def test_on_a_quorum_queue_a_fresh_copy_is_published_and_the_message_acked(
    monkeypatch: pytest.MonkeyPatch, step: Any
) -> None:
    queue_type(monkeypatch, "quorum")
    copies = Copies()
    monkeypatch.setattr(step, "signature_from_request", copies)
    with pytest.raises(Ignore):
        step.leave_for_redelivery("could not park", ConnectionError("redis away"))
    assert copies.sent == [{"id": "step-1", "chain": CHAIN}]


def test_on_a_quorum_queue_a_copy_the_broker_refuses_leaves_the_message_rejected(
    monkeypatch: pytest.MonkeyPatch, step: Any
) -> None:
    queue_type(monkeypatch, "quorum")
    monkeypatch.setattr(step, "signature_from_request", Copies(fail=True))
    with pytest.raises(Reject) as raised:
        step.leave_for_redelivery("could not publish", ConnectionError("broker away"))
    assert raised.value.requeue


def test_a_step_whose_next_cannot_be_published_runs_again_with_its_chain(
    monkeypatch: pytest.MonkeyPatch, step: Any
) -> None:
    queue_type(monkeypatch, "quorum")
    copies = Copies()
    monkeypatch.setattr(step, "signature_from_request", copies)

    def refused(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker away")

    monkeypatch.setattr("celery.canvas.Signature.apply_async", refused)
    with pytest.raises(Ignore):
        step.continue_chain({"some": "result"})
    assert copies.sent == [{"id": "step-1", "chain": CHAIN}]
