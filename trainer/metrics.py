"""Ranking and rating metrics, per user; the evaluation averages them over users.

Recall@k is normalised by min(k, |relevant|) (as in Liang et al., 2018), so a
user with more relevant items than k can still reach 1.0.
"""

from __future__ import annotations

import numpy as np
import torch


def top_k(scores: torch.Tensor, k: int) -> np.ndarray:
    """(B, I) scores -> (B, k) item indices, best first."""
    return torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu().numpy()


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def recall_ndcg(ranked: np.ndarray, relevant: list[np.ndarray], k: int) -> tuple[np.ndarray, ...]:
    """Binary-relevance Recall@k and NDCG@k for each user: two (B,) arrays."""
    discounts = _discounts(k)
    recall, ndcg = np.zeros(len(relevant)), np.zeros(len(relevant))
    for b, rel in enumerate(relevant):
        hits = np.isin(ranked[b, :k], rel)
        n_ideal = min(k, len(rel))
        recall[b] = hits.sum() / n_ideal
        ndcg[b] = (hits * discounts[: len(hits)]).sum() / discounts[:n_ideal].sum()
    return recall, ndcg


def graded_ndcg(predicted: np.ndarray, truth: np.ndarray, k: int) -> float:
    """NDCG@k of one user's items ranked by prediction, with the true ratings as gains.

    A negative rating gains nothing (a disliked item is no hit, and a negative gain would
    make NDCG leave [0, 1]); a user with no positive rating has no ideal ranking to compare
    with, and gets NaN, which the evaluation leaves out of its mean.
    """
    gains = np.maximum(truth, 0.0)
    discounts = _discounts(k)
    ranked = gains[np.argsort(-predicted, kind="stable")][:k]
    ideal = np.sort(gains)[::-1][:k]
    best = (ideal * discounts[: len(ideal)]).sum()
    if best <= 0:
        return float("nan")
    return float((ranked * discounts[: len(ranked)]).sum() / best)


def mae_rmse(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    error = predicted - truth
    return float(np.abs(error).mean()), float(np.sqrt((error**2).mean()))
