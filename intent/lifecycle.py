"""Things that run in the background, started and stopped as a ``with`` block."""

from __future__ import annotations

from types import TracebackType
from typing import Self


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
