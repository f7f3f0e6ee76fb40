"""The four baselines: the hand-checkable parts of each, and the interface all methods share."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from trainer.baselines.item_knn import ItemKNN, cosine_similarity
from trainer.baselines.melu import LocalRule, MeLU, _MeLUNet, local_update
from trainer.baselines.mf import MatrixFactorisation
from trainer.baselines.popularity import Popularity
from trainer.data import Dataset
from trainer.episodes import Context
from trainer.errors import DataError
from trainer.evaluate import ColdStart
from trainer.model import ModelConfig
from trainer.split import (
    Support,
    UserSplit,
    protocol_order,
    support_batch,
    user_feature_matrix,
)
from trainer.train import TrainConfig

SIZES = [0, 1, 3, 5]


def context(data: Dataset, split: UserSplit) -> Context:
    seqs = protocol_order(data, seed=0)
    features, no_text = user_feature_matrix(data), torch.zeros(data.n_items, 0)
    return Context(data, seqs, split, features, SIZES, 0, torch.device("cpu"), no_text)


def hand_context(baskets: list[list[int]], n_items: int) -> Context:
    """One basket per user, all in training and validation (too short to tune on: k + 5 > 4)."""
    users = np.repeat(np.arange(len(baskets)), [len(b) for b in baskets])
    data = Dataset(
        name="hand",
        user_ids=[f"u{u}" for u in range(len(baskets))],
        item_ids=[f"i{i}" for i in range(n_items)],
        users=users,
        items=np.concatenate(baskets).astype(np.int64),
        ratings=None,
        timestamps=np.arange(len(users)),
    )
    everyone = np.arange(len(baskets))
    return context(data, UserSplit(train=everyone, valid=everyone, test=everyone[:0]))


@pytest.fixture(scope="module")
def synthetic(synthetic_context) -> Context:
    return synthetic_context(150, 40, SIZES)


def supports(ctx: Context, ks: list[int]) -> Support:
    """The first ks[b] interactions of the first len(ks) test users (all users if none)."""
    users = ctx.split.test if len(ctx.split.test) else ctx.split.train
    return support_batch(ctx.seqs, users[: len(ks)], np.array(ks), ctx.features)


def test_popularity_ranks_most_interacted_first() -> None:
    ctx = hand_context([[0, 2], [2], [1, 2], [0]], n_items=3)
    method = Popularity()
    method.fit(ctx)
    scores = method.scores(supports(ctx, [0, 1]))
    assert scores.shape == (2, 3)
    assert (scores.argmax(1) == 2).all()
    assert method.ratings(supports(ctx, [0])) is None  # implicit data


def test_popularity_ratings_shrink_to_global_mean(synthetic: Context) -> None:
    method = Popularity()
    method.fit(synthetic)
    predicted = method.ratings(supports(synthetic, [0, 3]))
    assert predicted.shape == (2, synthetic.data.n_items)
    assert predicted.min() >= 1.0 and predicted.max() <= 5.0


def test_item_knn_similarity_is_cosine_of_user_columns() -> None:
    # Item columns over users: i0 = {u0, u1, u3}, i1 = {u0, u1, u2}, i2 = {u1, u2}.
    ctx = hand_context([[0, 1], [0, 1, 2], [1, 2], [0]], n_items=3)
    expected = torch.tensor(
        [
            [0.0, 2 / 3, 1 / np.sqrt(6)],
            [2 / 3, 0.0, 2 / np.sqrt(6)],
            [1 / np.sqrt(6), 2 / np.sqrt(6), 0.0],
        ]
    ).float()
    torch.testing.assert_close(cosine_similarity(ctx), expected)


def test_item_knn_without_support_ranks_as_popularity(synthetic: Context) -> None:
    knn, popularity = ItemKNN(), Popularity()
    knn.fit(synthetic)
    popularity.fit(synthetic)
    empty = supports(synthetic, [0, 0])
    by_knn = torch.argsort(knn.scores(empty), dim=1, descending=True, stable=True)
    by_popularity = torch.argsort(popularity.scores(empty), dim=1, descending=True, stable=True)
    assert torch.equal(by_knn, by_popularity)


def test_mf_empty_support_scores_from_mean_user(synthetic: Context) -> None:
    method = MatrixFactorisation(dim=8, epochs=2, eval_every=2, weight_decays=(1.0,))
    method.fit(synthetic)
    tables = method.tables
    expected = tables.vectors @ method.mean_user + tables.bias  # (I,)
    scores = method.scores(supports(synthetic, [0, 0]))
    torch.testing.assert_close(scores, expected.expand(2, -1))
    moved = method.scores(supports(synthetic, [5]))
    assert not torch.allclose(moved, expected[None])  # a support set does move the user


def per_user_update(
    net: _MeLUNet, users: torch.Tensor, support: Support, rule: LocalRule
) -> list[dict[str, torch.Tensor]]:
    """The local update written plainly: one user at a time, fc1 on the concatenation."""
    items, bias = net.items().detach(), net.item_bias.detach()
    adapted = []
    for b in range(len(users)):
        layers = {name: w.detach().clone().requires_grad_() for name, w in net.decision.items()}
        n = int(support.mask[b].sum())
        chosen, truth = support.items[b, :n], support.ratings[b, :n]
        for _ in range(rule.steps if n else 0):
            x = torch.cat([users[b].expand(len(items), -1), items], dim=1)  # (I, du + dv)
            hidden = torch.relu(F.linear(x, layers["w1"], layers["b1"]))
            hidden = torch.relu(F.linear(hidden, layers["w2"], layers["b2"]))
            out = F.linear(hidden, layers["w3"], layers["b3"])  # (I, 2)
            loss = -torch.log_softmax(out[:, 0] + bias, 0)[chosen].mean()
            loss = loss + rule.rating_weight * ((out[chosen, 1] - truth) ** 2).mean()
            grads = torch.autograd.grad(loss, list(layers.values()))
            steps = zip(layers.items(), grads, strict=True)
            layers = {k: (w - rule.lr * g).detach().requires_grad_() for (k, w), g in steps}
        adapted.append(layers)
    return adapted


def test_melu_batched_local_update_matches_per_user_loop(synthetic: Context) -> None:
    torch.manual_seed(0)
    vocab = [len(synthetic.data.user_vocab[n]) for n in sorted(synthetic.data.user_features)]
    features = torch.from_numpy(synthetic.data.item_features).float()
    net = _MeLUNet(vocab, features, synthetic.data.n_items, dims=(3, 4, 2, 6, 5))
    support = supports(synthetic, [0, 1, 3, 5])
    users = net.users(support.user_features).detach()
    rule = LocalRule(lr=0.5, steps=3, rating_weight=0.1)
    items, bias = net.items().detach(), net.item_bias.detach()
    batched = local_update(net.initial_layers(4), users, items, bias, support, rule)
    for b, layers in enumerate(per_user_update(net, users, support, rule)):
        for name, w in layers.items():
            torch.testing.assert_close(batched[name][b], w, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched["w1"][3], net.decision["w1"])  # the update did move


def small_methods() -> list:
    return [
        Popularity(),
        ItemKNN(),
        MatrixFactorisation(dim=8, epochs=1, eval_every=1, weight_decays=(1.0,)),
        MeLU(epochs=1, eval_every=1, dims=(4, 8, 4, 8, 4)),
    ]


@pytest.mark.parametrize("method", small_methods(), ids=lambda m: m.name)
def test_scores_and_ratings_shapes(method, synthetic: Context) -> None:
    method.fit(synthetic)
    support = supports(synthetic, [0, 2, 5])
    scores = method.scores(support)
    assert scores.shape == (3, synthetic.data.n_items)
    assert torch.isfinite(scores).all()
    ratings = method.ratings(support)
    if ratings is not None:
        assert ratings.shape == (3, synthetic.data.n_items)
        assert torch.isfinite(ratings).all()


@pytest.mark.parametrize("method", small_methods(), ids=lambda m: m.name)
def test_implicit_data_has_no_ratings(method, synthetic: Context) -> None:
    data = dataclasses.replace(synthetic.data, ratings=None)
    ctx = context(data, synthetic.split)
    method.fit(ctx)
    support = supports(ctx, [0, 4])
    assert torch.isfinite(method.scores(support)).all()
    assert method.ratings(support) is None


@pytest.mark.parametrize(
    "method",
    [
        MatrixFactorisation(
            dim=8, epochs=2, eval_every=1, weight_decays=(1.0, 10.0), progress=True
        ),
        MeLU(epochs=2, eval_every=1, dims=(4, 8, 4, 8, 4), progress=True),
    ],
    ids=lambda m: m.name,
)
def test_a_long_fit_shows_a_bar_over_its_epochs(method, synthetic: Context, capsys) -> None:
    method.fit(synthetic)
    last = capsys.readouterr().err.rsplit("\r", 1)[-1]  # the bar as it was left
    assert last.startswith(method.name) and "100%" in last and "best=" in last


def test_tuning_without_validation_users_says_why() -> None:
    ctx = hand_context([[0, 1], [0, 1, 2], [1, 2], [0]], n_items=3)
    with pytest.raises(DataError, match="no validation user"):
        ItemKNN().fit(ctx)


ALL_METHODS = [
    *small_methods(),
    ColdStart(ModelConfig(dim=8), TrainConfig(meta_steps=2, eval_every=1), artifact=None),
]


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.name)
def test_fit_never_reads_test_users(method, synthetic: Context) -> None:
    """Every method, ours included, fits the same model whatever the test users did."""
    data = synthetic.data
    test = np.isin(data.users, synthetic.split.test)
    rng = np.random.default_rng(1)
    other = dataclasses.replace(
        data,
        items=np.where(test, rng.integers(0, data.n_items, len(test)), data.items),
        ratings=np.where(test, 6.0 - data.ratings, data.ratings).astype(np.float32),
    )
    support = supports(synthetic, [0, 3])  # two test users' supports, scored by both fits
    results = []
    for ctx in (synthetic, context(other, synthetic.split)):
        fitted = copy.deepcopy(method)  # unfitted each time: ColdStart keeps a fitted model
        fitted.fit(ctx)
        results.append((fitted.scores(support), fitted.ratings(support)))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] is None or torch.equal(results[0][1], results[1][1])
