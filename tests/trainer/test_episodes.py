"""Evaluation episodes: the protocol's rule that support items are never recommended."""

import numpy as np
import pytest
import torch

from trainer.episodes import batches, masked_scores, rank_metrics
from trainer.metrics import top_k


@pytest.fixture(scope="module")
def ctx(synthetic_context):
    return synthetic_context(200, 50, [0, 3])


def _support_first(support) -> torch.Tensor:
    """A scorer that ranks each user's own support items highest."""
    scores = torch.zeros(len(support.items), 50)
    rows, items = support.events()
    scores[rows, items] = 100.0
    return scores


def test_support_items_are_never_ranked(ctx) -> None:
    users = ctx.split.valid
    for _, _, support in batches(ctx, users, 3):
        ranked = top_k(masked_scores(_support_first, support), 20)
        rows, items = support.events()
        for row, item in zip(rows.tolist(), items.tolist(), strict=True):
            assert item not in ranked[row]


def test_a_scorer_cannot_gain_by_ranking_support_items(ctx) -> None:
    """With the support masked, ranking it first scores the same as a flat scorer."""
    users = ctx.split.valid
    flat = rank_metrics(lambda s: torch.zeros(len(s.items), 50), ctx, users, 3)
    cheating = rank_metrics(_support_first, ctx, users, 3)
    np.testing.assert_allclose(cheating[1], flat[1])
