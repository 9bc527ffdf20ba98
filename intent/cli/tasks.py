"""``intent tasks dead``: the task messages workers refused, newest first, with the reason."""

from __future__ import annotations

import argparse
import json
import sys
import time

import redis

from intent.poison import DeadTasks
from intent.runtime import get_runtime


def run(args: argparse.Namespace) -> int:
    rt = get_runtime()
    try:
        dead = DeadTasks(rt.redis, rt.keys, rt.settings.events_maxlen).list(args.count)
    except redis.RedisError as exc:
        print(f"intent tasks: Redis is unreachable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        rows = [
            {
                **{k: v for k, v in vars(d).items() if k != "body"},
                "body": d.body.decode("utf-8", "backslashreplace"),
            }
            for d in dead
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not dead:
        print("no refused task messages")
        return 0
    for d in dead:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.refused_at))
        print(f"{d.stream_id}  {when}  {d.task or '-'}[{d.task_id or 'no id'}]  by {d.worker}")
        print(f"    {d.field}: {d.reason}")
        shown = d.body[:160].decode("utf-8", "backslashreplace")
        print(f"    body ({len(d.body)} bytes kept): {shown}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "tasks",
        help="task messages workers refused (undecodable, a wrong shape), with the reason",
        description="intent tasks dead [--count N] [--json]",
    )
    parser.add_argument("action", choices=["dead"])
    parser.add_argument("--count", type=int, default=20, help="the newest N (20)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)
