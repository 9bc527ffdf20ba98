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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

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


class MendedChannel:
    """The channel's mends, mixed into kombu's Redis channel and its Sentinel channel."""

    connection: Any

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


def install() -> None:
    """``redis://`` and ``rediss://`` broker URLs use this transport in this process, and
    ``sentinel://`` ones its Sentinel twin (the URLs themselves, as logs and Flower show
    them, stay as they are)."""
    from kombu.transport import TRANSPORT_ALIASES

    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
    # Every item, delivery and restore the transport reads (kombu types it with its options).
    kombu_redis.loads = envelope_loads  # type: ignore[assignment]
