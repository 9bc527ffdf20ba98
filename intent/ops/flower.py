"""``intent flower``: Flower, Celery's monitor, on the pipeline's app.

Basic auth is on unless ``INTENT_ENVIRONMENT=development``: in production Flower does not
start without ``INTENT_FLOWER_BASIC_AUTH``. The credentials reach Flower in its
``FLOWER_BASIC_AUTH`` environment variable, not on its command line, so ``ps`` does not
show them. In development without credentials Flower's API is enabled
(``FLOWER_UNAUTHENTICATED_API``: anyone who reaches it can shut workers down), so Flower
listens on 127.0.0.1, and an ``--address`` that is not a loopback address is refused.

Other ``FLOWER_*`` variables reach Flower unchanged, e.g. ``FLOWER_BROKER_API`` (the
RabbitMQ management API Flower's broker page reads; by default derived from the broker
URL on port 15672).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Mapping

from intent.settings import ENV_PREFIX, Settings, SettingsError, get_settings

AUTH_VARIABLE = f"{ENV_PREFIX}FLOWER_BASIC_AUTH"


def _credentials(value: str) -> list[str]:
    """``user:password[,user:password...]``, checked the way Flower will compare them."""
    entries = [entry.strip() for entry in value.split(",")]
    for entry in entries:
        user, sep, password = entry.partition(":")
        if not (user and sep and password):
            # Never echo the value: it holds passwords.
            raise SettingsError(
                f"{AUTH_VARIABLE} must be 'user:password[,user:password...]' with a non-empty "
                "user and password in every entry"
            )
    return entries


def has_credentials(settings: Settings) -> bool:
    """Whether Flower runs with basic auth: an empty value (compose's ``${VAR:-}``) counts
    as unset."""
    secret = settings.flower_basic_auth
    return bool(secret is not None and secret.get_secret_value().strip())


def is_loopback(address: str) -> bool:
    """Whether Flower listening on ``address`` is reachable from this machine only: a
    loopback IP, or a name that resolves to loopback addresses alone. ``""`` (Tornado's
    every interface) and a name that does not resolve are not."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    hosts = {str(info[4][0]).partition("%")[0] for info in infos}
    return bool(hosts) and all(ipaddress.ip_address(host).is_loopback for host in hosts)


def flower_command(
    settings: Settings,
    port: int | None = None,
    address: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run Flower for these settings.

    Raises :class:`SettingsError` in production without basic auth credentials, without
    credentials for an ``address`` that is not loopback, or when the broker or result
    backend is not configured.
    """
    # Flower reads the broker and the result backend through celeryconfig: fail here, with
    # the variable's name, rather than in Celery's traceback.
    settings.effective_broker_url  # noqa: B018
    settings.effective_result_backend  # noqa: B018
    env = dict(os.environ if environ is None else environ)
    # INTENT_FLOWER_BASIC_AUTH is the one source of Flower's credentials.
    env.pop("FLOWER_BASIC_AUTH", None)
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    if has_credentials(settings):
        assert settings.flower_basic_auth is not None
        credentials = settings.flower_basic_auth.get_secret_value().strip()
        env["FLOWER_BASIC_AUTH"] = ",".join(_credentials(credentials))
    elif settings.environment == "development":
        # An open Flower (its API can shut workers down) stays on this machine.
        if address is None:
            address = "127.0.0.1"
        elif not is_loopback(address):
            raise SettingsError(
                f"Flower without basic auth listens on loopback only: --address {address!r} "
                f"would open its unauthenticated API (which can shut workers down) to other "
                f"machines; use 127.0.0.1, or set {AUTH_VARIABLE} "
                "('user:password[,user:password...]') to serve it there"
            )
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        raise SettingsError(
            f"{AUTH_VARIABLE} is not set: Flower needs basic auth credentials "
            f"('user:password[,user:password...]') outside development "
            f"({ENV_PREFIX}ENVIRONMENT={settings.environment}); set it, or set "
            f"{ENV_PREFIX}ENVIRONMENT=development to run Flower without auth on 127.0.0.1"
        )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "flower",
        f"--port={port or settings.flower_port}",
    ]
    if address is not None:
        argv.append(f"--address={address}")
    return argv, env


def run(args: argparse.Namespace) -> int:
    argv, env = flower_command(get_settings(), args.port, args.address)
    os.execve(sys.executable, argv, env)  # noqa: S606  # become Flower: signals reach it
    return 0  # pragma: no cover - execve does not return
