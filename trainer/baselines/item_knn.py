"""Item-kNN: recommend what resembles the support items, backed off to popularity.

Item-item cosine similarity over training users' binary interactions; a user's
score for an item is the summed similarity to their support items. A handful
of events gives a noisy, sparse score, so it is blended with popularity, and
the blend weight is chosen on validation users. With no support (k = 0) the
knn part is zero and the ranking is popularity's.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.baselines.popularity import item_counts, training_positions
from trainer.episodes import Context, require_validation_users, validation_ndcg
from trainer.split import Support

BLEND_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # candidate popularity weights a


def cosine_similarity(ctx: Context) -> torch.Tensor:
    """(I, I) float32 cosine similarity of items' training-user columns, zero diagonal."""
    positions, owner = training_positions(ctx)
    rows = np.searchsorted(ctx.split.train, owner)  # training users are sorted
    interactions = torch.zeros(len(ctx.split.train), ctx.data.n_items)  # (U, I) binary
    interactions[torch.from_numpy(rows), torch.from_numpy(ctx.seqs.items[positions])] = 1.0
    co = interactions.T @ interactions  # (I, I) co-occurrence counts
    norms = co.diagonal().sqrt().clamp(min=1.0)  # (I,)
    similarity = co / norms[:, None] / norms[None, :]
    return similarity.fill_diagonal_(0.0)


def _max_normalised(scores: torch.Tensor) -> torch.Tensor:
    """Each row divided by its maximum; an all-zero row stays zero."""
    return scores / scores.amax(dim=-1, keepdim=True).clamp(min=1e-12)


class ItemKNN:
    name = "item_knn"

    def fit(self, ctx: Context) -> None:
        require_validation_users(ctx)
        self.similarity = cosine_similarity(ctx).to(ctx.device)  # (I, I)
        self.popularity = _max_normalised(torch.from_numpy(item_counts(ctx)).to(ctx.device))
        self.blend = max(BLEND_GRID, key=lambda a: self._validate(a, ctx))

    def _validate(self, blend: float, ctx: Context) -> float:
        self.blend = blend
        return validation_ndcg(self.scores, ctx)

    def scores(self, support: Support) -> torch.Tensor:
        neighbours = self.similarity[support.items]  # (B, S, I)
        knn = torch.einsum("bs,bsi->bi", support.mask, neighbours)  # (B, I)
        return (1 - self.blend) * _max_normalised(knn) + self.blend * self.popularity

    def ratings(self, support: Support) -> torch.Tensor | None:
        return None
