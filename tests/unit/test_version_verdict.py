"""The one verdict on a service's /health version (intent.clients.version_problem), which the
clients' refusal and the health snapshot both state."""

from __future__ import annotations

import pytest

from intent import clients, health
from intent.clients import version_problem


@pytest.mark.parametrize("reported", ["1.0.0", "1.4.2", "v1.2", "1.3.0-rc1"])
def test_a_compatible_version_has_no_problem(reported: str) -> None:
    assert version_problem(reported, "1.0.0") is None


@pytest.mark.parametrize(
    ("reported", "shown"), [("2.0.0", "2.0.0"), ("0.9.9", "0.9.9"), ("", "(none)"), ("x", "x")]
)
def test_an_incompatible_version_is_named_with_the_rule(reported: str, shown: str) -> None:
    assert version_problem(reported, "1.0.0") == (
        f"incompatible version {shown}: requires 1.0.0 (same major, not older)"
    )


def test_the_health_check_states_the_clients_verdict() -> None:
    assert health.version_problem is clients.version_problem
