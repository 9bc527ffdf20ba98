"""The Redis broker transport, with two kombu gaps closed.

When the worker loses its broker connection, Celery closes it, and closing a channel
restores the messages it holds unacknowledged; by then kombu's channel may have no
connection parameters left (``transport.client`` is None), so the restore, or the
rejection of a step left for redelivery, fails with ``AttributeError`` (kombu #970, #582)
instead of a connection error: Celery treats it as unrecoverable and the worker exits on
every Redis restart that finds work in flight. Here that case is the connection error it
is, which Celery and kombu already handle (the messages stay unacknowledged in Redis and
the visibility sweep brings them back).

A blocked BRPOP that the server ends because a Sentinel demoted it to a replica (an
``UNBLOCKED ... instance state changed`` error reply) ended the worker as an unrecoverable
error; here it is the connection error it is, and the worker reconnects through the
Sentinels.

And a message on the queue's list that is not a kombu envelope at all (not JSON, no
properties, headers that are not an object: anyone who can write to Redis can put one
there) made kombu's message constructor raise inside the event loop, which ends the
worker; here it is dead-lettered with its reason (the worker's gate, tasks/consumer.py,
sees every well-formed envelope). Items are read as plain JSON (:func:`envelope_loads`):
kombu's own decoder revives type markers in an envelope's headers, or raises whatever their
constructor raises, and an item nested deeper than the parser goes raised RecursionError;
both ended the worker.

And a message the worker had taken (kombu's BRPOP) when the broker went away, before kombu
could record it as unacknowledged (a second write), was lost: the pop had reached the
replica a Sentinel then promoted (or the append-only file of a Redis that restarted), the
record never did, so no queue and no unacked hash held it anywhere. So was one whose record
the broker refused (OOM: BRPOP pops where a write is refused), and the refusal ended the
worker. Here such a message is kept in the process (:data:`RESCUED`) and put back at the
head of its queue, marked redelivered, by the next channel that consumes, on whatever
master the Sentinels name by then, once it takes writes. It may then run twice (if the
record did reach Redis after all), which every step is built for. Each such message is also
written to the worker's disk (``INTENT_RESCUE_DIR``) until it is put back, so a worker
killed while it waits for the broker loses none: the next worker started on the host with
the same broker puts it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import redis
from kombu.transport import redis as kombu_redis

from intent.resp import DEMOTED

log = logging.getLogger("intent.worker")


def envelope_problem(envelope: Any) -> str | None:
    """What is wrong with a decoded kombu envelope, or None."""
    if not isinstance(envelope, Mapping):
        return f"the envelope must be an object, not {type(envelope).__name__}"
    properties = envelope.get("properties")
    if not isinstance(properties, Mapping):
        return "the envelope has no properties object"
    if not isinstance(properties.get("delivery_tag"), str | int):
        return "the envelope has no delivery tag"
    if not isinstance(properties.get("delivery_info", {}), Mapping):
        return "the envelope's delivery_info is not an object"
    if properties.get("body_encoding") not in (None, "base64", "utf-8"):
        return "the envelope's body encoding is unknown"
    headers = envelope.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        return f"the envelope's headers must be an object, not {type(headers).__name__}"
    body = envelope.get("body")
    if body is not None and not isinstance(body, str):
        return f"the envelope's body must be text, not {type(body).__name__}"
    for key in ("content-type", "content-encoding"):
        if not isinstance(envelope.get(key), str | None):
            return f"the envelope's {key} must be text"
    return None


def envelope_loads(text: str) -> Any:
    """A broker item as plain JSON. kombu's decoder turns ``{"__type__": ..., "__value__":
    ...}`` anywhere in it, headers included, into bytes, Decimal, UUID or datetime, or raises
    what their constructor raises (InvalidOperation, AttributeError...): here such an object
    stays one, and the gate refuses it naming its header, answering the sender."""
    return json.loads(text)


NOT_AN_ENVELOPE = (ValueError, TypeError, RecursionError)  # what envelope_loads raises


def dead_letter(reason: str, envelope: Any) -> None:
    """Keep a message the worker could not even read as a message."""
    log.error("refused a broker message: %s", reason)
    try:
        from intent.poison import DeadTasks
        from intent.runtime import get_runtime

        rt = get_runtime()
        try:
            raw = json.dumps(envelope, default=repr)
        except (TypeError, ValueError, RecursionError):
            raw = repr(type(envelope))
        DeadTasks(rt.redis, rt.keys, rt.settings.events_maxlen).add(
            field="envelope",
            reason=reason,
            task=None,
            task_id=None,
            content_type=None,
            headers=None,
            body=raw,
        )
    except Exception as exc:
        log.error("could not keep the refused broker message: %s", exc)


class Held(NamedTuple):
    """A message taken but not recorded, as kombu's unacked hash would have held it, and
    the file that keeps it on disk meanwhile (None: memory only)."""

    envelope: Any
    exchange: str
    routing_key: str
    path: Path | None = None


class Rescued:
    """Messages this process took from the broker but could not record as unacknowledged,
    each also kept in a file of ``<spool>/<broker's hash>/`` until it is put back."""

    def __init__(self, spool: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._held: list[Held] = []
        self._spool: Path | None = None
        self.spool_in(spool)
        self._adopted: set[str] = set()

    def keep(self, envelope: Any, exchange: str, routing_key: str, broker: str = "") -> None:
        path = self._write(broker, {"envelope": envelope, "exchange": exchange, "key": routing_key})
        with self._lock:
            self._held.append(Held(envelope, exchange, routing_key, path))

    def take(self, broker: str = "") -> list[Held]:
        """What is held, with what an earlier worker on this host left for ``broker``."""
        self._adopt(broker)
        with self._lock:
            held, self._held = self._held, []
        return held

    def give_back(self, held: list[Held]) -> None:
        with self._lock:
            self._held[:0] = held

    def done(self, held: list[Held]) -> None:
        """``held`` is back on its queue: its files go."""
        for item in held:
            if item.path is not None:
                with contextlib.suppress(OSError):
                    item.path.unlink()

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def task_ids(self) -> list[Any]:
        with self._lock:
            return [_task_id(item.envelope) for item in self._held]

    def spool_in(self, spool: str | Path | None) -> None:
        """Keep messages in files under ``spool`` from now on (None or "": memory only)."""
        self._spool = Path(spool) if spool else None

    def where(self) -> str:
        return str(self._spool) if self._spool is not None else "memory only"

    def _folder(self, spool: Path, broker: str) -> Path:
        return spool / hashlib.sha256(broker.encode()).hexdigest()[:16]

    def _write(self, broker: str, item: dict[str, Any]) -> Path | None:
        if self._spool is None:
            return None
        folder = self._folder(self._spool, broker)
        path = folder / f"{uuid.uuid4().hex}.json.{os.getpid()}"  # this process's claim
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = path.with_name(path.name + ".partial")
            with open(partial, "w", encoding="utf-8") as fh:
                json.dump(item, fh)
                fh.flush()
                os.fsync(fh.fileno())
            partial.replace(path)
        except (OSError, TypeError, ValueError) as exc:
            log.error("could not keep the taken message on disk (%s): memory only", exc)
            return None
        return path

    def _adopt(self, broker: str) -> None:
        """Once per process and broker: claim (by renaming to this process's id) every
        file a worker no longer running left for ``broker``, and hold its message."""
        if broker in self._adopted or self._spool is None:
            return
        self._adopted.add(broker)
        folder = self._folder(self._spool, broker)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return  # nothing kept for this broker yet
        adopted = []
        for name in names:
            stem, _, owner = name.rpartition(".json.")
            if not stem or not owner.isdigit() or _alive(int(owner)):
                continue  # partial, or a running process's (this one's own included)
            path = folder / f"{stem}.json.{os.getpid()}"
            try:
                (folder / name).rename(path)  # the claim: one worker wins it
                with open(path, encoding="utf-8") as fh:
                    item = json.load(fh)
                adopted.append(Held(item["envelope"], item["exchange"], item["key"], path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("could not read a kept message, %s: %s", name, exc)
        if adopted:
            log.warning(
                "found %d message(s) a stopped worker took as the broker went away: "
                "they go back on their queue (task ids %s)",
                len(adopted),
                [_task_id(item.envelope) for item in adopted],
            )
            with self._lock:
                self._held[:0] = adopted


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: running
    return True


def _task_id(envelope: Any) -> Any:
    headers = envelope.get("headers") if isinstance(envelope, Mapping) else None
    return headers.get("id") if isinstance(headers, Mapping) else None


RESCUED = Rescued()  # its spool set by install(), from the settings


def _reraise_refusal(exc: BaseException) -> NoReturn:
    """Raise ``exc`` again, a refused write (an error reply: OOM, MISCONF; BRPOP takes a
    message where a write is refused, and nothing was written) as a connection error: the
    worker connects again and the message goes back once the broker takes writes, where an
    error reply was unrecoverable and ended the worker."""
    if isinstance(exc, redis.ResponseError):
        raise redis.ConnectionError(f"the broker refused a write: {exc}") from exc
    raise exc


class MendedQoS(kombu_redis.QoS):
    """kombu's ack emulation, keeping a taken message whose unacked record failed."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        try:
            super().append(message, delivery_tag)
        except (*self.channel.connection_errors, redis.ResponseError) as exc:
            delivery = message.delivery_info
            RESCUED.keep(
                message._raw,
                delivery["exchange"],
                delivery["routing_key"],
                _broker_of(self.channel),
            )
            log.warning(
                "took a message but could not record it (%s: %s): it goes back on its "
                "queue once the broker takes writes (task id %s)",
                type(exc).__name__,
                exc,
                _task_id(message._raw),
            )
            _reraise_refusal(exc)


class MendedChannel:
    """The channel's mends, mixed into kombu's Redis channel and its Sentinel channel."""

    connection: Any
    QoS = MendedQoS

    def _put_back_rescued(self) -> None:
        """Every message :data:`RESCUED` holds, back at the head of its queue (where the
        visibility sweep would restore it), in one transaction; kept on failure."""
        held = RESCUED.take(_broker_of(self))
        if not held:
            return
        channel: Any = self  # kombu's Redis channel, which this is mixed into
        try:
            with channel.conn_or_acquire() as client, client.pipeline() as pipe:
                for item in held:
                    channel._do_restore_message(
                        item.envelope, item.exchange, item.routing_key, pipe
                    )
                pipe.execute()
        except BaseException as exc:  # kept, tried again at the next consume
            RESCUED.give_back(held)
            _reraise_refusal(exc)
        RESCUED.done(held)
        log.warning("put back %d message(s) taken but not recorded", len(held))

    def _brpop_start(self, timeout: Any = None) -> Any:
        self._put_back_rescued()
        return super()._brpop_start(timeout)  # type: ignore[misc]

    def _connparams(self, asynchronous: bool = False) -> Any:
        connection = self.connection
        if connection is None or connection.client is None:
            raise redis.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except NOT_AN_ENVELOPE as exc:  # the item was not a JSON envelope
            dead_letter(f"not a broker message: {type(exc).__name__}: {exc}", None)
            return True
        except redis.ResponseError as exc:
            if DEMOTED not in str(exc):
                raise
            # The server ended the blocked BRPOP: a Sentinel demoted it to a replica. A
            # connection error, which the worker handles by connecting again (through the
            # Sentinels, to the new master), not an unrecoverable error that ends it.
            self.client.connection.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(f"the broker is no longer the master: {exc}") from exc

    def _get(self, queue: Any, *args: Any, **kwargs: Any) -> Any:
        self._put_back_rescued()
        try:
            return super()._get(queue, *args, **kwargs)  # type: ignore[misc]
        except NOT_AN_ENVELOPE as exc:
            dead_letter(f"not a broker message: {type(exc).__name__}: {exc}", None)
            raise kombu_redis.Empty() from exc


class Channel(MendedChannel, kombu_redis.Channel):
    pass


class SentinelChannel(MendedChannel, kombu_redis.SentinelChannel):
    pass


class MendedTransport:
    """Delivery through the gate, mixed into kombu's Redis transports."""

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            dead_letter(problem, message)
            return
        try:
            super()._deliver(message, queue)  # type: ignore[misc]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            dead_letter(f"could not be read as a message: {type(exc).__name__}: {exc}", message)


class Transport(MendedTransport, kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(MendedTransport, kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def _broker_of(channel: Any) -> str:
    """The broker a channel's messages belong to (its URL with the password: hashed, it
    names the spool's folder), so a message is only ever put back where it was taken."""
    known = getattr(channel, "_intent_broker", None)
    if known is None:
        try:
            client = channel.connection.client
            # Every URL of a failover list (Sentinels): the one in use changes with it.
            known = ";".join(client.alt) or str(client.as_uri(include_password=True))
        except Exception:
            known = ""
        channel._intent_broker = known
    return str(known)


def put_back_at_shutdown(app: Any) -> None:
    """At a worker's shutdown, the messages :data:`RESCUED` still holds (the broker never
    answered again while it ran) put back through a connection of its own; if the broker
    still does not answer, each one's task id logged as an error: they are lost."""
    if not len(RESCUED):
        return
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            if isinstance(channel, MendedChannel):
                channel._put_back_rescued()
    except Exception as exc:  # the broker is away: the spool (if any) keeps them
        log.error(
            "could not put back %d message(s) taken as the broker went away, the broker "
            "still away at shutdown (%s: %s): task ids %s; kept in %s (lost if memory "
            "only): the next worker started here with this broker puts them back",
            len(RESCUED),
            type(exc).__name__,
            exc,
            RESCUED.task_ids(),
            RESCUED.where(),
        )


def install() -> None:
    """``redis://`` and ``rediss://`` broker URLs use this transport in this process, and
    ``sentinel://`` ones its Sentinel twin (the URLs themselves, as logs and Flower show
    them, stay as they are)."""
    from kombu.transport import TRANSPORT_ALIASES

    from intent.settings import get_settings

    RESCUED.spool_in(get_settings().rescue_dir)

    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
    # Every item, delivery and restore the transport reads (kombu types it with its options).
    kombu_redis.loads = envelope_loads  # type: ignore[assignment]
