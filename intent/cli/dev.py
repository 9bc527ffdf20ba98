"""``intent demo`` and ``intent up``: the whole stack on one machine."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    from intent.dev import demo

    return demo.run(args.concurrency)


def _cmd_up(args: argparse.Namespace) -> int:
    from intent.dev import up

    return up.run(args)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="start everything, run a set of analyses, print a summary")
    demo.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    demo.set_defaults(func=_cmd_demo)

    up = sub.add_parser(
        "up",
        help="run the whole stack here: Redis, services, worker, beat, "
        "admin, Flower (Ctrl-C stops it all)",
    )
    up.add_argument("--admin-port", type=int, help="default INTENT_ADMIN_PORT, else a free one")
    up.add_argument("--flower-port", type=int, help="default INTENT_FLOWER_PORT, else a free one")
    up.add_argument("--concurrency", type=int, help="worker pool processes")
    up.add_argument("--loglevel", default="INFO", help="worker and beat log level")
    up.add_argument("--grace", type=float, help="seconds from SIGTERM to SIGKILL (10)")
    up.add_argument("--timeout", type=float, help="seconds every process has to come up (120)")
    up.set_defaults(func=_cmd_up)
