"""Things that run in the background, started and stopped as a ``with`` block, and the
one way a foreground process turns SIGINT and SIGTERM into a stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Background:
    """``with thing:`` starts it and closes it on the way out, whatever happened.

    Subclasses provide ``start()`` (returning themselves) and ``stop()``; ``close()`` is
    ``stop()`` unless a subclass has more to release."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def on_signals(
    handler: Callable[[signal.Signals], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """While inside, each of ``signals`` calls ``handler`` with it; the previous handlers
    come back on exit. Python runs handlers on the main thread only: elsewhere this
    installs nothing (the main thread's own handlers stay in charge)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler(signal.Signals(signum))

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event that SIGINT and SIGTERM set while inside."""
    stop = threading.Event()
    with on_signals(lambda _: stop.set()):
        yield stop


def wait_for(stop: threading.Event) -> None:
    """Block until ``stop`` is set, waking often so the main thread runs signal handlers."""
    while not stop.wait(0.5):
        pass


def until_stopped() -> None:
    """Block until SIGINT or SIGTERM."""
    with stop_signals() as stop:
        wait_for(stop)


@contextlib.contextmanager
def interrupt_on_sigterm(message: str = "stopping") -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while inside, so ``with`` blocks clean up on either."""

    def interrupt(sig: signal.Signals) -> None:
        raise KeyboardInterrupt(message)

    with on_signals(interrupt, (signal.SIGTERM,)):
        yield
