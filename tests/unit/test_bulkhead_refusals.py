"""A full bulkhead is not a failed probe: the health check reports the service busy, and a
version check refused a slot is not remembered as done."""

from __future__ import annotations

from typing import Any

import pytest

from intent.clients import ContextServiceClient
from intent.errors import BulkheadFullError
from intent.health import DEGRADED, check_service_health


def _full(call: Any, *args: Any, **kwargs: Any) -> Any:
    raise BulkheadFullError("context-service", 4)


def test_a_health_probe_refused_a_slot_reports_the_service_busy_not_down() -> None:
    component = check_service_health("http://127.0.0.1:9", 1.0, guard=_full)
    assert component["status"] == DEGRADED
    assert "bulkhead" in component["error"] and "not probed" in component["error"]


def test_a_version_check_refused_a_slot_is_asked_again_at_the_next_attempt() -> None:
    client = ContextServiceClient(
        "http://127.0.0.1:9", required_version="1.0.0", guard=_full, probe_guard=_full
    )
    try:
        for _ in range(2):
            with pytest.raises(BulkheadFullError):
                client.get_context("ctx-1")
        # Not remembered as probed: an unverified service is never called meanwhile.
        assert client._version_checked_at is None
    finally:
        client.close()
