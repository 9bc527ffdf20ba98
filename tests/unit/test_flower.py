"""How ``intent flower`` starts Flower: basic auth outside development, credentials out of
the command line."""

from __future__ import annotations

import pytest

from intent.settings import SettingsError, load_settings
from tasks.flower import flower_command

REDIS = "redis://127.0.0.1:6379/0"
INHERITED = {"PATH": "/usr/bin", "FLOWER_UNAUTHENTICATED_API": "true", "FLOWER_BASIC_AUTH": "x:y"}


def test_production_without_credentials_is_refused_naming_the_variable() -> None:
    settings = load_settings(redis_url=REDIS)
    assert settings.environment == "production"  # the default
    with pytest.raises(SettingsError, match="INTENT_FLOWER_BASIC_AUTH"):
        flower_command(settings, environ=INHERITED)


def test_an_empty_credentials_value_counts_as_unset() -> None:
    settings = load_settings(redis_url=REDIS, flower_basic_auth="  ")
    with pytest.raises(SettingsError, match="INTENT_FLOWER_BASIC_AUTH"):
        flower_command(settings, environ={})


def test_credentials_reach_flower_in_its_environment_not_its_command_line() -> None:
    settings = load_settings(redis_url=REDIS, flower_basic_auth="ops:s3cret, oncall:an:other")
    argv, env = flower_command(settings, environ=INHERITED)

    assert env["FLOWER_BASIC_AUTH"] == "ops:s3cret,oncall:an:other"
    assert not any("s3cret" in arg or "an:other" in arg for arg in argv)
    assert "FLOWER_UNAUTHENTICATED_API" not in env  # the API needs the credentials
    assert env["PATH"] == "/usr/bin"
    assert argv[1:] == ["-m", "celery", "-A", "tasks.app", "flower", "--port=5555"]


@pytest.mark.parametrize("value", ["S3CR3T", "ops:", ":S3CR3T", "ops:S3CR3T,", "ops:S3CR3T,S3CR3T"])
def test_malformed_credentials_are_refused_without_echoing_them(value: str) -> None:
    settings = load_settings(redis_url=REDIS, flower_basic_auth=value)
    with pytest.raises(SettingsError, match="INTENT_FLOWER_BASIC_AUTH") as info:
        flower_command(settings, environ={})
    assert "S3CR3T" not in str(info.value)


def test_development_opens_the_api_on_loopback_only() -> None:
    settings = load_settings(redis_url=REDIS, environment="development", flower_port=5600)
    argv, env = flower_command(settings, environ=INHERITED)

    assert env["FLOWER_UNAUTHENTICATED_API"] == "true"
    assert "FLOWER_BASIC_AUTH" not in env  # INTENT_FLOWER_BASIC_AUTH is the only source
    assert argv[-2:] == ["--port=5600", "--address=127.0.0.1"]
    argv, _ = flower_command(settings, port=5700, address="0.0.0.0", environ={})
    assert argv[-2:] == ["--port=5700", "--address=0.0.0.0"]


def test_development_with_credentials_keeps_auth_on() -> None:
    settings = load_settings(redis_url=REDIS, environment="development", flower_basic_auth="a:b")
    argv, env = flower_command(settings, environ={})
    assert env == {"FLOWER_BASIC_AUTH": "a:b"}
    assert not any(arg.startswith("--address") for arg in argv)


def test_a_missing_broker_is_named_before_flower_starts() -> None:
    settings = load_settings(environment="development")
    with pytest.raises(SettingsError, match="INTENT_REDIS_URL"):
        flower_command(settings, environ={})
