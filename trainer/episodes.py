"""Score users' support/query episodes with any method and measure the ranking.

Validation (model selection, blend weights) and the final evaluation run
through these same functions, so every method is judged on identical
episodes: ranking over the whole catalogue minus the support items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainer.data import Dataset
from trainer.errors import DataError
from trainer.metrics import recall_ndcg, top_k
from trainer.split import (
    Sequences,
    Support,
    UserSplit,
    min_length,
    protocol_order,
    query_sets,
    split_users,
    support_batch,
    user_feature_matrix,
)

CUTOFF = 20  # the @20 of Recall@20 and NDCG@20
CHUNK = 512  # users scored per batch: bounds memory at CHUNK x catalogue floats

ScoreFn = Callable[[Support], torch.Tensor]  # support batch -> (B, I) scores


@dataclass(frozen=True)
class Context:
    """Everything a method may learn from: training users and validation users, never test."""

    data: Dataset
    seqs: Sequences
    split: UserSplit
    features: np.ndarray  # (n_users, F) user side-feature codes
    support_sizes: list[int]  # the k values evaluated; validation uses them too
    seed: int
    device: torch.device
    # (n_items, T) text vectors of the items (trainer.text), on `device`; T = 0 without text.
    item_text: torch.Tensor

    def training_users(self) -> np.ndarray:
        """Training users who can give an episode: a support event and a query event."""
        train = self.split.train
        return train[self.seqs.lengths[train] >= 2]

    def validation_users(self) -> np.ndarray:
        """Validation users long enough for every support size (the test rule)."""
        valid = self.split.valid
        return valid[self.seqs.lengths[valid] >= min_length(max(self.support_sizes))]


def require_validation_users(ctx: Context) -> None:
    """Methods that tune on validation users cannot run without any: say so plainly."""
    if not len(ctx.validation_users()):
        raise DataError(
            f"{ctx.data.name}: no validation user has the {min_length(max(ctx.support_sizes))} "
            "interactions the largest support size needs; nothing to tune on"
        )


def make_context(
    data: Dataset,
    seed: int,
    support_sizes: list[int],
    device: torch.device,
    item_text: np.ndarray | None = None,
) -> Context:
    """The seed's user split and protocol order: what training and evaluation share.
    Every method learns from training users, so a split without one that has two
    interactions is refused here, once, rather than as a crash inside each method."""
    ctx = Context(
        data=data,
        seqs=protocol_order(data, seed),
        split=split_users(data, seed),
        features=user_feature_matrix(data),
        support_sizes=support_sizes,
        seed=seed,
        device=device,
        item_text=torch.zeros(data.n_items, 0, device=device)
        if item_text is None
        else torch.from_numpy(item_text).to(device),
    )
    if not len(ctx.training_users()):
        raise DataError(
            f"{data.name}, seed {seed}: no training user has 2 interactions "
            "(one to adapt on, one to score); nothing to learn from"
        )
    return ctx


def masked_scores(score_fn: ScoreFn, support: Support) -> torch.Tensor:
    """Scores with each user's support items pushed to the bottom of the ranking.

    They stay on the device that computed them (only the top 20 per user come back
    from a GPU); the support's indices follow them there.
    """
    scores = score_fn(support).detach().float().clone()
    rows, items = support.events()
    scores[rows.to(scores.device), items.to(scores.device)] = -torch.inf
    return scores


def batches(ctx: Context, users: np.ndarray, ks: int | np.ndarray):
    """Yields (users, ks, support) chunks: the first ks[b] interactions of users[b] as support."""
    ks = np.broadcast_to(ks, users.shape)
    for start in range(0, len(users), CHUNK):
        chunk, chunk_ks = users[start : start + CHUNK], ks[start : start + CHUNK]
        support = support_batch(ctx.seqs, chunk, chunk_ks, ctx.features).to(ctx.device)
        yield chunk, chunk_ks, support


def rank_metrics(
    score_fn: ScoreFn, ctx: Context, users: np.ndarray, ks: int | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user Recall@20 and NDCG@20 with the first ks interactions as support."""
    recalls, ndcgs = [], []
    for chunk, chunk_ks, support in batches(ctx, users, ks):
        with torch.no_grad():
            ranked = top_k(masked_scores(score_fn, support), CUTOFF)
        recall, ndcg = recall_ndcg(ranked, query_sets(ctx.seqs, chunk, chunk_ks), CUTOFF)
        recalls.append(recall)
        ndcgs.append(ndcg)
    return np.concatenate(recalls), np.concatenate(ndcgs)


def validation_ndcg_by_k(score_fn: ScoreFn, ctx: Context) -> dict[int, float]:
    """Mean NDCG@20 over validation users at each support size."""
    users = ctx.validation_users()
    return {k: float(rank_metrics(score_fn, ctx, users, k)[1].mean()) for k in ctx.support_sizes}


def validation_ndcg(score_fn: ScoreFn, ctx: Context) -> float:
    """Mean NDCG@20 over validation users and every support size: the selection metric.

    k = 0 counts too, so a model cannot buy gains at k >= 1 with a worse zero-shot start.
    """
    return float(np.mean(list(validation_ndcg_by_k(score_fn, ctx).values())))
