"""Polling for a condition in the integration tests, which wait on other processes."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(
    check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05
) -> None:
    """Returns once `check()` is true; fails naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)
