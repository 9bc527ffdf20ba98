"""``intent drills``: list, start and stop the resilience drills (intent/drills.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import redis

from intent.drills import Drill, DrillStore
from intent.errors import ValidationError
from intent.models import SERVICES


def _table(drills: list[Drill], now: float) -> str:
    if not drills:
        return "no drill is running"
    lines = [f"{'service':<20} {'kind':<8} {'injects':<24} {'ends':<22} reason"]
    for d in drills:
        ends = time.strftime("%H:%M:%S", time.gmtime(d.expires_at))
        left = f"{ends} ({d.expires_at - now:+.0f} s)"
        lines.append(f"{d.service:<20} {d.kind:<8} {d.describe():<24} {left:<22} {d.reason or '-'}")
    return "\n".join(lines)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    """The drill the options describe, as the admin endpoint takes it (validated there)."""
    body: dict[str, Any] = {"rate": args.rate, "duration": args.duration}
    if args.status is not None:
        body.update(kind="status", status=args.status)
    elif args.timeout:
        body["kind"] = "timeout"
    else:
        body["kind"] = "latency"
    if args.latency is not None:
        body["latency"] = args.latency
    if args.reason:
        body["reason"] = args.reason
    return body


def _act(store: DrillStore, args: argparse.Namespace) -> int:
    now = time.time()
    if args.action == "stop":
        stopped = store.stop(args.service)
        print(f"drill on {args.service} stopped" if stopped else f"no drill on {args.service}")
        return 0
    if args.action == "start":
        try:
            drills = [store.start(args.service, _body(args), now)]
        except ValidationError as exc:
            print(f"intent drills start: {exc.field}: {exc.message}", file=sys.stderr)
            return 2
    else:
        drills = store.list()
    if args.json:
        print(json.dumps([d.as_dict(now) for d in drills], indent=2))
    else:
        print(_table(drills, now))
    return 0


def run(args: argparse.Namespace) -> int:
    from intent.runtime import get_runtime

    rt = get_runtime()
    rt.settings.require_state_redis_url()
    try:
        return _act(rt.drill_store, args)
    except redis.RedisError as exc:
        print(f"intent drills: Redis is unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "drills",
        help="list, start or stop resilience drills (client-side fault injection)",
        description=(
            "intent drills [list] | start SERVICE --rate R (--status CODE | --timeout | "
            "--latency S) [--latency S] --for SECONDS | stop SERVICE"
        ),
    )
    parser.add_argument("action", nargs="?", default="list", choices=["list", "start", "stop"])
    parser.add_argument("service", nargs="?", choices=SERVICES, help="the downstream service")
    parser.add_argument("--rate", type=float, help="share of the calls to hit, 0..1")
    outcome = parser.add_mutually_exclusive_group()
    outcome.add_argument("--status", type=int, help="answer the calls hit with this HTTP status")
    outcome.add_argument("--timeout", action="store_true", help="time the calls hit out")
    parser.add_argument("--latency", type=float, help="seconds added to each call hit")
    parser.add_argument(
        "--for", dest="duration", type=float, help="seconds until it ends (at most the maximum)"
    )
    parser.add_argument("--reason", help="why (shown in the listing and the log)")
    parser.add_argument("--json", action="store_true")

    def checked(args: argparse.Namespace) -> int:
        if args.action != "list" and not args.service:
            parser.error(f"`intent drills {args.action}` needs a SERVICE")
        if args.action == "start":
            if args.rate is None or args.duration is None:
                parser.error("`intent drills start` needs --rate and --for")
            if args.status is None and not args.timeout and args.latency is None:
                parser.error("`intent drills start` needs --status, --timeout or --latency")
        return run(args)

    parser.set_defaults(func=checked)
