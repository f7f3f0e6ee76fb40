"""The inner step past `sampled_from_items`: a fixed item sample, drawn by popularity, that
the step scores in place of the whole catalogue; and nothing changes below the size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.model import ServingModel
from trainer import artifact
from trainer.adapt import inner_loop
from trainer.errors import ArtifactError
from trainer.items import add_unseen_items
from trainer.model import ColdStartModel, ModelConfig
from trainer.split import Support
from trainer.train import TrainConfig, build_model, query_loss, sample_episodes

SAMPLED = ModelConfig(dim=8, sampled_from_items=1, sampled_items=12)


def support(n_features: int) -> Support:
    return Support(
        torch.tensor([[1, 5, 7], [2, 0, 0]]),
        torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 4.0, 2.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),
        torch.zeros(2, n_features, dtype=torch.long),
    )


def test_below_the_size_the_step_scores_the_whole_catalogue(synthetic_context) -> None:
    ctx = synthetic_context(60, 40, [0, 1, 3])
    model = build_model(ctx, ModelConfig(dim=8))
    assert len(model.sample) == 0 and model.scored_tables(model.item_tables()) is None


def test_a_forced_sample_is_fixed_distinct_and_scored_with_its_correction(
    synthetic_context,
) -> None:
    ctx = synthetic_context(60, 40, [0, 1, 3])
    model = build_model(ctx, SAMPLED)
    again = build_model(ctx, SAMPLED)
    assert torch.equal(model.sample, again.sample)  # the same for the same seed
    assert len(set(model.sample.tolist())) == 12
    tables = model.item_tables()
    scored = model.scored_tables(tables)
    assert scored is not None and scored.vectors.shape == (12, 8)
    torch.testing.assert_close(scored.bias, tables.bias[model.sample] + model.sample_correction)
    batch = support(len(ctx.data.user_features))
    with torch.no_grad():
        adapted = model.adapt(batch)
        initial = model.initial_users(batch.user_features)
        expected = inner_loop(initial, scored, batch, model.rule(), pulls=tables)
        whole = inner_loop(initial, tables, batch, model.rule())
    torch.testing.assert_close(adapted, expected)
    assert not torch.allclose(adapted, whole)  # the sample is what it scored


def test_the_service_adapts_with_the_artifact_s_own_sample(
    synthetic_context, tmp_path: Path
) -> None:
    ctx = synthetic_context(60, 40, [0, 1, 3])
    model = build_model(ctx, SAMPLED)
    artifact.save(model, ctx.data, tmp_path / "model", {"seed": 0})
    served = ServingModel(artifact.load(tmp_path / "model"))
    histories = [[(1, None), (5, 4.0), (7, 2.0)], [(2, None)]]
    profiles = [ctx.data.profile(0), {}]
    plain = support(len(ctx.data.user_features))
    codes = served.feature_codes(profiles)
    batch = Support(plain.items, plain.mask, plain.ratings, plain.rated, codes)
    with torch.no_grad():
        expected = model.adapt(batch)
    torch.testing.assert_close(served.adapt(histories, profiles), expected, rtol=1e-5, atol=1e-6)


def test_a_sample_naming_items_outside_the_catalogue_is_refused(
    synthetic_context, tmp_path: Path
) -> None:
    ctx = synthetic_context(60, 40, [0, 1, 3])
    model = build_model(ctx, SAMPLED)
    with torch.no_grad():
        model.sample[0] = 10_000
    artifact.save(model, ctx.data, tmp_path / "model", {"seed": 0})
    with pytest.raises(ArtifactError, match="sample names items outside the catalogue"):
        artifact.load(tmp_path / "model")


def test_the_correction_weighs_the_sample_up_to_the_catalogue() -> None:
    """Each sampled item stands for 1/pi items: summed over the sample, about the whole
    catalogue; a sample that covers the catalogue is not reweighted at all."""
    counts = np.random.default_rng(0).zipf(1.5, 2000).astype(float)
    model = ColdStartModel(
        ModelConfig(dim=8, sampled_from_items=1, sampled_items=400), 2000, None, [], False
    )
    model.draw_sample(counts, seed=0)
    stands_for = np.exp(model.sample_correction.numpy()).sum()
    assert 0.8 * 2000 < stands_for < 1.25 * 2000
    whole = ColdStartModel(
        ModelConfig(dim=8, sampled_from_items=1, sampled_items=5000), 2000, None, [], False
    )
    whole.draw_sample(counts, seed=0)
    assert len(whole.sample) == 2000 and not whole.sample_correction.any()


def test_unseen_items_that_take_the_catalogue_past_the_size_draw_a_sample(
    synthetic_context,
) -> None:
    ctx = synthetic_context(60, 40, [0, 1, 3])
    model = build_model(ctx, ModelConfig(dim=8, sampled_from_items=45, sampled_items=12))
    assert len(model.sample) == 0
    width = model.item_features.shape[1]
    grown = add_unseen_items(model, torch.zeros(10, width), torch.zeros(10, 0))
    assert len(grown.sample) == 12 and int(grown.sample.max()) < 50


def test_a_sample_of_the_whole_catalogue_gives_the_catalogue_s_query_loss(
    synthetic_context,
) -> None:
    """Past the size the query loss scores the sample; a sample of every item, weighed 1
    each, must then give exactly the loss over the catalogue."""
    ctx = synthetic_context(60, 40, [0, 1, 3])
    config = TrainConfig(users_per_step=16, max_support=5)
    support, query = sample_episodes(ctx, ctx.split.train, config, np.random.default_rng(0))
    whole = build_model(ctx, ModelConfig(dim=8))
    sampled = build_model(ctx, ModelConfig(dim=8, sampled_from_items=1, sampled_items=40))
    assert len(sampled.sample) == 40 and not sampled.sample_correction.any()
    state = whole.state_dict()
    state["sample"], state["sample_correction"] = sampled.sample, sampled.sample_correction
    sampled.load_state_dict(state)  # the same weights: only the sample differs
    users = whole.adapt(support).detach()
    torch.testing.assert_close(
        query_loss(sampled, users, query), query_loss(whole, users, query), rtol=1e-5, atol=1e-6
    )
