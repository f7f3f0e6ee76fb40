"""The user split and the support/query episodes of the protocol."""

import numpy as np

from trainer.data import Dataset
from trainer.split import (
    eligible_test_users,
    protocol_order,
    query_sets,
    split_users,
    support_batch,
    user_feature_matrix,
)


def _dataset(n_users: int = 400, per_user: int = 30, timestamps: bool = True) -> Dataset:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.integers(0, 50, len(users))
    times = rng.permutation(len(users)).astype(np.int64) if timestamps else None
    return Dataset(
        name="t",
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(50)],
        users=users,
        items=items,
        ratings=rng.integers(1, 6, len(users)).astype(np.float32),
        timestamps=times,
    )


def test_split_is_disjoint_complete_and_seeded() -> None:
    data = _dataset()
    split = split_users(data, seed=0)
    parts = [set(split.train), set(split.valid), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(data.n_users))
    assert 0.6 < len(split.train) / data.n_users < 0.8
    again = split_users(data, seed=0)
    assert np.array_equal(split.test, again.test)
    assert not np.array_equal(split.test, split_users(data, seed=1).test)


def test_split_of_a_user_does_not_depend_on_other_users() -> None:
    data = _dataset()
    fewer = _dataset(n_users=200)
    test_ids = {data.user_ids[u] for u in split_users(data, 3).test}
    fewer_test_ids = {fewer.user_ids[u] for u in split_users(fewer, 3).test}
    assert fewer_test_ids == {uid for uid in test_ids if int(uid[1:]) < 200}


def test_time_order_and_support_query_partition() -> None:
    data = _dataset()
    seqs = protocol_order(data, seed=0)
    user = 7
    rows = np.flatnonzero(data.users == user)
    by_time = data.items[rows[np.argsort(data.timestamps[rows])]]
    assert np.array_equal(seqs.of(user), by_time)
    users, ks = np.array([user, 8]), np.array([3, 0])
    support = support_batch(seqs, users, ks, user_feature_matrix(data))
    queries = query_sets(seqs, users, ks)
    assert support.items.shape == (2, 3)
    assert support.mask.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert np.array_equal(np.concatenate([support.items[0].numpy(), queries[0]]), by_time)
    assert len(queries[1]) == 30


def test_without_time_the_order_is_a_seeded_shuffle() -> None:
    data = _dataset(timestamps=False)
    first, again = protocol_order(data, seed=0), protocol_order(data, seed=0)
    other = protocol_order(data, seed=1)
    assert np.array_equal(first.items, again.items)
    assert not np.array_equal(first.items, other.items)
    assert sorted(first.of(5)) == sorted(data.items[data.users == 5])


def test_the_same_test_users_serve_every_k() -> None:
    data = _dataset(per_user=20)
    seqs = protocol_order(data, 0)
    split = split_users(data, 0)
    users = eligible_test_users(seqs, split, max_k=15)
    assert set(users) <= set(split.test)
    assert (seqs.lengths[users] >= 20).all()
    assert len(eligible_test_users(seqs, split, max_k=16)) == 0
