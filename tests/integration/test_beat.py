"""celery beat with celery-redbeat: two beats started, one schedules; when it dies, the
other takes over. Real ``intent beat`` processes against the test Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from intent.embedded import die_with_parent
from tasks.app import app
from tasks.beat import lock_held

pytestmark = pytest.mark.integration

# The health check's interval, also beat's loop interval: celery-redbeat's lock lives 5 of
# them (10 s), so a beat held up that long on a loaded machine still keeps it.
INTERVAL = 2.0
LOCK_TIMEOUT = 5 * INTERVAL
# A standby takes the lock at its next loop after the lock is free, then sends each
# interval: how long two sends take after the active beat dies, with room for a slow start.
TAKEOVER = LOCK_TIMEOUT + 3 * INTERVAL + 30
SENT = "Sending due task health-check"


class Beat:
    def __init__(self, log: Path, env: dict[str, str]):
        self.log = log
        self.out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "intent.cli", "beat", "--loglevel", "INFO"],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def sends(self) -> int:
        return self.log.read_text(errors="replace").count(SENT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.out.close()


@pytest.fixture
def beats(clean: redis.Redis, tmp_path: Path) -> Iterator[list[Beat]]:
    queue = f"intent-beat-test-{uuid.uuid4().hex[:8]}"  # nobody consumes it
    env = {**os.environ, "INTENT_HEALTH_INTERVAL": str(INTERVAL), "INTENT_QUEUE": queue}
    started = [Beat(tmp_path / f"beat-{n}.log", env) for n in range(2)]
    yield started
    for beat in started:
        beat.stop(signal.SIGKILL)
    clean.delete(queue)


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_one_beat_schedules_and_the_other_takes_over_when_it_dies(beats: list[Beat]) -> None:
    assert wait_for(lambda: sum(b.sends() for b in beats) >= 1, 30), "no beat sent anything"
    time.sleep(6 * INTERVAL)  # several of the standby's loops: had it scheduled, it would have sent

    sending = [b for b in beats if b.sends()]
    assert len(sending) == 1, [b.log.read_text()[-2000:] for b in beats]
    (active,) = sending
    (standby,) = [b for b in beats if b is not active]
    # Every interval, once: not twice (two beats) and not never.
    assert active.sends() >= 4

    # The active beat dies without releasing its lock: the standby waits out the lock's
    # timeout (5 loop intervals) and schedules from then on.
    active.stop(signal.SIGKILL)
    assert wait_for(lambda: standby.sends() >= 2, TAKEOVER), standby.log.read_text()


def test_a_beat_stopped_cleanly_hands_over_at_once(beats: list[Beat]) -> None:
    assert wait_for(lambda: sum(b.sends() for b in beats) >= 1, 30)
    (active,) = [b for b in beats if b.sends()]
    (standby,) = [b for b in beats if b is not active]

    assert lock_held(app)
    active.stop(signal.SIGTERM)
    assert "Releasing lock" in active.log.read_text()  # not left to time out
    assert wait_for(lambda: standby.sends() >= 1, TAKEOVER), standby.log.read_text()

    standby.stop(signal.SIGTERM)
    assert not lock_held(app)  # what the compose file's health check reads


def test_no_worker_shows_the_redis_password_in_its_configuration(redis_url: str) -> None:
    """``inspect conf`` and Flower show a worker's configuration: only the broker and
    backend URLs are masked there, so no other key may carry the Redis URL."""
    code = (
        "import json; from tasks.app import app; "
        "print(json.dumps(app.conf.table(with_defaults=False), default=str))"
    )
    env = {**os.environ, "INTENT_REDIS_URL": "redis://:pa55word-xyz@127.0.0.1:1/0"}
    shown = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "127.0.0.1:1" in shown  # the URL is there, masked
    assert "pa55word-xyz" not in shown
