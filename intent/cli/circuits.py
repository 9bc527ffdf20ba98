"""``intent circuits``: list the shared breakers, and reset, force open or force closed one."""

from __future__ import annotations

import argparse
import json
import sys
import time

from intent.breaker import BreakerStatus, CircuitAdmin, StoreError


def _when(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    stamp = time.strftime("%H:%M:%S", time.gmtime(epoch))
    return f"{stamp} ({epoch - now:+.1f} s)"


def _table(statuses: list[BreakerStatus]) -> str:
    if not statuses:
        return "no circuit breakers have been used yet"
    head = (
        f"{'breaker':<22} {'state':<10} {'failures':>8} {'calls':>6} {'in flight':>10} "
        f"{'trips':>5} {'gen':>4}  {'opened at':<22} {'until':<22} forced / reason"
    )
    lines = [head]
    for s in statuses:
        forced = s.reason or "-"
        # in flight / the bulkhead's limit, when there is one
        flight = f"{s.in_flight}/{s.bulkhead}" if s.bulkhead else str(s.in_flight)
        lines.append(
            f"{s.name:<22} {s.state:<10} {s.failures:>8} {s.calls:>6} {flight:>10} "
            f"{s.trips:>5} {s.generation:>4}  "
            f"{_when(s.opened_at, s.now):<22} {_when(s.until, s.now):<22} {forced}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # The shared store itself, without the in-memory fallback: an operator must see the
    # fleet's state or an error, never this process's private view.
    from intent.runtime import get_runtime

    rt = get_runtime()
    rt.settings.require_state_redis_url()
    try:
        code = _act(rt.circuits, args)
    except StoreError as exc:
        print(f"intent circuits: the shared breaker state is unreachable: {exc}", file=sys.stderr)
        return 1
    if args.action == "list" and not args.json:
        print(_waiting())
    return code


def _waiting() -> str:
    """Steps parked until they may run again, per lane (intent/waiting.py)."""
    from intent.runtime import get_runtime

    try:
        depth = get_runtime().waiting.depth()
    except Exception as exc:  # the listing of breakers stands on its own
        return f"waiting steps: unknown ({type(exc).__name__})"
    return "waiting steps: " + ", ".join(f"{lane} {count}" for lane, count in depth.items())


def _act(admin: CircuitAdmin, args: argparse.Namespace) -> int:
    reason = args.reason or f"{args.action} by operator"
    if args.action == "list":
        statuses = admin.list()
    elif args.action == "reset":
        statuses = [admin.reset(args.name, reason)]
    elif args.action == "open":
        statuses = [admin.force_open(args.name, reason)]
    else:
        statuses = [admin.force_closed(args.name, reason)]
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        print(_table(statuses))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "circuits",
        help="list circuit breakers; reset, force open or force closed one",
        description="intent circuits [list] | reset NAME | open NAME | close NAME",
    )
    parser.add_argument(
        "action", nargs="?", default="list", choices=["list", "reset", "open", "close"]
    )
    parser.add_argument("name", nargs="?", help="breaker name, e.g. context-service")
    parser.add_argument("--reason", help="why (logged, and shown in the listing)")
    parser.add_argument("--json", action="store_true")

    def checked(args: argparse.Namespace) -> int:
        if args.action != "list" and not args.name:
            parser.error(f"`intent circuits {args.action}` needs a breaker NAME")
        return run(args)

    parser.set_defaults(func=checked)
