"""``intent flower``: Flower, Celery's monitor, on the pipeline's app.

Basic auth is on unless ``INTENT_ENVIRONMENT=development``: in production Flower does not
start without ``INTENT_FLOWER_BASIC_AUTH``. The credentials reach Flower in its
``FLOWER_BASIC_AUTH`` environment variable, not on its command line, so ``ps`` does not
show them. In development without credentials Flower's API is enabled
(``FLOWER_UNAUTHENTICATED_API``) and Flower listens on 127.0.0.1 only, unless
``--address`` says otherwise.

Other ``FLOWER_*`` variables reach Flower unchanged, e.g. ``FLOWER_BROKER_API`` (the
RabbitMQ management API Flower's broker page reads; by default derived from the broker
URL on port 15672).
"""

from __future__ import annotations

import argparse
import os
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


def flower_command(
    settings: Settings,
    port: int | None = None,
    address: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run Flower for these settings.

    Raises :class:`SettingsError` in production without basic auth credentials, or when
    the broker or result backend is not configured.
    """
    # Flower reads the broker and the result backend through celeryconfig: fail here, with
    # the variable's name, rather than in Celery's traceback.
    settings.effective_broker_url  # noqa: B018
    settings.effective_result_backend  # noqa: B018
    env = dict(os.environ if environ is None else environ)
    # INTENT_FLOWER_BASIC_AUTH is the one source of Flower's credentials.
    env.pop("FLOWER_BASIC_AUTH", None)
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    secret = settings.flower_basic_auth
    credentials = secret.get_secret_value().strip() if secret is not None else ""
    if credentials:  # an empty value (compose's ${VAR:-}) counts as unset
        env["FLOWER_BASIC_AUTH"] = ",".join(_credentials(credentials))
    elif settings.environment == "development":
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        if address is None:
            address = "127.0.0.1"  # an open Flower stays on this machine
    else:
        raise SettingsError(
            f"{AUTH_VARIABLE} is not set: Flower needs basic auth credentials "
            f"('user:password[,user:password...]') outside development "
            f"({ENV_PREFIX}ENVIRONMENT={settings.environment}); set it, or set "
            f"{ENV_PREFIX}ENVIRONMENT=development to run Flower without auth on 127.0.0.1"
        )
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "flower",
            f"--port={port or settings.flower_port}"]  # fmt: skip
    if address is not None:
        argv.append(f"--address={address}")
    return argv, env


def run(args: argparse.Namespace) -> int:
    argv, env = flower_command(get_settings(), args.port, args.address)
    os.execve(sys.executable, argv, env)  # noqa: S606  # become Flower: signals reach it
    return 0  # pragma: no cover - execve does not return
