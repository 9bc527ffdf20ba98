"""``intent budgets``: each downstream service's fleet-wide retry budget, as it stands."""

from __future__ import annotations

import argparse
import json
import sys

import redis

from intent.models import SERVICES
from intent.runtime import get_runtime


def run(args: argparse.Namespace) -> int:
    budget = get_runtime().retry_budget
    try:
        statuses = [budget.status(service) for service in SERVICES]
    except redis.RedisError as exc:
        print(f"intent budgets: Redis is unreachable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return 0
    print(f"{'service':<20} {'calls':>7} {'retries':>8} {'allowance':>10}  rule")
    for s in statuses:
        rule = f"{s.percent:g} % of calls + {s.min_per_second:g}/s over {s.window:g} s"
        print(f"{s.service:<20} {s.calls:>7} {s.retries:>8} {s.allowance:>10.1f}  {rule}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "budgets",
        help="show the downstream services' fleet-wide retry budgets",
        description="intent budgets [--json]",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)
