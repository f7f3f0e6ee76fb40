"""Popularity: every user gets the items training users interacted with most.

The floor every personalised method must beat, and the answer the others
should reduce to with no history (k = 0). Its rating model is the item's mean
training rating shrunk towards the global mean, so rarely rated items are not
ranked on two lucky votes.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.episodes import Context
from trainer.split import Support

PSEUDO_RATINGS = 5.0  # global-mean ratings added to every item's mean


def training_positions(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ctx.seqs of the training users' interactions, and whose each one is."""
    owner = np.repeat(np.arange(len(ctx.seqs.lengths)), ctx.seqs.lengths)  # (N,)
    positions = np.flatnonzero(np.isin(owner, ctx.split.train))
    return positions, owner[positions]


def item_counts(ctx: Context) -> np.ndarray:
    """(I,) float32 number of training interactions with each item."""
    positions, _ = training_positions(ctx)
    counts = np.bincount(ctx.seqs.items[positions], minlength=ctx.data.n_items)
    return counts.astype(np.float32)


def shrunk_mean_ratings(ctx: Context) -> np.ndarray:
    """(I,) float32 mean training rating per item, shrunk towards the global mean."""
    positions, _ = training_positions(ctx)
    items, ratings = ctx.seqs.items[positions], ctx.seqs.ratings[positions]
    total = np.bincount(items, weights=ratings, minlength=ctx.data.n_items)
    count = np.bincount(items, minlength=ctx.data.n_items)
    prior = PSEUDO_RATINGS * ratings.mean()
    return ((total + prior) / (count + PSEUDO_RATINGS)).astype(np.float32)


class Popularity:
    name = "popularity"

    def fit(self, ctx: Context) -> None:
        self.counts = torch.from_numpy(item_counts(ctx)).to(ctx.device)  # (I,)
        self.mean_ratings = None
        if ctx.data.ratings is not None:
            self.mean_ratings = torch.from_numpy(shrunk_mean_ratings(ctx)).to(ctx.device)

    def scores(self, support: Support) -> torch.Tensor:
        return self.counts.expand(support.items.shape[0], -1)  # (B, I)

    def ratings(self, support: Support) -> torch.Tensor | None:
        if self.mean_ratings is None:
            return None
        return self.mean_ratings.expand(support.items.shape[0], -1)  # (B, I)
