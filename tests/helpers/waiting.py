"""Polling for a condition in the integration tests, which wait on other processes."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(
    check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05
) -> float:
    """Returns the seconds waited once `check()` is true; fails naming `what` after
    `timeout_s`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)
    return time.monotonic() - started
