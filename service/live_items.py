"""What a serving model scores beyond its trained catalogue: the items registered while the
service runs, and which items of either kind are retired.

Why one table of trained and live rows together, where every top-k scores every item: a
Recommend then scores the whole catalogue with one matrix-vector product, as with the
trained catalogue alone; the copy is made once per change, not once per call. Where a
top-k searches an index (a large catalogue), the table holds the live rows alone, so a
change costs the live rows, not a copy of the catalogue. Why an immutable snapshot swapped whole:
Recommend runs on many threads while the catalogue follower changes the catalogue. A
reader takes `model.live` once and scores one consistent catalogue; a writer builds the
next snapshot aside and assigns it (one attribute store, atomic in Python). Live rows
sit after the trained rows: combined index `i` is trained item `i` below the trained
catalogue's size, live row `i - size` above it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LiveItems:
    ids: list[str]  # live items, in row order
    index: Mapping[str, int]  # live item id -> row
    vectors: np.ndarray  # (I + L, d) or (L, d) float32 item vectors v, from combined `first`
    bias: np.ndarray  # (I + L,) or (L,) float32 item biases b, likewise
    registered_ms: np.ndarray  # (L,) int64 when each live item was registered
    hidden: np.ndarray  # (H,) intp combined indices never recommended: the retired items
    first: int = 0  # the combined index of the table's first row: 0, or I (live rows only)

    @classmethod
    def empty(cls, vectors: np.ndarray, bias: np.ndarray) -> LiveItems:
        """No live item: the trained tables themselves (shared, not copied)."""
        return cls([], {}, vectors, bias, np.zeros(0, np.int64), np.zeros(0, np.intp))

    @functools.cached_property
    def hidden_set(self) -> frozenset[int]:
        """`hidden` as a set, for an index's few candidates; made once per snapshot."""
        return frozenset(self.hidden.tolist())

    def __len__(self) -> int:
        return len(self.ids)
