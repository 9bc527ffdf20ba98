"""``intent ratelimits``: the shared limits with their current rate; reset one."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import redis

from intent.errors import ServiceUnavailableError
from intent.runtime import get_runtime


def run(args: argparse.Namespace) -> int:
    limits = get_runtime().rate_limits
    try:
        if args.action == "reset":
            limits[args.name].reset(args.id)
        statuses = [limit.status(args.id) for limit in limits]
    except (KeyError, ValueError) as exc:
        print(f"intent ratelimits: {exc.args[0]}", file=sys.stderr)
        return 2
    except (redis.RedisError, ServiceUnavailableError) as exc:
        print(f"intent ratelimits: Redis is unreachable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
        return 0
    print(f"{'limit':<18} {'scope':<24} {'current':>8} {'limit':>8} {'per':>6}")
    for s in statuses:
        scope = f"client {s.identifier!r}" if s.identifier else s.scope
        current = str(s.current)
        if s.scope == "client" and not s.identifier:
            scope, current = "per client (give --id)", "-"
        print(f"{s.name:<18} {scope:<24} {current:>8} {s.amount:>8} {s.seconds:>5}s")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "ratelimits",
        help="show the shared rate limits and their current rate; reset one",
        description="intent ratelimits [list] [--id CLIENT] | reset NAME [--id CLIENT]",
    )
    parser.add_argument("action", nargs="?", default="list", choices=["list", "reset"])
    parser.add_argument("name", nargs="?", help="get_context, analyze_context, predict, intake")
    parser.add_argument("--id", default="", help="the identifier (intake: the client_id)")
    parser.add_argument("--json", action="store_true")

    def checked(args: argparse.Namespace) -> int:
        if args.action == "reset" and not args.name:
            parser.error("`intent ratelimits reset` needs a limit NAME")
        return run(args)

    parser.set_defaults(func=checked)
