"""The Redis key schema: every key the service writes is built here, with its lifetime.

One prefix (``INTENT_KEY_PREFIX``, default ``intent:``) starts every key. Keys that a
single Lua script touches together share a ``{hash tag}`` so Redis Cluster keeps them in
one slot. Everything that is neither a stream nor durable state carries a TTL; the TTLs
live in settings and are named beside each key below.
"""

from __future__ import annotations

from dataclasses import dataclass

BREAKER_PARTS = ("state", "failures", "calls", "leases", "permits", "slow")
WAITING_PARTS = ("due", "entries", "leased", "deadlines", "pace")


@dataclass(frozen=True)
class Keys:
    prefix: str = "intent:"

    # -- events -------------------------------------------------------------------
    def event_stream(self, partition: int = 0) -> str:
        """One partition of the event bus: a stream, bounded by MAXLEN ~
        (settings.events_maxlen).

        Partition 0 is the contract's ``intent:events``, the whole bus when there is one
        partition (settings.event_partitions, the default); partition P > 0 is
        ``intent:events:P``. Each partition's name is the hash tag of the keys scripts write
        with it (``{intent:events:P}:...``): a key without braces hashes whole, so they
        share its Cluster slot, and each partition has a slot of its own. That holds
        because the prefix may hold no braces (settings.key_prefix's pattern)."""
        if partition == 0:
            return f"{self.prefix}events"
        return f"{self.prefix}events:{partition}"

    @property
    def events_stream(self) -> str:
        """The event bus with one partition (partition 0's stream): ``intent:events``."""
        return self.event_stream(0)

    def event_seen(self, event_id: str, partition: int = 0) -> str:
        """Marks an event id as published on its partition (TTL settings.event_dedup_ttl).
        Hash-tagged with the partition's stream so the publish script can touch both in
        one slot."""
        return f"{{{self.event_stream(partition)}}}:seen:{event_id}"

    def dead_letter_stream(self, partition: int = 0) -> str:
        """Events a consumer gave up on, with the error: a stream (MAXLEN ~ events_maxlen),
        one per partition, hash-tagged with its events stream: one script moves an entry
        between them."""
        return f"{{{self.event_stream(partition)}}}:dead"

    @property
    def dead_letters(self) -> str:
        """Partition 0's dead letters (all of them with one partition)."""
        return self.dead_letter_stream(0)

    def event_handled(self, group: str, event_id: str) -> str:
        """A handler's "done" mark for one event in one consumer group
        (TTL settings.event_dedup_ttl)."""
        return f"{self.prefix}handled:{group}:{event_id}"

    @property
    def dead_tasks(self) -> str:
        """Task messages a worker refused (undecodable, a wrong shape), with the reason and
        their raw bytes (bounded): a stream, MAXLEN ~ events_maxlen."""
        return f"{self.prefix}tasks:dead"

    # -- rate limits ------------------------------------------------------------------
    @property
    def rate_limits(self) -> str:
        """Prefix of the ``limits`` library's moving-window lists (each with a TTL of its
        period): ``intent:rl:LIMITER/<name>/<identifier>/...``."""
        return f"{self.prefix}rl"

    # -- caches -------------------------------------------------------------------
    def context_cache(self, context_id: str) -> str:
        """A context as last fetched: JSON with its fetch time. Fresh for
        settings.context_cache_ttl, kept (stale, for fallbacks) for context_cache_stale_ttl,
        the key's TTL."""
        return f"{self.prefix}ctx:{context_id}"

    # -- pattern state --------------------------------------------------------------
    def _pattern_tag(self, context_id: str, pattern_id: str) -> str:
        return f"{{{self.prefix}pattern:{context_id}:{pattern_id}}}"

    def pattern_state(self, context_id: str, pattern_id: str) -> str:
        """Durable: the last detection per (context, pattern), and the last live predictions
        (the prediction fallback). No TTL."""
        return f"{self._pattern_tag(context_id, pattern_id)}:state"

    def pattern_decision(self, context_id: str, pattern_id: str, request_id: str) -> str:
        """The decision taken for one request, so a redelivered step repeats it rather than
        re-deciding against state it already changed (TTL settings.result_expires)."""
        return f"{self._pattern_tag(context_id, pattern_id)}:decision:{request_id}"

    # -- requests -------------------------------------------------------------------
    def request_claim(self, request_id: str) -> str:
        """Who owns a request_id: holds the analysis id (TTL settings.result_expires)."""
        return f"{self.prefix}request:{request_id}"

    # -- steps waiting to run again ----------------------------------------------------
    def waiting(self, lane: str, part: str) -> str:
        """One of a lane's keys (``WAITING_PARTS``), all under the hash tag
        ``{<prefix>wait:LANE}``: ``due`` (zset of step ids by the time they may run),
        ``entries`` (hash of each step's message and why it waits), ``leased`` (zset of
        steps taken by a releaser, by the end of its lease), ``deadlines`` (zset of their
        analyses' deadlines): durable, they are the work itself; ``pace`` (the lane's
        token bucket): TTL an hour."""
        return f"{{{self.prefix}wait:{lane}}}:{part}"

    # -- circuit breakers -------------------------------------------------------------
    def breaker(self, name: str) -> str:
        """Hash tag shared by all of one breaker's keys."""
        return f"{{{self.prefix}cb:{name}}}"

    def breaker_key(self, name: str, part: str) -> str:
        """One of a breaker's keys (``BREAKER_PARTS``):
        ``state``: hash of state, generation, until, forced reason; durable, no TTL;
        ``failures``: zset of failure times; TTL circuit_failure_window;
        ``calls``: hash of calls per window bucket; TTL the window plus two buckets;
        ``leases``/``permits``: zsets of call and trial leases; TTL the longest lease;
        ``slow``: hash of calls that finished slower than circuit_slow_call_duration per
        window bucket (the same buckets as ``calls``); same TTL as ``calls``."""
        return f"{self.breaker(name)}:{part}"

    def retry_budget(self, name: str) -> str:
        """Hash of retries spent per window bucket of breaker ``name`` (the buckets of its
        ``calls`` hash, in the same slot: the budget script reads both)."""
        return f"{self.breaker(name)}:retries"

    @property
    def breaker_registry(self) -> str:
        """Set of known breaker names (for operators' listings)."""
        return f"{self.prefix}cb:names"

    # -- resilience drills ------------------------------------------------------------
    def drill(self, service: str) -> str:
        """The drill running against one downstream service: JSON (intent/drills.py), with
        a TTL that ends at the drill's expiry, so it stops by itself fleet-wide."""
        return f"{self.prefix}drill:{service}"

    # -- operations -------------------------------------------------------------------
    @property
    def health_snapshot(self) -> str:
        """The last health check's snapshot, JSON (TTL a few health intervals). Hash-tagged
        with the statuses: one script writes both."""
        return f"{{{self.prefix}health}}:snapshot"

    @property
    def health_status(self) -> str:
        """Hash of each component's last status, to log changes (TTL as the snapshot)."""
        return f"{{{self.prefix}health}}:status"

    @property
    def beat(self) -> str:
        """Prefix of celery-redbeat's schedule, lock and statics (redbeat_key_prefix)."""
        return f"{self.prefix}beat:"
