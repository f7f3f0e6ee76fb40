"""The synthetic generator: deterministic, loadable, and carrying the structure it plants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer import synth
from trainer.data import Dataset, load_dataset
from trainer.synth import GENRES, MAX_EVENTS, MIN_EVENTS, write_synthetic

N_USERS, N_ITEMS = 300, 200


@pytest.fixture(scope="module")
def data(synthetic_data) -> Dataset:
    return synthetic_data(N_USERS, N_ITEMS)


def read_all(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_deterministic_per_seed(tmp_path: Path) -> None:
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        write_synthetic(tmp_path / name, 50, 40, seed)
    assert read_all(tmp_path / "a") == read_all(tmp_path / "b")
    assert read_all(tmp_path / "a") != read_all(tmp_path / "c")


def test_loads_as_csv_layout_with_side_features(data: Dataset) -> None:
    assert data.name == "csv" and data.n_users == N_USERS
    assert 0.9 * N_ITEMS <= data.n_items <= N_ITEMS  # an item nobody chose is not in the catalogue
    assert set(np.unique(data.ratings)) <= {1, 2, 3, 4, 5}
    assert set(data.user_features) == {"age", "gender", "occupation"}
    assert all((codes > 0).all() for codes in data.user_features.values())
    genres = [n for n in data.item_feature_names if n.startswith("genre=")]
    assert genres == sorted(f"genre={g}" for g in GENRES)
    assert any(n.startswith("decade=") for n in data.item_feature_names)
    assert (data.item_features.sum(axis=1) >= 1).all()


def test_each_user_has_distinct_items_in_increasing_time(data: Dataset) -> None:
    counts = np.bincount(data.users)
    assert counts.min() >= MIN_EVENTS and counts.max() <= MAX_EVENTS
    assert len(np.unique(data.users * data.n_items + data.items)) == len(data.users)
    order = np.lexsort((data.timestamps, data.users))
    same_user = np.diff(data.users[order]) == 0
    assert (np.diff(data.timestamps[order])[same_user] > 0).all()


def test_occupation_predicts_taste(data: Dataset) -> None:
    """Users who share an occupation share clearly more items than users in general."""
    seen = np.zeros((data.n_users, data.n_items))
    seen[data.users, data.items] = 1.0
    overlap = seen @ seen.T  # (n_users, n_users) items in common
    occupation = data.user_features["occupation"]
    others = ~np.eye(data.n_users, dtype=bool)
    same = (occupation[:, None] == occupation[None, :]) & others
    assert overlap[same].mean() > 1.25 * overlap[others].mean()


def test_genres_follow_taste(data: Dataset) -> None:
    """A user's items concentrate on a few genres, far beyond the catalogue's own spread."""
    genres = data.item_features[:, : len(GENRES)]  # (n_items, G)
    profile = np.zeros((data.n_users, len(GENRES)))
    np.add.at(profile, data.users, genres[data.items])
    top_share = (profile.max(axis=1) / profile.sum(axis=1)).mean()
    catalogue_share = (genres.sum(axis=0) / genres.sum()).max()
    assert top_share > 1.5 * catalogue_share


def test_ratings_rise_with_shared_taste(data: Dataset) -> None:
    """Ratings are not noise: a user's rating agrees with same-occupation users' mean rating."""
    occupation = data.user_features["occupation"][data.users]
    key = occupation * data.n_items + data.items
    total = np.bincount(key, weights=data.ratings)
    count = np.bincount(key)
    others = (total[key] - data.ratings) / np.maximum(count[key] - 1, 1)
    has_others = count[key] > 1
    corr = np.corrcoef(data.ratings[has_others], others[has_others])[0, 1]
    assert corr > 0.4


def test_a_single_interaction_gets_a_rating(tmp_path: Path) -> None:
    """One interaction has no spread of affinities to standardise by."""
    write_synthetic(tmp_path, 1, 1, seed=0)
    data = load_dataset(tmp_path)  # a NaN rating would be refused as not finite
    assert data.ratings.tolist() in ([1.0], [2.0], [3.0], [4.0], [5.0])


def test_past_the_dense_size_a_candidate_draw_keeps_the_structure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalogue too large to score whole draws each user's items from candidates: the
    data keep their shape (distinct items, time order) and their planted taste."""
    monkeypatch.setattr(synth, "DENSE_CELLS", 0)
    write_synthetic(tmp_path, N_USERS, N_ITEMS, seed=0)
    data = load_dataset(tmp_path)
    test_each_user_has_distinct_items_in_increasing_time(data)
    test_genres_follow_taste(data)
    test_occupation_predicts_taste(data)
