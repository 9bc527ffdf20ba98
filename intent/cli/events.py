"""``intent events``: tail the event stream, consume it in a group, replay it, and list or
requeue dead letters; every command covers each partition of the bus
(INTENT_EVENT_PARTITIONS), showing an entry of partition P as ``P/ID`` when there are
several (stream ids repeat across streams)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from importlib import import_module
from typing import Any, cast

import redis

from intent.connections import stream_client
from intent.events import (
    DeadLetter,
    DeadLetters,
    EventConsumer,
    EventHandler,
    ReplayError,
    register_builtin_handlers,
    replay,
)
from intent.events.entries import describe_error, id_order, parse_entry
from intent.events.partitions import entry_ref, parse_ref
from intent.keys import Keys
from intent.logs import configure_logging
from intent.models import Event
from intent.settings import Settings, get_settings


def _client(settings: Settings, block: float = 0.0) -> redis.Redis:
    # Undecodable entries arrive as lone surrogates: shown, not fatal.
    return stream_client(settings, block=block)


def _fail(message: str) -> int:
    print(f"intent events: {message}", file=sys.stderr)
    return 1


# -- tail -----------------------------------------------------------------------------------
def _event_line(stream_id: str, event: Event) -> str:
    data = json.dumps(event.data, separators=(",", ":"), sort_keys=True)
    return (
        f"{stream_id}  {event.timestamp}  {event.type.value:<19}  pattern={event.pattern_id}  "
        f"request={event.request_id}  id={event.id}  {data}"
    )


def _tail_line(
    stream_id: str, fields: dict[str, str], as_json: bool, partition: int | None = None
) -> str:
    """One entry; ``partition`` given (several partitions): shown as ``P/ID``, and in JSON
    as a ``partition`` beside the stream id."""
    shown = stream_id if partition is None else f"{partition}/{stream_id}"
    where: dict[str, Any] = {"stream_id": stream_id}
    if partition is not None:
        where["partition"] = partition
    parsed = parse_entry(fields)
    if isinstance(parsed, Event):
        if as_json:
            return json.dumps({**where, **parsed.model_dump(mode="json")})
        return _event_line(shown, parsed)
    reason = describe_error(parsed)
    if as_json:
        return json.dumps({**where, "malformed": reason, "fields": fields})
    return f"{shown}  malformed ({reason})  {json.dumps(fields, separators=(',', ':'))}"


# How often a tail of several partitions looks again when none had anything new: a blocking
# read covers one stream only (on a Redis Cluster, one command cannot read two partitions).
TAIL_POLL = 0.1


def _tail_partitions(args: argparse.Namespace, client: redis.Redis, keys: Keys, n: int) -> int:
    """Follow every partition, oldest first by stream id (the time it was added) among
    what each partition has."""
    streams = [keys.event_stream(p) for p in range(n)]
    lasts: list[str] = []
    for stream in streams:
        last = args.from_id
        if last == "$":
            newest = cast(list[Any], client.xrevrange(stream, "+", "-", count=1))
            last = newest[0][0] if newest else "0-0"
        lasts.append(last)
    shown = 0
    while args.count is None or shown < args.count:
        want = 100 if args.count is None else min(100, args.count - shown)
        found: list[tuple[tuple[int, int], int, str, dict[str, str]]] = []
        for partition, stream in enumerate(streams):
            reply = cast(list[Any], client.xread({stream: lasts[partition]}, count=want))
            for stream_id, fields in reply[0][1] if reply else []:
                found.append((id_order(stream_id), partition, stream_id, fields))
        if not found:
            time.sleep(TAIL_POLL)
            continue
        found.sort(key=lambda row: (row[0], row[1]))
        for _, partition, stream_id, fields in found[:want]:
            print(_tail_line(stream_id, fields, args.json, partition), flush=True)
            lasts[partition] = stream_id
            shown += 1
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    settings = get_settings()
    keys = Keys(settings.key_prefix)
    block = 1.0
    client = _client(settings, block=block)
    if settings.event_partitions > 1:
        try:
            return _tail_partitions(args, client, keys, settings.event_partitions)
        except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C; `intent events tail | head`
            return 0
    stream = keys.events_stream
    last = args.from_id
    if last == "$":
        # Resolve "$" once: reading "$" again after an empty wait would skip what was added
        # between two reads.
        newest = cast(list[Any], client.xrevrange(stream, "+", "-", count=1))
        last = newest[0][0] if newest else "0-0"
    shown = 0
    try:
        while args.count is None or shown < args.count:
            want = 100 if args.count is None else min(100, args.count - shown)
            reply = cast(
                list[Any], client.xread({stream: last}, count=want, block=int(block * 1000))
            )
            for stream_id, fields in reply[0][1] if reply else []:
                print(_tail_line(stream_id, fields, args.json), flush=True)
                last = stream_id
                shown += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a tail ends
    except BrokenPipeError:  # `intent events tail | head`
        pass
    return 0


# -- consume --------------------------------------------------------------------------------
def _load_registrar(spec: str) -> Callable[[EventHandler], Any]:
    module, _, attribute = spec.partition(":")
    if not module or not attribute:
        raise SystemExit(f"intent events consume: --handlers {spec!r} is not MODULE:FUNCTION")
    registrar = getattr(import_module(module), attribute, None)
    if not callable(registrar):
        raise SystemExit(f"intent events consume: {spec} is not a function")
    return cast(Callable[[EventHandler], Any], registrar)


def _cmd_consume(args: argparse.Namespace) -> int:
    handler = EventHandler()
    if not args.no_builtin:
        from intent.runtime import get_runtime

        register_builtin_handlers(handler, get_runtime().context_cache)
    for spec in args.handlers:
        _load_registrar(spec)(handler)
    # The service's log lines (INTENT_LOG_FORMAT: JSON by default, or text), on stderr.
    settings = get_settings()
    configure_logging(settings, "consumer", level=args.log_level or settings.log_level)
    consumer = EventConsumer.from_settings(
        handler, args.group, args.consumer, start_id=args.start_id or "$"
    )
    try:
        stats = consumer.run(max_events=args.max_events)
    except redis.RedisError as exc:
        return _fail(f"Redis error: {exc}")
    finally:
        consumer.close()
    print(
        json.dumps({"group": args.group, "consumer": consumer.config.consumer, **stats.as_dict()})
    )
    return 0


# -- replay ---------------------------------------------------------------------------------
def _cmd_replay(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        result = replay(
            _client(settings),
            Keys(settings.key_prefix),
            args.group,
            args.from_id,
            settings.event_partitions,
        )
    except ReplayError as exc:
        return _fail(str(exc))
    where = ""
    if settings.event_partitions > 1:
        where = f" on {result.partitions} of {settings.event_partitions} partitions"
    print(
        f"group {result.group}: rewound from {result.previous_last_id} to {result.from_id}"
        f"{where}; {result.events} events will be delivered again"
    )
    return 0


# -- dead letters ---------------------------------------------------------------------------
def _dead_line(letter: DeadLetter, partitions: int) -> str:
    fields = letter.fields
    dead = entry_ref(letter.partition, letter.dead_id, partitions)
    original = entry_ref(letter.partition, letter.original_id, partitions)
    return (
        f"{dead}  {letter.dead_at}  {letter.reason:<12}  group={letter.group}  "
        f"consumer={letter.consumer}  deliveries={letter.deliveries}  "
        f"original={original}  type={fields.get('type', '-')}  "
        f"id={fields.get('id', '-')}\n    error: {letter.error}"
    )


def _cmd_dead(args: argparse.Namespace) -> int:
    settings = get_settings()
    n = settings.event_partitions
    letters = DeadLetters(_client(settings), Keys(settings.key_prefix), settings.events_maxlen, n)
    if args.dead_action == "list":
        if args.ids or args.all:
            return _fail("`dead list` takes no ids; use --count")
        listed = letters.list(count=args.count)
        if args.json:
            print(json.dumps([letter.as_dict() for letter in listed], indent=2))
        elif not listed:
            print("no dead letters")
        else:
            for letter in listed:
                print(_dead_line(letter, n))
            total = letters.count()
            if total > len(listed):
                print(f"... {total - len(listed)} more (use --count)")
        return 0
    if args.all == bool(args.ids):
        return _fail("`dead requeue` takes dead-letter ids or --all (not both)")
    if args.all:
        print(f"requeued {letters.requeue_all()} dead letters")
        return 0
    try:
        refs = [parse_ref(ref, n) for ref in args.ids]
    except ValueError as exc:
        return _fail(f"dead requeue: {exc}")
    missing = 0
    for ref, (partition, dead_id) in zip(args.ids, refs, strict=True):
        new_id = letters.requeue(dead_id, partition)
        if new_id is None:
            missing += 1
            print(f"{ref}: no such dead letter", file=sys.stderr)
        else:
            print(f"requeued {ref} as {entry_ref(partition, new_id, n)}")
    return 1 if missing else 0


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except redis.RedisError as exc:
            return _fail(f"Redis error: {exc}")

    return run


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = sub.add_parser(
        "events",
        help="tail, consume or replay the event stream; list or requeue dead letters",
        description="intent events tail | consume | replay | dead",
    )
    actions = events.add_subparsers(dest="events_action", required=True)

    tail = actions.add_parser("tail", help="follow the stream (Ctrl-C to stop)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--from",
        dest="from_id",
        default="$",
        help="show the entries after this stream id (0: from the start; default: new ones)",
    )
    tail.add_argument("--count", type=int, default=None, help="exit after N events")
    tail.set_defaults(func=_guarded(_cmd_tail))

    consume = actions.add_parser("consume", help="run a consumer of a group until SIGTERM/Ctrl-C")
    consume.add_argument("--group", required=True)
    consume.add_argument("--consumer", help="this consumer's name (default: host-pid)")
    consume.add_argument(
        "--handlers",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="a function that registers handlers on the EventHandler it is given (repeatable)",
    )
    consume.add_argument(
        "--no-builtin",
        action="store_true",
        help="do not register the built-in handlers (context_changed invalidates the cache)",
    )
    consume.add_argument(
        "--start-id", help="where a group created now starts (default $: new events; 0: all)"
    )
    consume.add_argument("--max-events", type=int, help="exit after reading N new events")
    consume.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="default: INTENT_LOG_LEVEL",
    )
    consume.set_defaults(func=_guarded(_cmd_consume))

    rewind = actions.add_parser(
        "replay", help="deliver a group the events after an id again (XGROUP SETID)"
    )
    rewind.add_argument("--from", dest="from_id", required=True, help="stream id (0: all)")
    rewind.add_argument("--group", required=True)
    rewind.set_defaults(func=_guarded(_cmd_replay))

    dead = actions.add_parser("dead", help="list dead letters, or requeue one or all")
    dead.add_argument("dead_action", nargs="?", default="list", choices=["list", "requeue"])
    dead.add_argument(
        "ids", nargs="*", help="dead-letter ids to requeue (P/ID with several partitions)"
    )
    dead.add_argument("--all", action="store_true", help="requeue every dead letter")
    dead.add_argument("--count", type=int, default=100, help="list at most N (default 100)")
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=_guarded(_cmd_dead))
