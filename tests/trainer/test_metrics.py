"""The metrics against values computed by hand."""

import numpy as np
import pytest

from trainer.evaluate import _mean_of_defined
from trainer.metrics import graded_ndcg, mae_rmse, recall_ndcg


def test_recall_and_ndcg_by_hand() -> None:
    ranked = np.array([[5, 1, 7, 2]])
    relevant = [np.array([1, 2, 9])]
    recall, ndcg = recall_ndcg(ranked, relevant, k=4)
    # hits at ranks 2 and 4; 3 relevant items, so min(4, 3) = 3 can be found
    assert recall[0] == pytest.approx(2 / 3)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert ndcg[0] == pytest.approx(dcg / idcg)


def test_recall_is_normalised_by_what_the_cut_off_can_hold() -> None:
    """Five relevant items and a top 2: two hits are a perfect Recall@2, not 2/5."""
    recall, ndcg = recall_ndcg(np.array([[3, 1]]), [np.array([1, 2, 3, 4, 5])], k=2)
    assert recall.tolist() == [1.0] and ndcg.tolist() == [1.0]


def test_perfect_and_empty_rankings() -> None:
    ranked = np.array([[1, 2], [3, 4]])
    recall, ndcg = recall_ndcg(ranked, [np.array([2, 1]), np.array([9])], k=2)
    assert recall.tolist() == [1.0, 0.0]
    assert ndcg.tolist() == [1.0, 0.0]


def test_graded_ndcg_uses_ratings_as_gains() -> None:
    truth = np.array([5.0, 3.0, 1.0])
    assert graded_ndcg(np.array([0.9, 0.5, 0.1]), truth, 3) == pytest.approx(1.0)
    reversed_dcg = 1 + 3 / np.log2(3) + 5 / np.log2(4)
    ideal = 5 + 3 / np.log2(3) + 1 / np.log2(4)
    assert graded_ndcg(np.array([0.1, 0.5, 0.9]), truth, 3) == pytest.approx(reversed_dcg / ideal)


def test_graded_ndcg_gives_negative_ratings_no_gain_and_no_ideal_nan() -> None:
    liked_last = graded_ndcg(np.array([0.9, 0.5, 0.1]), np.array([-1.0, -1.0, 1.0]), 3)
    assert liked_last == pytest.approx((1 / np.log2(4)) / 1.0)
    assert np.isnan(graded_ndcg(np.array([0.9, 0.1]), np.array([0.0, -1.0]), 3))


def test_mae_rmse() -> None:
    mae, rmse = mae_rmse(np.array([1.0, 4.0]), np.array([2.0, 2.0]))
    assert mae == pytest.approx(1.5)
    assert rmse == pytest.approx(np.sqrt(2.5))


def test_users_without_a_defined_metric_are_left_out_of_its_mean() -> None:
    assert _mean_of_defined(np.array([np.nan, 1.0, 3.0])) == 2.0
    assert _mean_of_defined(np.array([np.nan, np.nan])) is None  # JSON null in results.json
