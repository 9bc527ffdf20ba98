"""Unit tests read settings from a clean environment: integration fixtures in the same
session set INTENT_* variables (a test Redis, a fast retry schedule)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_intent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("INTENT_"):
            monkeypatch.delenv(name)
