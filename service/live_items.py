"""What a serving model scores beyond its trained catalogue: the items registered while the
service runs, and which items of either kind are retired.

Why an immutable snapshot swapped whole: Recommend runs on many threads while the
catalogue follower changes the catalogue. A reader takes `model.live` once and scores
one consistent catalogue; a writer builds the next snapshot aside and assigns it (one
attribute store, atomic in Python). Live rows sit after the trained rows: combined
index `i` is trained item `i` below the trained catalogue's size, live row `i - size`
above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LiveItems:
    ids: list[str]  # live items, in row order
    index: Mapping[str, int]  # live item id -> row
    vectors: np.ndarray  # (L, d) float32 item vectors v
    bias: np.ndarray  # (L,) float32 item biases b
    registered_ms: np.ndarray  # (L,) int64 when each was registered
    hidden: np.ndarray  # (H,) intp combined indices never recommended: the retired items

    @classmethod
    def empty(cls, dim: int) -> LiveItems:
        return cls(
            ids=[],
            index={},
            vectors=np.zeros((0, dim), np.float32),
            bias=np.zeros(0, np.float32),
            registered_ms=np.zeros(0, np.int64),
            hidden=np.zeros(0, np.intp),
        )

    def __len__(self) -> int:
        return len(self.ids)
