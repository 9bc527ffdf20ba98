"""Idle callers' leases (intent/breaker/idle.py): given back once idle, never while their
slot calls again, and again later when the store was away."""

from __future__ import annotations

import threading
import time

from intent.breaker.idle import HeldLeases
from intent.breaker.stores.base import StoreUnavailable, Ticket, TicketKind

TICKET = Ticket(generation=0, kind=TicketKind.CALL, bucket=1, origin="test")


def test_an_idle_lease_is_given_back_once_and_a_busy_one_never() -> None:
    given: list[tuple[str, str]] = []
    leases = HeldLeases(idle=0.1, lapse=5.0, give_back=lambda n, s, t: given.append((n, s)))
    leases.hold("svc", "idle", TICKET)
    leases.hold("svc", "busy", TICKET)
    leases.take("busy")  # called again: its acquire frees the lease
    now = time.monotonic()
    assert leases.release_idle(now) == 0  # not idle long enough yet
    assert leases.release_idle(now + 0.2) == 1
    assert leases.release_idle(now + 0.4) == 0
    assert given == [("svc", "idle")]


def test_an_acquire_waits_for_the_give_back_of_its_own_slot() -> None:
    """A give-back on its way when the slot calls again would free the new lease."""
    started, finish = threading.Event(), threading.Event()
    order: list[str] = []

    def give_back(name: str, slot: str, ticket: Ticket) -> None:
        started.set()
        finish.wait(5)
        order.append("given back")

    leases = HeldLeases(idle=0.0, lapse=5.0, give_back=give_back)
    leases.hold("svc", "p1", TICKET)
    releaser = threading.Thread(target=leases.release_idle)
    releaser.start()
    assert started.wait(5)
    caller = threading.Thread(target=lambda: (leases.take("p1"), order.append("acquire")))
    caller.start()
    time.sleep(0.2)
    assert order == []  # the acquire waits
    finish.set()
    releaser.join(5)
    caller.join(5)
    assert order == ["given back", "acquire"]


def test_a_give_back_the_store_refused_is_tried_again_until_the_lease_lapses() -> None:
    attempts: list[str] = []

    def give_back(name: str, slot: str, ticket: Ticket) -> None:
        attempts.append(slot)
        raise StoreUnavailable("Redis is away")

    leases = HeldLeases(idle=0.1, lapse=1.0, give_back=give_back)
    leases.hold("svc", "p1", TICKET)
    now = time.monotonic()
    leases.release_idle(now + 0.2)
    leases.release_idle(now + 0.5)
    assert len(leases) == 1  # kept: the store may come back before the lease lapses
    leases.release_idle(now + 1.5)
    assert len(leases) == 0 and attempts == ["p1"] * 3


def test_a_slow_call_rate_trip_made_by_an_idle_give_back_is_announced() -> None:
    # The give-back of an idle caller's slow success is the call that trips the breaker:
    # its transition is this process's to log and hand to the listeners, as any other.
    import time as clock

    from intent.breaker import CircuitBreaker, CircuitConfig, MemoryStore, TransitionListener

    seen: list[tuple[str, str, str]] = []
    config = CircuitConfig(
        slow_call_duration=0.2, slow_call_rate_threshold=50, min_throughput=1, half_open_timeout=30
    )
    store = MemoryStore()
    breaker = CircuitBreaker(
        "slow-give-back",
        config,
        store=store,
        listeners=[TransitionListener(lambda *change: seen.append(change))],
    )
    breaker.call(lambda: clock.sleep(0.25))
    deadline = clock.monotonic() + 5
    while not seen and clock.monotonic() < deadline:
        clock.sleep(0.05)
    assert store.snapshot("slow-give-back").state == "open"
    assert seen == [("slow-give-back", "closed", "open")]
