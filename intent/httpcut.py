"""An HTTP exchange cut at the running step's time limit, where nothing else cuts it.

On a threads worker nothing interrupts a task (``intent.pools``): a downstream call's
connect and read timeouts are cut to the step's time left, but a read timeout holds per
socket read, so an answer that trickles in, a byte before each timeout, outlasted the
step's limit by as long as the service liked. Here an exchange made with a time limit
running is armed for the time left on the process's one cutting thread (:class:`_Cutter`);
if the exchange still runs then, the thread shuts its socket down, the blocked read
returns, and the client reports the step's time limit (:attr:`Cut.fired`). Prefork needs
none (its soft limit interrupts the read, and no cut is armed); on gevent the step's
``gevent.Timeout`` cuts first, and the cutting thread, a greenlet there, is a backstop.

:class:`CutAdapter` is requests' adapter with connections that say which socket they use
for the exchange under way (:func:`cut_at_limit`); the clients mount it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from intent import pools
from intent.forks import after_fork_in_child

logger = logging.getLogger(__name__)


class Cut:
    """One exchange's cut: the sockets it reads answers on, and whether the timer cut the
    exchange before it ended."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.fired = False  # the time was up while the exchange ran: its sockets shut
        self._ended = False
        self._lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self.sockets.append(sock)
            if self.fired:  # the limit passed before its answer was even awaited
                _shut(sock)

    def discard(self, sock: socket.socket | None) -> None:
        """``sock`` goes back to its pool, for another exchange: never shut for this one."""
        with self._lock:
            if sock in self.sockets:
                self.sockets.remove(sock)

    def fire(self) -> None:
        with self._lock:
            if self._ended:
                return
            self.fired = True
            for sock in self.sockets:
                _shut(sock)

    def end(self) -> bool:
        """The exchange is over; whether the timer had cut it (an answer read to its end
        may then be a cut one: a body without a length ends where its socket was shut)."""
        with self._lock:
            self._ended = True
            return self.fired

    @property
    def ended(self) -> bool:
        return self._ended


_COMPACT_AT = 1024  # armed cuts held before those whose exchange ended are dropped


class _Cutter:
    """One thread per process that fires every armed :class:`Cut` at its time: a threads
    worker makes many calls a second, and a timer thread started and cancelled for each
    was a thread per call. Cuts whose exchange ended are dropped as they come up."""

    def __init__(self) -> None:
        self._reset()
        # A forked child starts empty: its parent's cuts are the parent's to fire (their
        # sockets are shared with it), and a lock held at the fork would stay held.
        after_fork_in_child(self, _Cutter._reset)

    def _reset(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, Cut]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._compact_at = _COMPACT_AT

    def arm(self, cut: Cut, seconds: float) -> None:
        at = time.monotonic() + seconds
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._start()  # first use (in this process)
            if len(self._due) >= self._compact_at:  # ended cuts far from due pile up
                self._due = [entry for entry in self._due if not entry[2].ended]
                heapq.heapify(self._due)
                self._compact_at = max(_COMPACT_AT, 2 * len(self._due))
            heapq.heappush(self._due, (at, next(self._order), cut))
            if self._due[0][2] is cut:  # sooner than the one the thread waits for
                self._wake.notify()

    def armed(self) -> int:
        with self._wake:
            return sum(1 for _, _, cut in self._due if not cut.ended)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="intent-http-cut", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                cut = self._next_due()
            try:
                cut.fire()
            except Exception:  # the thread fires every other cut: it must go on
                logger.exception("cutting an HTTP exchange at its step's time limit failed")

    def _next_due(self) -> Cut:
        """Wait (holding the condition) for the first cut due whose exchange still runs."""
        while True:
            while self._due and self._due[0][2].ended:
                heapq.heappop(self._due)
            if not self._due:
                self._wake.wait()
                continue
            at = self._due[0][0]
            now = time.monotonic()
            if at <= now:
                return heapq.heappop(self._due)[2]
            self._wake.wait(at - now)


_CUTTER = _Cutter()


def _shut(sock: socket.socket) -> None:
    # Whatever the socket-like object does, the cut goes on: the exchange's own thread and
    # the one cutting thread must not die of it.
    with contextlib.suppress(Exception):
        sock.shutdown(socket.SHUT_RDWR)


_current: ContextVar[Cut | None] = ContextVar("intent_http_cut", default=None)


@contextlib.contextmanager
def cut_at_limit() -> Iterator[Cut]:
    """Inside, the HTTP exchange under way is cut when the running step's time is up (no
    timer at all when no limit runs: prefork)."""
    cut = Cut()
    left = pools.remaining()
    if left is None:
        yield cut
        return
    token = _current.set(cut)
    try:
        _CUTTER.arm(cut, left)
        yield cut
    finally:
        cut.end()
        _current.reset(token)


class _Registered:
    """A connection that adds its socket to the exchange's :class:`Cut` as it awaits the
    answer (the socket itself: a connection that closes after this answer drops its
    ``sock`` while the answer is still read from it)."""

    sock: socket.socket | None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        cut = _current.get()
        if cut is not None and self.sock is not None:
            # TLS inside a TLS proxy tunnel: urllib3's SSLTransport wraps the real socket.
            cut.add(getattr(self.sock, "socket", self.sock))
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _Connection(_Registered, HTTPConnection):
    pass


class _HTTPSConnection(_Registered, HTTPSConnection):
    pass


class _Returned:
    """A pool whose connections, given back mid-exchange (urllib3 does as it reads the
    body's end), leave the exchange's :class:`Cut`: another exchange may take them."""

    def _put_conn(self, conn: Any) -> None:
        cut = _current.get()
        if cut is not None and conn is not None:
            cut.discard(getattr(conn, "sock", None))
        super()._put_conn(conn)  # type: ignore[misc]


class _Pool(_Returned, HTTPConnectionPool):
    ConnectionCls = _Connection


class _HTTPSPool(_Returned, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _Pool, "https": _HTTPSPool}


class CutAdapter(HTTPAdapter):
    """requests' adapter whose connections :func:`cut_at_limit` can cut: direct ones, and
    those through an HTTP(S) proxy (``trust_env`` with ``HTTP_PROXY``/``HTTPS_PROXY``).
    A SOCKS proxy's connections are urllib3's own SOCKS classes, which it does not cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # every time: another thread may have made it
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager
