"""The new-item side: the item step is the user step in the item role, batched; the start
network, the reference users and the calibration; unseen items in the catalogue."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from trainer.adapt import InnerRule
from trainer.episodes import Context, make_context
from trainer.items import (
    WARM_AFTER_CHOICES,
    ColdItems,
    add_unseen_items,
    cold_rows,
    fit_item_side,
    item_queries,
    item_step,
)
from trainer.model import ModelConfig
from trainer.train import TrainConfig, meta_train

D = 4


def _cold(users: list[list[int]], width: int = 2) -> ColdItems:
    n = len(users)
    return ColdItems(torch.zeros(n, width), torch.zeros(n, 0), [np.array(u) for u in users])


def _rule(steps: int) -> InnerRule:
    preconditioner = torch.diag(torch.tensor([0.5] * D + [0.8]))
    return InnerRule(preconditioner, torch.tensor(2.0), 0.0, steps)


def test_one_item_step_descends_the_item_loss() -> None:
    """The step is -P grad L / (n + prior) for L(row) = -sum_s [u_s, 1] . row +
    n log(sum_r exp([u_r, 1] . row) + R): the user's softmax loss with users as the
    catalogue and an outside option of mass R."""
    gen = torch.Generator().manual_seed(0)
    users, reference = torch.randn(6, D, generator=gen), torch.randn(5, D, generator=gen)
    start = torch.randn(1, D + 1, generator=gen)
    support = [1, 4, 5]
    stepped = item_step(start, _cold([support]).support(3), users, reference, _rule(1))
    row = start.clone().requires_grad_(True)
    with_one = lambda x: torch.cat([x, torch.ones(len(x), 1)], 1)  # noqa: E731
    logits = torch.cat([with_one(reference) @ row[0], torch.tensor([np.log(5.0)])])
    loss = -(with_one(users[support]) @ row[0]).sum() + 3 * torch.logsumexp(logits, 0)
    (grad,) = torch.autograd.grad(loss, row)
    expected = start - grad @ _rule(1).preconditioner.T / (3 + 2.0)
    assert torch.allclose(stepped, expected, atol=1e-5)


def test_items_adapt_in_a_batch_as_each_alone() -> None:
    gen = torch.Generator().manual_seed(1)
    users, reference = torch.randn(8, D, generator=gen), torch.randn(5, D, generator=gen)
    starts = torch.randn(3, D + 1, generator=gen)
    lists = [[0, 3], [1, 2, 5, 7], []]
    together = item_step(starts, _cold(lists).support(4), users, reference, _rule(3))
    for i, one in enumerate(lists):
        alone = item_step(starts[i : i + 1], _cold([one]).support(4), users, reference, _rule(3))
        assert torch.allclose(together[i], alone[0], atol=1e-6)
    assert torch.equal(together[2], starts[2])  # no interaction, no move


def test_interactions_raise_the_bias_more_as_they_accumulate() -> None:
    gen = torch.Generator().manual_seed(2)
    users, reference = torch.randn(10, D, generator=gen), torch.randn(50, D, generator=gen)
    start = torch.zeros(1, D + 1)
    biases = [
        item_step(start, _cold([list(range(10))]).support(n), users, reference, _rule(3))[0, -1]
        for n in (1, 3, 10)
    ]
    assert 0 < biases[0] < biases[1] < biases[2]


def test_item_queries_split_each_item_s_users_at_n() -> None:
    cold = _cold([[5, 7, 9], [7, 5]])
    relevant, hidden = item_queries(cold, 1, 3, np.array([5, 7, 9]))
    assert [r.tolist() for r in relevant] == [[1], [0], [0]]
    assert hidden.tolist() == [[True, False], [False, True], [False, False]]


def _trained(synthetic_context: Callable[..., Context]) -> tuple:
    ctx = synthetic_context(300, 80, [0, 1, 3])
    config = TrainConfig(meta_steps=40, eval_every=20, item_start_steps=40)
    model, _ = meta_train(ctx, ModelConfig(dim=8, reference_users=64), config, progress=False)
    return ctx, model, config


def test_fit_item_side_trains_the_start_and_calibrates_the_step(
    synthetic_context: Callable[..., Context],
) -> None:
    ctx, model, config = _trained(synthetic_context)
    before = [p.detach().clone() for p in model.item_start.parameters()]
    item_side = ("item_start.", "log_item_rate", "log_item_prior", "reference_users", "item_warm")
    warm = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(item_side)}
    summary = fit_item_side(model, ctx, config)
    assert summary["held_out_items"] > 0
    assert int(model.item_warm_after) in WARM_AFTER_CHOICES
    assert summary["item_step"]["warm_after"] == int(model.item_warm_after)
    assert model.reference_users.abs().sum() > 0
    after = model.item_start.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    for name, value in warm.items():  # the warm model is left exactly as it was
        assert torch.equal(model.state_dict()[name], value), name


def test_unseen_items_join_the_catalogue_at_their_generated_start(
    synthetic_context: Callable[..., Context],
) -> None:
    ctx, model, _ = _trained(synthetic_context)
    features = torch.zeros(2, ctx.data.item_features.shape[1])
    features[0, 0] = features[1, 1] = 1.0
    grown = add_unseen_items(model, features, torch.zeros(2, 0))
    old, new = model.item_tables(), grown.item_tables()
    n = len(old.bias)
    assert torch.equal(new.vectors[:n], old.vectors) and torch.equal(new.bias[:n], old.bias)
    rows = model.item_starts(features, torch.zeros(2, 0))
    assert torch.allclose(new.vectors[n:], rows[:, :-1], atol=1e-6)
    assert torch.allclose(new.bias[n:], rows[:, -1], atol=1e-6)


def test_cold_rows_adapt_on_at_most_warm_after_interactions(
    synthetic_context: Callable[..., Context],
) -> None:
    ctx, model, _ = _trained(synthetic_context)
    model.item_warm_after.fill_(2)
    users = torch.randn(ctx.data.n_users, model.config.dim)
    cold = ColdItems(
        torch.zeros(1, ctx.data.item_features.shape[1]), torch.zeros(1, 0), [np.arange(6)]
    )
    at_two, at_five = (cold_rows(model, cold, n, users) for n in (2, 5))
    assert torch.equal(at_two, at_five)
    assert not torch.equal(cold_rows(model, cold, 1, users), at_two)


def test_a_context_with_item_text_gives_the_start_network_that_text(
    synthetic_context: Callable[..., Context],
) -> None:
    ctx = synthetic_context(300, 80, [0, 1, 3])
    text = np.random.default_rng(0).normal(size=(ctx.data.n_items, 5)).astype(np.float32)
    ctx = make_context(ctx.data, 0, [0, 1, 3], torch.device("cpu"), text)
    config = TrainConfig(meta_steps=20, eval_every=20, item_start_steps=20)
    model, _ = meta_train(ctx, ModelConfig(dim=8, reference_users=16), config, progress=False)
    assert model.text_dim == 5
    features = torch.zeros(2, ctx.data.item_features.shape[1])
    texts = torch.from_numpy(text[:2])
    assert not torch.equal(
        model.item_starts(features, texts), model.item_starts(features, 0 * texts)
    )
