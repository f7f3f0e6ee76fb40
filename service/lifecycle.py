"""`with` for the objects that own processes or threads: start() on entry, stop() on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Lifecycle:
    """A part that is started and stopped; `with part:` stops it however the block ends."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
