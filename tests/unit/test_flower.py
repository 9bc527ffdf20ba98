"""How ``intent flower`` starts Flower: basic auth outside development, credentials out of
the command line, and an unauthenticated Flower on loopback only (``intent up`` too)."""

from __future__ import annotations

import io
import os
import socket

import pytest

from intent import cli
from intent.dev.up import Options, Up
from intent.ops.flower import flower_command, is_loopback
from intent.settings import SettingsError, get_settings, load_settings

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
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        argv, _ = flower_command(settings, port=5700, address=loopback, environ={})
        assert argv[-2:] == ["--port=5700", f"--address={loopback}"]


# "" is Tornado's every interface; 10.255.255.1 is no address of this machine, which does
# not matter: only loopback keeps an open Flower here.
@pytest.mark.parametrize("address", ["0.0.0.0", "", "::", "10.255.255.1", "web.example"])
def test_development_without_credentials_refuses_any_other_address(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name counts by what it resolves to: loopback and another address is not loopback.
    answers = {"web.example": ["127.0.0.1", "10.0.0.5"], "localhost": ["127.0.0.1", "::1"]}

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list[tuple]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert is_loopback("localhost") and not is_loopback("nowhere.example")
    settings = load_settings(redis_url=REDIS, environment="development")
    assert not is_loopback(address)
    with pytest.raises(SettingsError, match="loopback only") as info:
        flower_command(settings, address=address, environ={})
    assert repr(address) in str(info.value)
    assert "INTENT_FLOWER_BASIC_AUTH" in str(info.value)  # the way to serve it there


def test_intent_flower_exits_2_for_an_open_flower_on_every_interface(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INTENT_ENVIRONMENT", "development")
    monkeypatch.setenv("INTENT_REDIS_URL", REDIS)
    get_settings.cache_clear()

    def execve(*args: object) -> None:
        raise AssertionError(f"Flower would have started: {args[1]}")

    monkeypatch.setattr(os, "execve", execve)
    try:
        assert cli.main(["flower", "--address", "0.0.0.0"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "loopback only" in err and "'0.0.0.0'" in err


def test_development_with_credentials_keeps_auth_on() -> None:
    settings = load_settings(redis_url=REDIS, environment="development", flower_basic_auth="a:b")
    argv, env = flower_command(settings, environ={})
    assert env == {"FLOWER_BASIC_AUTH": "a:b"}
    assert not any(arg.startswith("--address") for arg in argv)
    # With credentials Flower may listen anywhere.
    argv, env = flower_command(settings, address="0.0.0.0", environ={})
    assert argv[-1] == "--address=0.0.0.0" and "FLOWER_UNAUTHENTICATED_API" not in env


def up_flower(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> tuple[str, list[str], dict[str, str]]:
    """What ``intent up`` runs as Flower for ``environ``, run through ``intent flower``'s
    parser and :func:`flower_command` in that environment: its address, Flower's argv and
    environment."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    up = Up(load_settings(), Options(), environ=environ, out=io.StringIO())
    argv, env = up._flower_command(5555)
    assert argv[1:4] == ["-m", "intent.cli", "flower"]
    args = cli.build_parser().parse_args(argv[3:])
    for name, value in env.items():
        if name.startswith("INTENT_"):
            monkeypatch.setenv(name, value)
    flower_argv, flower_env = flower_command(load_settings(), args.port, args.address, env)
    return args.address, flower_argv, flower_env


def test_intent_up_keeps_an_open_flower_on_loopback_whatever_the_admin_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = {"INTENT_REDIS_URL": REDIS, "INTENT_ADMIN_HOST": "0.0.0.0"}
    address, argv, env = up_flower(monkeypatch, environ)

    assert address == "127.0.0.1"
    assert argv[-1] == "--address=127.0.0.1"
    assert env["FLOWER_UNAUTHENTICATED_API"] == "true"
    assert env["INTENT_ENVIRONMENT"] == "development"  # intent up's default for Flower


def test_intent_up_serves_flower_with_credentials_on_the_admin_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = {
        "INTENT_REDIS_URL": REDIS,
        "INTENT_ADMIN_HOST": "0.0.0.0",
        "INTENT_FLOWER_BASIC_AUTH": "ops:pw",
    }
    address, argv, env = up_flower(monkeypatch, environ)

    assert address == "0.0.0.0" and argv[-1] == "--address=0.0.0.0"
    assert env["FLOWER_BASIC_AUTH"] == "ops:pw" and "FLOWER_UNAUTHENTICATED_API" not in env


def test_a_missing_broker_is_named_before_flower_starts() -> None:
    settings = load_settings(environment="development")
    with pytest.raises(SettingsError, match="INTENT_REDIS_URL"):
        flower_command(settings, environ={})
