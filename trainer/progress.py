"""Progress bars for the long fits: meta-training, and the baselines evaluation fits beside it.

A fit runs for a budget of steps or epochs but may stop early once validation stops improving,
so a bar is closed at the count it reached: it then ends at 100% where the work ended, not at
a fraction of a budget that was never going to be spent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[tqdm]:
    """A bar over at most `total` units (advance it with `bar.update()`); redrawn at most
    every two seconds, so a log file that captures it is not flooded."""
    bar = tqdm(total=total, desc=desc, disable=not enabled, mininterval=2)
    try:
        yield bar
        bar.total = bar.n  # the work ended here; on an error the bar stays where it stopped
    finally:
        bar.close()
