"""The worker's broker connection reconnects at the project's pace (tasks/connection.py)."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection

from tasks.connection import PacedConnection


def test_a_lost_broker_is_tried_again_every_reconnect_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from intent.settings import Settings

    settings = Settings(broker_reconnect_interval=0.5)
    monkeypatch.setattr("tasks.connection.get_settings", lambda: settings)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(Connection, "_ensure_connection", lambda self, *a, **k: seen.update(k))
    connection = PacedConnection("memory://")
    try:
        connection.ensure_connection(None, None, callback=print)  # as Celery's consumer calls it
        assert (seen["interval_start"], seen["interval_step"], seen["interval_max"]) == (
            0,
            0.5,
            0.5,
        )
        seen.clear()
        connection.ensure_connection(interval_max=7)  # a caller's own pace is kept
        assert seen["interval_max"] == 7
        assert type(connection.clone()) is PacedConnection
    finally:
        connection.release()
