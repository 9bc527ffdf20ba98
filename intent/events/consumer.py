"""``EventConsumer``: one consumer of a group on ``intent:events`` (on every partition of
the bus, with several), at least once.

An entry is acknowledged only after its handlers returned. A failed entry stays pending
and is claimed back (XCLAIM) after a backoff that grows with its deliveries, up to
``max_deliveries``, then moved to the dead letters. Entries another consumer left idle
longer than ``claim_idle`` are taken over (XAUTOCLAIM). A stop finishes the event in hand.

Hot path: each read asks for up to ``batch_size`` entries and carries the previous batch's
XACKs; it is sent before the batch just received is handled (read-ahead), so Redis
prepares the next batch while Python runs the handlers and a batch costs one round trip.

Partitions (settings.event_partitions): the group exists on each partition stream under
the same name, and the consumer keeps one lane per partition: its reader (a connection with
its own blocking read outstanding), its acknowledgements, retries, takeover cursor and
dead letters. No command touches two partitions (a Redis Cluster refuses that). Whichever
lane's reply comes first is handled, in turns when several wait, so one partition's backlog
does not hold up another's events; with one partition this is the single loop above.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from intent import resp
from intent.connections import stream_client
from intent.errors import RejectEvent, RetryLater
from intent.events.config import DEFAULTS, ConsumerConfig, gives_up, retry_delay
from intent.events.deadletter import (
    ABANDONED,
    FAILED,
    MALFORMED,
    REJECTED,
    UNKNOWN_TYPE,
    DeadLetters,
    dead_letter_fields,
)
from intent.events.entries import (
    StreamEntry,
    describe_error,
    id_order,
    is_unknown_type,
    parse_entries,
)
from intent.events.handler import Delivery, EventHandler, _current_delivery
from intent.events.reader import Clock, StreamReader, next_ready
from intent.keys import Keys
from intent.lifecycle import on_signals
from intent.models import Event
from intent.settings import Settings, get_settings

logger = logging.getLogger("intent.events")

# XAUTOCLAIM's reply: next cursor, claimed entries (fields None if deleted), deleted ids.
AutoClaimReply = tuple[str, list[tuple[str, "dict[str, str] | None"]], list[str]]
PendingRows = list[dict[str, Any]]  # XPENDING's extended form, as redis-py parses it


@dataclass
class ConsumerStats:
    """What one run did, entry by entry."""

    handled: int = 0  # handlers returned; acknowledged
    skipped: int = 0  # acknowledged without a handler (no handler for its type, unknown type)
    failures: int = 0  # deliveries whose handler raised
    deferrals: int = 0  # RetryLater: delivered again after its delay, not counted as a failure
    retries: int = 0  # failed entries claimed back for another delivery
    claimed: int = 0  # entries taken over from consumers that left them idle
    dead_lettered: int = 0
    released: int = 0  # left pending at shutdown, marked for others to take at once
    trimmed: int = 0  # pending entries the stream had trimmed (MAXLEN) before they were handled

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Retry:
    due: float  # clock time of the next delivery
    deliveries: int  # deliveries so far
    min_idle: float  # the entry has been idle at least this long once due (XCLAIM's guard)
    deferred: bool = False  # a RetryLater: the next delivery is not counted


class _Lane:
    """One partition as this consumer reads it: what is per stream (entry ids are unique
    only within their stream, so retries are kept per lane)."""

    __slots__ = (
        "acks",
        "claim_cursor",
        "held",
        "next_claim",
        "next_retry",
        "partition",
        "reader",
        "retries",
        "stream",
    )

    def __init__(self, partition: int, stream: str, reader: StreamReader):
        self.partition = partition
        self.stream = stream
        self.reader = reader
        self.acks: list[str] = []
        self.retries: dict[str, _Retry] = {}
        self.next_retry = math.inf
        self.next_claim = 0.0  # look for stale entries at once on start
        self.claim_cursor = "0-0"
        self.held: list[StreamEntry] = []  # read but not started (grace, max_events)

    def next_timer(self) -> float:
        return min(self.next_retry, self.next_claim)


class EventConsumer:
    """Runs ``handler`` over ``intent:events`` (each of ``partitions`` streams) as one
    consumer of ``config.group``.

    ``client`` must decode responses (``decode_responses=True``, with
    ``encoding_errors="surrogateescape"``) and have a socket timeout
    longer than ``config.block``; :meth:`from_settings` builds such a client.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        handler: EventHandler,
        config: ConsumerConfig,
        *,
        dead_letter_maxlen: int = DEFAULTS.events_maxlen,
        partitions: int = DEFAULTS.event_partitions,
        clock: Clock = time.monotonic,
        rand: Callable[[], float] = random.random,
    ):
        encoder = client.get_encoder()
        if not encoder.decode_responses or encoder.encoding_errors != "surrogateescape":
            # An entry holding a byte that is not UTF-8 must not stop the reader: with
            # surrogateescape it is read (and dead-lettered, its bytes written back intact).
            raise ValueError(
                "EventConsumer needs a client with decode_responses=True and "
                'encoding_errors="surrogateescape"'
            )
        timeout = resp.socket_timeout(client)
        if timeout is not None and timeout <= config.block:
            raise ValueError(
                f"the client's socket_timeout ({timeout} s) must exceed the read block "
                f"({config.block} s), or every idle read fails"
            )
        self.client = client
        self.keys = keys
        self.handler = handler
        self.config = config
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.partitions = partitions
        self.dead_letters = DeadLetters(client, keys, dead_letter_maxlen, partitions)
        self.stats = ConsumerStats()
        self._clock = clock
        self._rand = rand
        self._lanes = [
            _Lane(
                p,
                keys.event_stream(p),
                StreamReader(
                    client,
                    keys.event_stream(p),
                    config.group,
                    config.consumer,
                    clock,
                    unblockable=partitions > 1,
                ),
            )
            for p in range(partitions)
        ]
        self._turn = 0  # the lane looked at first when several replies wait
        self._delivery = Delivery(config.group, config.consumer)
        self._log = {"group": config.group, "consumer": config.consumer}
        self._stop_at: float | None = None
        self._wake = threading.Event()
        self._needs_recovery = True
        self._group_lost = False
        self._remaining: int | None = None
        self._last_batch_seconds = 0.0

    @classmethod
    def from_settings(
        cls,
        handler: EventHandler,
        group: str,
        consumer: str | None = None,
        *,
        settings: Settings | None = None,
        **overrides: object,
    ) -> EventConsumer:
        """A consumer configured by ``INTENT_*`` settings, on its own Redis client."""
        settings = settings or get_settings()
        config = ConsumerConfig.from_settings(settings, group, consumer, **overrides)
        client = stream_client(settings, block=config.block)
        return cls(
            client,
            Keys(settings.key_prefix),
            handler,
            config,
            dead_letter_maxlen=settings.events_maxlen,
            partitions=settings.event_partitions,
        )

    # -- control ------------------------------------------------------------------------
    def ensure_group(self, start_id: str | None = None) -> bool:
        """Create the group (and the stream) on each partition unless it exists there; True
        if it was created on any."""
        created = False
        for lane in self._lanes:
            try:
                self.client.xgroup_create(
                    lane.stream,
                    self.config.group,
                    id=start_id or self.config.start_id,
                    mkstream=True,
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    continue
                raise
            created = True
            logger.info("created consumer group %s", self.config.group, extra=self._lane_log(lane))
        return created

    def _lane_log(self, lane: _Lane) -> dict[str, Any]:
        if self.partitions == 1:
            return self._log
        return {**self._log, "partition": lane.partition}

    def stop(self) -> None:
        """Ask the run to stop: the event in hand is finished and acknowledged first (safe
        from any thread or a signal handler)."""
        if self._stop_at is None:
            self._stop_at = self._clock()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def close(self) -> None:
        for lane in self._lanes:
            lane.reader.close()
        self.client.close()

    def run(
        self, *, install_signal_handlers: bool = True, max_events: int | None = None
    ) -> ConsumerStats:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT, when called from the main thread
        with ``install_signal_handlers``), or until ``max_events`` new entries were read and
        handled. Returns what it did."""
        signals = on_signals(self._on_signal) if install_signal_handlers else nullcontext()
        with signals:
            return self._run(max_events)

    def _run(self, max_events: int | None) -> ConsumerStats:
        token = _current_delivery.set(self._delivery)
        self._remaining = max_events
        clean = False
        try:
            self.ensure_group()
            logger.info(
                "consuming %s as %s/%s",
                self._lanes[0].stream
                if self.partitions == 1
                else f"{self.partitions} partitions of {self._lanes[0].stream}",
                self.config.group,
                self.config.consumer,
                extra=self._log,
            )
            self._loop()
            clean = True
        finally:
            self._shutdown(clean)
            _current_delivery.reset(token)
        return self.stats

    # -- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                if not self._step():
                    return
                failures = 0
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failures += 1
                for lane in self._lanes:
                    lane.acks.extend(lane.reader.reset())
                self._needs_recovery = True
                wait = min(5.0, 0.1 * 2 ** min(failures, 6))
                logger.warning(
                    "Redis unavailable (%s); retrying in %.1f s", exc, wait, extra=self._log
                )
                self._wake.wait(wait)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                logger.warning("consumer group vanished; creating it again", extra=self._log)
                for lane in self._lanes:
                    # A new group has no pending entries to acknowledge; a group that is
                    # still there has them back as retries by the recovery.
                    lane.acks.clear()
                    lane.retries.clear()
                    lane.next_retry = math.inf
                    lane.reader.reset()
                self._group_lost = self._needs_recovery = True

    def _step(self) -> bool:
        """One read and the handling of its batch (plus any retries and takeovers due);
        False once ``max_events`` were taken and handled."""
        if self._needs_recovery:
            if self._group_lost:
                self.ensure_group()
                self._group_lost = False
            for lane in self._lanes:
                self._recover(lane)
            self._needs_recovery = False
        for lane in self._lanes:
            if not lane.reader.outstanding:
                self._maintain(lane)
                if self.stopping:
                    return True
                count = self._read_count()
                if count:
                    lane.reader.send(self._take_acks(lane), count, self._block_ms(lane))
        if self._remaining is not None and self._remaining <= 0:
            return False
        current = self._next_lane()
        if current is None:
            # Too many failed events wait for a retry: read nothing new until some are due.
            self._wake.wait(max(0.0, self._next_timer() - self._clock()))
            return True
        reader = current.reader
        entries = reader.receive()
        if not entries:
            return True
        delivered_after = reader.sent_at
        if self._remaining is not None:
            if len(entries) > self._remaining:
                # Reads of several partitions were out at once: what is past max_events is
                # released at the end, for others (or the next run) to take at once.
                current.held.extend(entries[self._remaining :])
                entries = entries[: self._remaining]
            self._remaining -= len(entries)
        if self._read_ahead(current):
            reader.send(self._take_acks(current), self._read_count(), self._block_ms(current))
        self._handle(current, entries, None, delivered_after)
        return True

    def _next_lane(self) -> _Lane | None:
        """The lane whose read to take next: the only one, or whichever's reply came first,
        in turns, so a partition with a backlog does not starve the others."""
        lanes = self._lanes
        if len(lanes) == 1:
            return lanes[0] if lanes[0].reader.outstanding else None
        waiting = [lane for lane in lanes if lane.reader.outstanding]
        if len(waiting) <= 1:
            return waiting[0] if waiting else None
        readers = [lane.reader for lane in waiting]
        while True:
            start = next((i for i, ln in enumerate(waiting) if ln.partition >= self._turn), 0)
            index = next_ready(readers, start, self.config.block)
            if index is not None:
                lane = waiting[index]
                self._turn = (lane.partition + 1) % self.partitions
                return lane

    def _read_count(self) -> int:
        lanes = self._lanes
        retrying = (
            len(lanes[0].retries) if len(lanes) == 1 else sum(len(ln.retries) for ln in lanes)
        )
        if retrying >= self.config.max_retrying:
            return 0
        if self._remaining is None:
            return self.config.batch_size
        return max(0, min(self.config.batch_size, self._remaining))

    def _read_ahead(self, lane: _Lane) -> bool:
        # Only while batches are quick: entries read ahead wait for the batch in hand, and
        # must not sit long enough for another consumer to take them over. Never past a due
        # timer either, or retries and takeovers would wait behind reads.
        return (
            not self.stopping
            and self._last_batch_seconds < self.config.claim_idle / 10
            and self._clock() < lane.next_timer()
            and self._read_count() > 0
        )

    def _next_timer(self) -> float:
        return min(lane.next_timer() for lane in self._lanes)

    def _block_ms(self, lane: _Lane) -> int:
        # Every lane's read ends by the first timer due on any lane: a lane is looked after
        # (retries, takeovers) between its reads, and another lane's blocked read must not
        # hold that up.
        timer = lane.next_timer() if len(self._lanes) == 1 else self._next_timer()
        wait = min(self.config.block, timer - self._clock())
        return max(1, int(wait * 1000))

    def _take_acks(self, lane: _Lane) -> list[str]:
        # Emptied in place: _handle appends to this very list while a batch runs.
        acks = lane.acks.copy()
        lane.acks.clear()
        return acks

    def _flush_acks(self, lane: _Lane) -> None:
        acks = self._take_acks(lane)
        if acks:
            try:
                self.client.xack(lane.stream, self.config.group, *acks)
            except redis.RedisError:
                lane.acks[:0] = acks
                raise

    # -- handling -----------------------------------------------------------------------
    def _handle(
        self,
        lane: _Lane,
        entries: Sequence[StreamEntry],
        deliveries: Mapping[str, int] | None,
        delivered_after: float,
    ) -> None:
        clock = self._clock
        started = clock()
        results = parse_entries([fields for _, fields in entries])
        handlers = self.handler.by_type
        delivery = self._delivery
        stats = self.stats
        acks = lane.acks
        grace = self.config.shutdown_grace
        renew_at = delivered_after + self.config.lease_renewal
        # Ours since they were delivered: entries read while another batch (of this lane, or
        # another partition's) was handled have waited since then, and one taken over by
        # another consumer meanwhile is idle for less than that (the renewal skips it).
        held_since = min(started, delivered_after)
        lost: set[str] = set()
        index = handled = 0
        try:
            for index, (entry_id, fields) in enumerate(entries):
                if self._stop_at is not None and clock() - self._stop_at >= grace:
                    lane.held.extend(entries[index:])
                    break
                if clock() >= renew_at:
                    lost |= self._renew(lane, [e for e, _ in entries[index:]], held_since)
                    held_since = clock()
                    renew_at = held_since + self.config.lease_renewal
                if lost and entry_id in lost:
                    continue
                count = deliveries.get(entry_id, 1) if deliveries else 1
                item = results[index]
                if isinstance(item, Event):
                    fns = handlers.get(item.type)
                    if fns is None:
                        acks.append(entry_id)  # this group has no interest in the type
                        stats.skipped += 1
                        continue
                    delivery.entry_id = entry_id
                    delivery.deliveries = count
                    try:
                        for fn in fns:
                            fn(item)
                    except RejectEvent as exc:
                        self._reject(lane, entry_id, fields, item, exc, count)
                    except RetryLater as exc:
                        self._defer(lane, entry_id, item, exc, count)
                    except Exception as exc:
                        self._failed(lane, entry_id, fields, item, exc, count)
                    else:
                        acks.append(entry_id)
                        handled += 1
                else:
                    self._unparsed(lane, entry_id, fields, item, count)
        except (KeyboardInterrupt, SystemExit):
            # Stopped at once (a second signal): the rest of the batch, the event in hand
            # included, is released at shutdown for others to take over without waiting.
            lane.held.extend(entries[index:])
            raise
        finally:
            stats.handled += handled
        self._last_batch_seconds = clock() - started

    def _extra(
        self, lane: _Lane, entry_id: str, event: Event | None, deliveries: int
    ) -> dict[str, Any]:
        return {
            **self._lane_log(lane),
            "stream_id": entry_id,
            "event_id": event.id if event is not None else None,
            "event_type": event.type.value if event is not None else None,
            "deliveries": deliveries,
        }

    def _failed(
        self,
        lane: _Lane,
        entry_id: str,
        fields: dict[str, str],
        event: Event,
        exc: Exception,
        deliveries: int,
    ) -> None:
        """The handler raised: deliver again after the backoff, or give up."""
        self.stats.failures += 1
        extra = self._extra(lane, entry_id, event, deliveries)
        error = f"{type(exc).__name__}: {exc}"
        if gives_up(self.config, deliveries):
            logger.error(
                "handler failed on delivery %d of %d, dead-lettering: %s",
                deliveries,
                self.config.max_deliveries,
                error,
                extra=extra,
                exc_info=exc,
            )
            self._dead_letter(lane, entry_id, fields, FAILED, error, deliveries)
            return
        wait = retry_delay(self.config, deliveries, self._rand)
        logger.warning(
            "handler failed on delivery %d of %d, retrying in %.2f s: %s",
            deliveries,
            self.config.max_deliveries,
            wait,
            error,
            extra=extra,
            exc_info=exc,
        )
        self._schedule(lane, entry_id, deliveries, wait, min_idle=wait)

    def _defer(
        self, lane: _Lane, entry_id: str, event: Event, exc: RetryLater, deliveries: int
    ) -> None:
        self.stats.deferrals += 1
        logger.info(
            "handler deferred the event by %.2f s: %s",
            exc.delay,
            exc.reason,
            extra=self._extra(lane, entry_id, event, deliveries),
        )
        self._schedule(lane, entry_id, deliveries, exc.delay, min_idle=exc.delay, deferred=True)

    def _reject(
        self,
        lane: _Lane,
        entry_id: str,
        fields: dict[str, str],
        event: Event,
        exc: RejectEvent,
        deliveries: int,
    ) -> None:
        error = str(exc) or "rejected by its handler"
        logger.error(
            "handler rejected the event, dead-lettering: %s",
            error,
            extra=self._extra(lane, entry_id, event, deliveries),
        )
        self._dead_letter(lane, entry_id, fields, REJECTED, error, deliveries)

    def _unparsed(
        self, lane: _Lane, entry_id: str, fields: dict[str, str], exc: Exception, deliveries: int
    ) -> None:
        extra = self._extra(lane, entry_id, None, deliveries)
        if is_unknown_type(fields):
            event_type = fields.get("type")
            extra["event_type"] = event_type
            extra["event_id"] = fields.get("id")
            if self.config.unknown_type == "ack":
                logger.warning(
                    "unknown event type %r: acknowledged unhandled", event_type, extra=extra
                )
                lane.acks.append(entry_id)
                self.stats.skipped += 1
                return
            logger.error("unknown event type %r: dead-lettering", event_type, extra=extra)
            error = f"unknown event type {event_type!r}"
            self._dead_letter(lane, entry_id, fields, UNKNOWN_TYPE, error, deliveries)
            return
        reason = describe_error(exc)
        logger.error("malformed entry, dead-lettering: %s", reason, extra=extra)
        self._dead_letter(lane, entry_id, fields, MALFORMED, reason, deliveries)

    def _dead_letter(
        self,
        lane: _Lane,
        entry_id: str,
        fields: dict[str, str],
        reason: str,
        error: str,
        deliveries: int,
    ) -> None:
        letter = dead_letter_fields(
            fields,
            reason=reason,
            error=error,
            group=self.config.group,
            consumer=self.config.consumer,
            deliveries=deliveries,
            original_id=entry_id,
        )
        self.dead_letters.add(self.config.group, entry_id, letter, lane.partition)
        lane.retries.pop(entry_id, None)
        self.stats.dead_lettered += 1

    # -- retries, takeovers, leases -----------------------------------------------------
    def _schedule(
        self,
        lane: _Lane,
        entry_id: str,
        deliveries: int,
        wait: float,
        *,
        min_idle: float,
        deferred: bool = False,
    ) -> None:
        due = self._clock() + wait
        lane.retries[entry_id] = _Retry(due, deliveries, min_idle, deferred)
        lane.next_retry = min(lane.next_retry, due)

    def _maintain(self, lane: _Lane) -> None:
        now = self._clock()
        if lane.retries and now >= lane.next_retry:
            self._retry_due(lane, now)
        if now >= lane.next_claim:
            self._claim_stale(lane, now)

    def _retry_due(self, lane: _Lane, now: float) -> None:
        retries = lane.retries
        due = [(e, r) for e, r in retries.items() if r.due <= now][: self.config.batch_size]
        for entry_id, _ in due:
            del retries[entry_id]
        lane.next_retry = min((r.due for r in retries.values()), default=math.inf)
        stream = lane.stream
        group, consumer = self.config.group, self.config.consumer
        # The guard (min idle) skips an entry someone else claimed since: its idle time was
        # reset then. 90 %: server milliseconds against this process's clock.
        min_idle_ms = int(min(r.min_idle for _, r in due) * 900)
        retried: list[Any] = [entry_id for entry_id, retry in due if not retry.deferred]
        deferred: list[Any] = [entry_id for entry_id, retry in due if retry.deferred]
        entries: list[StreamEntry] = []
        if retried:
            claimed = cast(
                list[tuple[str, "dict[str, str] | None"]],
                self.client.xclaim(stream, group, consumer, min_idle_ms, retried),
            )
            entries += [(e, f) for e, f in claimed if f is not None]
            self.stats.retries += len(entries)
        if deferred:
            # JUSTID: a deferral is not a delivery, so the count stays; the fields follow.
            kept = self.client.xclaim(stream, group, consumer, min_idle_ms, deferred, justid=True)
            pipe = self.client.pipeline(transaction=False)
            for entry_id in cast(list[str], kept):
                pipe.xrange(stream, entry_id, entry_id)
            entries += [rows[0] for rows in pipe.execute() if rows]
        if not entries:
            return
        deliveries = {
            entry_id: retry.deliveries + (0 if retry.deferred else 1) for entry_id, retry in due
        }
        self._handle(lane, sorted(entries, key=lambda e: id_order(e[0])), deliveries, now)

    def _claim_stale(self, lane: _Lane, now: float) -> None:
        # Our own handled entries must not look stale to ourselves.
        self._flush_acks(lane)
        cursor, claimed, deleted = cast(
            AutoClaimReply,
            self.client.xautoclaim(
                lane.stream,
                self.config.group,
                self.config.consumer,
                int(self.config.claim_idle * 1000),
                start_id=lane.claim_cursor,
                count=self.config.batch_size,
            ),
        )
        lane.claim_cursor = cursor
        # A cursor not back at 0-0 means more of the pending list is left to look at.
        lane.next_claim = now if cursor != "0-0" else now + self.config.claim_interval
        if deleted:
            self.stats.trimmed += len(deleted)
            logger.warning(
                "%d pending entries were trimmed from the stream before being handled",
                len(deleted),
                extra=self._lane_log(lane),
            )
        entries = [(e, f) for e, f in claimed if f is not None]
        if not entries:
            return
        pipe = self.client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(
                lane.stream, self.config.group, entry_id, entry_id, 1, self.config.consumer
            )
        deliveries = {
            entry_id: int(rows[0]["times_delivered"]) if rows else 1
            for (entry_id, _), rows in zip(entries, pipe.execute(), strict=True)
        }
        for entry_id, _ in entries:
            lane.retries.pop(entry_id, None)  # our own, idle that long: handle it now
        self.stats.claimed += len(entries)
        logger.info(
            "took over %d entries idle for over %.1f s",
            len(entries),
            self.config.claim_idle,
            extra=self._lane_log(lane),
        )
        live: list[StreamEntry] = []
        for entry_id, fields in entries:
            if deliveries[entry_id] > self.config.max_deliveries:
                # Delivered that often with no outcome: whoever had it died handling it.
                # Running it again could take down this consumer too.
                error = (
                    f"delivered {deliveries[entry_id] - 1} times without being acknowledged "
                    "(its consumers died or stalled while handling it)"
                )
                logger.error(
                    "abandoned entry, dead-lettering: %s",
                    error,
                    extra=self._extra(lane, entry_id, None, deliveries[entry_id]),
                )
                self._dead_letter(lane, entry_id, fields, ABANDONED, error, deliveries[entry_id])
            else:
                live.append((entry_id, fields))
        if live:
            self._handle(lane, live, deliveries, now)

    def _renew(self, lane: _Lane, entry_ids: list[Any], held_since: float) -> set[str]:
        """Reset the idle time of entries still ours (XCLAIM JUSTID, which does not count a
        delivery); returns those another consumer took over meanwhile."""
        min_idle_ms = int(max(0.0, self._clock() - held_since) * 900)
        pipe = self.client.pipeline(transaction=False)
        acks = self._take_acks(lane)
        if acks:
            pipe.xack(lane.stream, self.config.group, *acks)
        pipe.xclaim(
            lane.stream,
            self.config.group,
            self.config.consumer,
            min_idle_ms,
            entry_ids,
            justid=True,
        )
        try:
            kept = set(pipe.execute()[-1])
        except redis.RedisError:
            lane.acks[:0] = acks
            raise
        lost = set(entry_ids) - kept
        if lost:
            logger.warning(
                "%d entries of a slow batch were taken over by another consumer",
                len(lost),
                extra=self._lane_log(lane),
            )
        return lost

    def _recover(self, lane: _Lane) -> None:
        """Schedule this consumer's own pending entries on a partition (from a previous run
        under the same name, or replies lost with a connection) as retries after their
        backoff."""
        self._flush_acks(lane)
        start = "-"
        while True:
            rows = cast(
                PendingRows,
                self.client.xpending_range(
                    lane.stream, self.config.group, start, "+", 1000, self.config.consumer
                ),
            )
            for row in rows:
                entry_id = row["message_id"]
                if entry_id in lane.retries:
                    continue
                deliveries = int(row["times_delivered"])
                idle = int(row["time_since_delivered"]) / 1000
                wait = retry_delay(self.config, deliveries, self._rand)
                self._schedule(lane, entry_id, deliveries, max(0.0, wait - idle), min_idle=wait)
            if len(rows) < 1000:
                break
            start = "(" + rows[-1]["message_id"]

    # -- stopping -----------------------------------------------------------------------
    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping:
            # A second signal: stop now; the event in hand stays pending for redelivery.
            raise KeyboardInterrupt
        logger.info("%s: finishing the event in hand, then stopping", sig.name, extra=self._log)
        self.stop()

    def _shutdown(self, clean: bool) -> None:
        try:
            if clean:
                self._wake_idle_reads()
            for lane in self._lanes:
                reader = lane.reader
                if not reader.outstanding:
                    continue
                if not clean:
                    lane.acks.extend(reader.reset())
                    continue
                # Entries read ahead are ours now: handle them within the grace period
                # (those past max_events, read on another partition at once, are released).
                entries = reader.receive()
                if entries and self._remaining is not None and self._remaining <= 0:
                    lane.held.extend(entries)
                elif entries:
                    self._handle(lane, entries, None, reader.sent_at)
            for lane in self._lanes:
                self._flush_acks(lane)
            for lane in self._lanes:
                self._release(lane)
        except redis.RedisError as exc:
            logger.warning(
                "could not finish cleanly (%s): pending entries will be taken over after "
                "%.1f s idle",
                exc,
                self.config.claim_idle,
                extra=self._log,
            )
        finally:
            for lane in self._lanes:
                lane.reader.close()
        logger.info("stopped: %s", self.stats.as_dict(), extra=self._log)

    def _wake_idle_reads(self) -> None:
        """With several partitions, end the reads still blocked on idle streams now (CLIENT
        UNBLOCK: their reply is then empty), rather than waiting out their BLOCK."""
        if self.partitions == 1:
            return
        for lane in self._lanes:
            if lane.reader.outstanding and not lane.reader.ready():
                lane.reader.unblock()

    def _release(self, lane: _Lane) -> None:
        """Mark entries this consumer will not handle as idle, so others take them over at
        their next look rather than after ``claim_idle``; a waiting retry keeps its backoff."""
        claim_idle_ms = int(self.config.claim_idle * 1000)
        now = self._clock()
        pipe = self.client.pipeline(transaction=False)
        group, consumer, stream = self.config.group, self.config.consumer, lane.stream
        held: list[Any] = [entry_id for entry_id, _ in lane.held]
        if held:
            pipe.xclaim(stream, group, consumer, 0, held, idle=claim_idle_ms, justid=True)
        for entry_id, retry in lane.retries.items():
            idle = max(0, claim_idle_ms - int(max(0.0, retry.due - now) * 1000))
            pipe.xclaim(stream, group, consumer, 0, [entry_id], idle=idle, justid=True)
        if held or lane.retries:
            pipe.execute()
        self.stats.released += len(held) + len(lane.retries)
        lane.held = []
        lane.retries.clear()
