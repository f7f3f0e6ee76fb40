"""Meta-training: its episodes, and its last step, calibrating the inner step on validation
users."""

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from trainer.episodes import Context, make_context, validation_ndcg
from trainer.model import ModelConfig
from trainer.train import (
    Query,
    TrainConfig,
    build_model,
    calibrate_step,
    episode_histories,
    meta_train,
    query_loss,
    sample_episodes,
    score_fn,
)


@pytest.fixture(scope="module")
def ctx(synthetic_context) -> Context:
    return synthetic_context(300, 60, [0, 1, 3, 5])


def test_calibration_shortens_an_overshooting_step_and_never_loses_validation_ndcg(ctx) -> None:
    torch.manual_seed(0)
    model = build_model(ctx, ModelConfig(dim=8)).requires_grad_(False)  # untrained: steps too far
    prior = float(model.log_prior.exp())
    before = validation_ndcg(score_fn(model), ctx)
    zero_shot = model.initial_users(torch.zeros(1, ctx.features.shape[1], dtype=torch.long))

    result = calibrate_step(model, ctx)

    assert result["valid_ndcg@20_before"] == pytest.approx(before)
    assert result["valid_ndcg@20"] >= before
    # The step one event takes, scale / (1 + prior), is shorter.
    assert result["step_scale"] / (1 + prior * result["prior_scale"]) < 1 / (1 + prior)
    # The model is left at the chosen point, and the zero-shot start is untouched.
    assert validation_ndcg(score_fn(model), ctx) == pytest.approx(result["valid_ndcg@20"])
    after = model.initial_users(torch.zeros(1, ctx.features.shape[1], dtype=torch.long))
    torch.testing.assert_close(after, zero_shot)


def test_the_last_step_is_validated_when_eval_every_does_not_divide_the_run(ctx) -> None:
    """Else a run shorter than eval_every would keep the untrained model, and a longer one
    would drop the steps after its last multiple unseen."""
    config = TrainConfig(meta_steps=7, eval_every=5, users_per_step=16, calibrate=False)
    _, summary = meta_train(ctx, ModelConfig(dim=8), config, progress=False)
    assert [row["step"] for row in summary["history"]] == [0, 5, 7]


