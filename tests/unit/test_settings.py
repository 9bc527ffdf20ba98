"""Settings: the guide's defaults, and bad values named by their environment variable."""

from __future__ import annotations

import re

import pytest

from intent.settings import Settings, SettingsError, load_settings


def test_defaults_are_the_integration_guides() -> None:
    s = Settings()
    assert (s.context_connect_timeout, s.context_read_timeout, s.context_write_timeout) == (
        5.0,
        10.0,
        10.0,
    )
    assert (s.rate_limit_get_context, s.rate_limit_analyze_context) == (1000, 500)
    assert (
        s.circuit_failure_threshold,
        s.circuit_recovery_timeout,
        s.circuit_half_open_timeout,
        s.circuit_failure_window,
        s.circuit_min_throughput,
    ) == (5, 60, 30, 120, 5)
    assert (s.retry_max, s.retry_initial_delay, s.retry_max_delay) == (3, 1.0, 10.0)
    assert (s.rate_limit_window, s.max_requests_per_window) == (60, 100)
    assert s.required_context_service_version == "1.0.0"
    assert s.context_api_version == "v1"
    assert (s.detection_threshold, s.update_delta) == (0.6, 0.1)
    assert s.key_prefix == "intent:"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_CIRCUIT_FAILURE_THRESHOLD", "7")
    monkeypatch.setenv("INTENT_CONTEXT_SERVICE_URL", "http://ctx:9000")
    s = load_settings()
    assert s.circuit_failure_threshold == 7
    assert s.context_service_url == "http://ctx:9000"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INTENT_CIRCUIT_FAILURE_THRESHOLD", "five"),
        ("INTENT_CIRCUIT_FAILURE_THRESHOLD", "0"),
        ("INTENT_RETRY_MAX", "-1"),
        ("INTENT_DETECTION_THRESHOLD", "1.5"),
        ("INTENT_CONTEXT_READ_TIMEOUT", "soon"),
        ("INTENT_KEY_PREFIX", "bad prefix!"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value)


def test_inconsistent_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_VISIBILITY_TIMEOUT", "30")
    with pytest.raises(SettingsError, match="visibility_timeout"):
        load_settings()


def test_missing_redis_url_says_how_to_get_one() -> None:
    with pytest.raises(SettingsError, match="INTENT_REDIS_URL"):
        Settings(redis_url=None).require_redis_url()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    """The README's table documents every INTENT_ variable (``A`` / ``_B`` rows name
    ``B`` by replacing the tail of ``A``)."""
    from pathlib import Path

    from intent.settings import ENV_PREFIX, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("| variable | default | meaning |") :].split("\n\n", 1)[0]
    documented: set[str] = set()
    for row in table.splitlines():
        names = re.findall(r"`(INTENT_[A-Z0-9_]+)`", row)
        documented.update(names)
        for short in re.findall(r"`(_[A-Z0-9_]+)`", row):
            for name in names:
                parts = name.split("_")
                documented.update("_".join(parts[:k]) + short for k in range(2, len(parts) + 1))
    missing = [
        ENV_PREFIX + field.upper()
        for field in Settings.model_fields
        if ENV_PREFIX + field.upper() not in documented
    ]
    assert missing == []
