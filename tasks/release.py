"""The releaser: every worker's main process publishes the waiting steps that are due.

A bootstep of the worker's consumer: every ``INTENT_RELEASE_INTERVAL`` seconds it asks each
lane of the waiting room (``intent.waiting``) for what may run, by the state of the lane's
breaker (nothing while it is open, a trial's worth while half-open, the shared pace while
closed), publishes those messages and confirms them. It runs on the worker's timer (the
event loop's, with prefork), so it needs no thread of its own and stops with the consumer.
Several workers release from the same lanes without duplicates: each release is atomic.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery, bootsteps, signature

from intent.breaker import CLOSED, HALF_OPEN
from intent.runtime import Runtime, get_runtime
from intent.waiting import FREE, HELD, PACED, Lane

log = logging.getLogger("intent.release")

# A released message that cannot be published is retried briefly, here in the event loop;
# after that it goes back to waiting when its lease lapses.
PUBLISH_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def lane_mode(rt: Runtime, lane: Lane) -> tuple[str, float | None]:
    """How a lane may release now, from its breaker's shared state: the lane's pace while
    it is closed, its trial calls per recovery timeout while half-open (or due to be),
    nothing while open."""
    if lane.service is None:
        return FREE, None
    breaker = rt.breaker(lane.service)
    snapshot = breaker.snapshot()
    if snapshot.forced == "open":
        return HELD, None
    if snapshot.state == CLOSED or snapshot.forced == "closed":
        return PACED, None
    # One cycle's trials per recovery timeout: a failed trial reopens the breaker for that
    # long, and the steps released meanwhile would only be refused.
    trials = breaker.config.half_open_max_calls / breaker.config.recovery_timeout
    if snapshot.state == HALF_OPEN:
        return PACED, trials
    if snapshot.until is not None and snapshot.now >= snapshot.until:
        return PACED, trials  # due for its trials: its next caller moves it to half-open
    return HELD, None


class Releaser:
    """Releases due steps of every lane; ``busy`` remembers which lanes held steps."""

    def __init__(self, app: Celery):
        self.app = app
        self.busy: set[str] = set()

    def tick(self) -> int:
        """One pass over the lanes (one round trip, and one per busy lane's breaker);
        returns how many steps it published."""
        rt = get_runtime()
        modes: dict[str, tuple[str, float | None]] = {}
        for lane in rt.waiting.lanes.values():
            # An idle lane needs no look at its breaker: what is parked while the breaker
            # is open waits for it to admit calls, so it is never due at once.
            modes[lane.name] = lane_mode(rt, lane) if lane.name in self.busy else (PACED, None)
        published = 0
        for released in rt.waiting.release_all(modes):
            if released.waiting or released.messages:
                self.busy.add(released.lane)
            else:
                self.busy.discard(released.lane)
            published += self.publish(rt, released.lane, released.messages)
        return published

    def publish(self, rt: Runtime, lane: str, messages: list[tuple[str, str]]) -> int:
        sent: list[str] = []
        try:
            for task_id, message in messages:
                run = signature(json.loads(message), app=self.app)
                run.apply_async(retry=True, retry_policy=PUBLISH_POLICY)
                sent.append(task_id)
        except Exception as exc:
            log.warning(
                "could not publish %d waiting steps of %s (%s); they wait again",
                len(messages) - len(sent),
                lane,
                exc,
                extra={"lane": lane, "error": type(exc).__name__},
            )
        finally:
            rt.waiting.done(lane, sent)
        return len(sent)


class ReleaseStep(bootsteps.StartStopStep):
    """The worker's releaser on the consumer's timer."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any):
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None
        self.releaser: Releaser | None = None
        self._last_error = 0.0

    def start(self, consumer: Any) -> None:
        self.releaser = Releaser(consumer.app)
        interval = get_runtime().settings.release_interval
        self.timer_ref = consumer.timer.call_repeatedly(interval, self.tick, priority=10)

    def stop(self, consumer: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    shutdown = stop

    def tick(self) -> None:
        # Never raises into the worker's event loop: an unreachable Redis is logged once in
        # a while and tried again next tick.
        if self.releaser is None:
            return
        try:
            self.releaser.tick()
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_error >= 30.0:
                self._last_error = now
                log.warning("releasing waiting steps failed: %s", exc, exc_info=True)