def _scripted_validation(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """Validation NDCG@20 as listed, one value per validation from step 0; 0 afterwards."""
    values = iter(scores)
    monkeypatch.setattr("trainer.train.validation_ndcg", lambda score, ctx: next(values, 0.0))


def test_an_early_stop_ends_the_bar_at_the_step_reached_and_says_why(
    ctx, monkeypatch, caplog, capsys
) -> None:
    _scripted_validation(monkeypatch, [0.5, 0.6, 0.55, 0.54])  # steps 0, 5, 10, 15
    config = TrainConfig(
        meta_steps=100, eval_every=5, patience=2, users_per_step=16, calibrate=False
    )
    with caplog.at_level(logging.INFO, logger="trainer.train"):
        _, summary = meta_train(ctx, ModelConfig(dim=8), config)
    assert (summary["steps"], summary["best_step"]) == (15, 5)
    assert (
        "meta-training stopped at step 15 of 100: validation NDCG@20 did not improve for 2 "
        "validations, 5 steps apart; best step 5 (validation NDCG@20 0.6000)"
    ) in caplog.text
    last = capsys.readouterr().err.rsplit("\r", 1)[-1]  # the bar as it was left
    assert "100%" in last and "15/15" in last


def test_a_run_that_spends_every_step_says_so(ctx, monkeypatch, caplog, capsys) -> None:
    _scripted_validation(monkeypatch, [0.5, 0.6, 0.7])  # steps 0, 5, 10
    config = TrainConfig(meta_steps=10, eval_every=5, users_per_step=16, calibrate=False)
    with caplog.at_level(logging.INFO, logger="trainer.train"):
        meta_train(ctx, ModelConfig(dim=8), config)
    assert "meta-training ran all 10 steps; best step 10 (validation NDCG@20 0.7000)" in caplog.text
    last = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert "100%" in last and "10/10" in last


def test_feature_dropout_hides_whole_users_side_features_in_that_share_of_episodes(ctx) -> None:
    users = ctx.training_users()
    known = ctx.features[users].any(1)
    assert known.all()  # synthetic users all have side features
    for share in (0.0, 0.5, 1.0):
        config = TrainConfig(users_per_step=2000, feature_dropout=share)
        support, _ = sample_episodes(ctx, users, config, np.random.default_rng(0))
        hidden = ~support.user_features.bool().any(1)
        # every code of a user or none: a hidden user looks like the service's
        assert (support.user_features.bool().all(1) | hidden).all()
        assert abs(hidden.float().mean().item() - share) < 0.04


@pytest.fixture(scope="module")
def untimed(ctx: Context) -> Context:
    """The same data with its time dropped: the protocol order becomes a seeded shuffle."""
    data = dataclasses.replace(ctx.data, timestamps=None)
    return make_context(data, 0, [0, 1, 3, 5], torch.device("cpu"))


def test_episodes_keep_time_order_where_the_data_has_time(ctx) -> None:
    batch = ctx.split.train[:20]
    histories = episode_histories(ctx, batch, np.random.default_rng(0))
    for group, user in enumerate(batch):
        np.testing.assert_array_equal(histories.of(group), ctx.seqs.of(user))


def test_episodes_draw_a_fresh_order_of_each_history_where_the_data_has_no_time(untimed) -> None:
    batch = np.repeat(untimed.split.train[:20], 2)  # every user twice in one batch
    histories = episode_histories(untimed, batch, np.random.default_rng(0))
    reordered = 0
    for group, user in enumerate(batch):
        assert sorted(histories.of(group)) == sorted(untimed.seqs.of(user))
        reordered += not np.array_equal(histories.of(group), untimed.seqs.of(user))
    assert reordered == len(batch)  # synthetic histories hold 20+ items: 1 in 20! to repeat
    twice = [np.array_equal(histories.of(g), histories.of(g + 1)) for g in range(0, 40, 2)]
    assert not any(twice)


def test_an_episode_splits_each_history_into_support_and_query(untimed) -> None:
    config = TrainConfig(users_per_step=64, max_support=5)
    support, query = sample_episodes(untimed, untimed.split.train, config, np.random.default_rng(1))
    per_row = torch.zeros(64).index_add_(0, query.rows, query.weights)
    torch.testing.assert_close(per_row, torch.ones(64))
    assert query.batch == 64
    for row in range(64):
        shown = set(support.items[row][support.mask[row] > 0].tolist())
        asked = query.items[query.rows == row].tolist()
        assert not shown & set(asked) and len(set(asked)) == len(asked)
        assert shown == set(query.hidden_items[query.hidden_rows == row].tolist())


def test_a_catalogue_smaller_than_dim_starts_the_missing_components_at_zero(ctx) -> None:
    model = build_model(ctx, ModelConfig(dim=ctx.data.n_items + 4))  # 60 items, 64 dims
    vectors = model.item_embedding.detach()
    assert vectors.shape == (ctx.data.n_items, ctx.data.n_items + 4)
    assert (vectors[:, -4:] == 0).all() and vectors[:, 0].abs().sum() > 0


def test_the_query_loss_ignores_the_support_items(untimed) -> None:
    """They are hidden from the ranking, so how high the model puts them must not matter.
    One episode per batch: the item biases are shared, and another user may be asked for
    this user's support items."""
    config = TrainConfig(users_per_step=1, max_support=5)
    rng = np.random.default_rng(2)
    support, query = sample_episodes(untimed, untimed.training_users(), config, rng)
    assert support.mask.sum() > 0
    model = build_model(untimed, ModelConfig(dim=8))
    users = model.adapt(support).detach()
    before = query_loss(model, users, query)
    with torch.no_grad():  # push every support item to the top
        model.item_bias[support.items[support.mask > 0]] += 50.0
    torch.testing.assert_close(query_loss(model, users, query), before)


def test_the_query_loss_ranks_each_query_item_against_the_untouched_items_only(untimed) -> None:
    """Hand-computed: scores are the item biases (item vectors 0); query items 0 and 1
    (biases 2 and 0), support item 2 (bias 5, hidden), and 57 untouched items at bias 0."""
    model = build_model(untimed, ModelConfig(dim=8, rating_weight=0.0))
    n = untimed.data.n_items
    with torch.no_grad():
        model.item_embedding.zero_()
        model.item_bias.zero_()
        model.item_bias[[0, 2]] = torch.tensor([2.0, 5.0])
    query = Query(
        rows=torch.tensor([0, 0]),
        items=torch.tensor([0, 1]),
        weights=torch.tensor([0.5, 0.5]),
        hidden_rows=torch.tensor([0]),
        hidden_items=torch.tensor([2]),
        ratings=None,
        batch=1,
    )
    untouched = math.log(n - 3)
    expected = (math.log1p(math.exp(untouched - 2.0)) + math.log1p(math.exp(untouched))) / 2
    loss = query_loss(model, torch.zeros(1, 8), query)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_raising_a_query_item_never_raises_the_query_loss(untimed) -> None:
    """A softmax over the catalogue asks for equal mass on every query item, so it would
    push down a query item that is already far on top; NDCG@20 wants it there."""
    config = TrainConfig(users_per_step=1, max_support=5)
    support, query = sample_episodes(
        untimed, untimed.training_users(), config, rng=np.random.default_rng(4)
    )
    assert len(query.items) >= 2
    model = build_model(untimed, ModelConfig(dim=8))
    users = model.adapt(support).detach()
    losses = []
    for lift in (0.0, 10.0, 50.0):
        with torch.no_grad():
            model.item_bias[query.items[0]] += lift
        losses.append(query_loss(model, users, query).item())
    assert losses[0] > losses[1] > losses[2]


def test_first_order_drops_the_second_order_terms_of_the_meta_gradient(untimed) -> None:
    config = TrainConfig(users_per_step=16, max_support=5)
    support, query = sample_episodes(
        untimed, untimed.training_users(), config, np.random.default_rng(3)
    )
    torch.manual_seed(0)
    model = build_model(untimed, ModelConfig(dim=8))
    gradients = []
    for first_order in (False, True):
        model.zero_grad()
        query_loss(model, model.adapt(support, first_order), query).backward()
        gradients.append(model.item_embedding.grad.clone())
    assert not torch.allclose(gradients[0], gradients[1])
