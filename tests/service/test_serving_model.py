"""The service's model against the evaluation's: what is measured offline is what is served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.model import ServingModel
from tests.helpers.tiny_model import write_tiny_model
from trainer import artifact
from trainer.evaluate import ColdStart, ColdStartAsServed
from trainer.model import ModelConfig
from trainer.split import Support
from trainer.train import TrainConfig


def test_the_service_adapts_a_user_as_the_evaluation_scores_coldstart_as_served(
    tmp_path: Path,
) -> None:
    loaded = artifact.load(write_tiny_model(tmp_path))
    with torch.no_grad():  # side features that matter, as a trained model's do
        for table in loaded.model.user_feature_embeddings:
            table.weight.normal_()
    served = ServingModel(loaded)
    history = [(3, 4.0), (7, None), (1, 2.0)]
    ours = ColdStart(ModelConfig(), TrainConfig(), loaded)
    support = Support(
        items=torch.tensor([[3, 7, 1]]),
        mask=torch.ones(1, 3),
        ratings=torch.tensor([[4.0, 0.0, 2.0]]),
        rated=torch.tensor([[1.0, 0.0, 1.0]]),
        user_features=torch.ones(1, len(loaded.model.user_feature_embeddings), dtype=torch.long),
    )
    with torch.no_grad():
        as_served = ColdStartAsServed(ours).scores(support)[0].numpy()
        with_features = ours.scores(support)[0].numpy()
    in_service = served.scores(served.adapt([history])[0].numpy())
    np.testing.assert_allclose(in_service, as_served, rtol=1e-5, atol=1e-5)
    assert not np.allclose(in_service, with_features, atol=1e-3)  # the features did matter


def test_a_model_trained_without_user_features_serves_cold_and_adapted_users(
    tmp_path: Path,
) -> None:
    served = ServingModel(artifact.load(write_tiny_model(tmp_path, user_features=False)))
    cold = served.cold_vector({})
    assert cold.shape == (served.dim,) and np.isfinite(cold).all()
    adapted = served.adapt([[(3, 4.0), (7, None)]])[0].numpy()
    assert np.isfinite(served.scores(adapted)).all()
    assert not np.allclose(adapted, cold)  # the events moved the user from the prior
