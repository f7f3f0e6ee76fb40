"""The service's model against the evaluation's: what is measured offline is what is served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.history import History, HistoryEntry
from service.model import ServingModel
from service.state import UserRecord
from tests.helpers.tiny_model import write_tiny_model
from trainer import artifact
from trainer.data import load_dataset
from trainer.episodes import make_context
from trainer.evaluate import ColdStart, ColdStartNoProfile
from trainer.model import ModelConfig
from trainer.split import Support, user_feature_matrix
from trainer.synth import write_synthetic
from trainer.train import TrainConfig, build_model


def test_the_service_adapts_a_user_from_their_raw_profile_as_the_evaluation_scores_them(
    tmp_path: Path,
) -> None:
    """The profile as the data file holds it, read by the service, gives the codes training
    gave: the served vector is the evaluation's `coldstart`, and without the profile its
    `coldstart_no_profile`."""
    loaded = artifact.load(write_tiny_model(tmp_path))
    with torch.no_grad():  # side features that matter, as a trained model's do
        for table in loaded.model.user_feature_embeddings:
            table.weight.normal_()
    served = ServingModel(loaded)
    data = load_dataset(tmp_path / "data")
    codes = user_feature_matrix(data)
    user = int(np.flatnonzero(codes.all(axis=1))[0])  # every feature known
    profile = data.profile(user)
    history = [(3, 4.0), (7, None), (1, 2.0)]
    ours = ColdStart(ModelConfig(), TrainConfig(), loaded)
    support = Support(
        items=torch.tensor([[3, 7, 1]]),
        mask=torch.ones(1, 3),
        ratings=torch.tensor([[4.0, 0.0, 2.0]]),
        rated=torch.tensor([[1.0, 0.0, 1.0]]),
        user_features=torch.from_numpy(codes[[user]]),
    )
    with torch.no_grad():
        with_profile = ours.scores(support)[0].numpy()
        no_profile = ColdStartNoProfile(ours).scores(support)[0].numpy()
    served_with = served.scores(served.adapt([history], [profile])[0].numpy())
    served_without = served.scores(served.adapt([history])[0].numpy())
    np.testing.assert_allclose(served_with, with_profile, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served_without, no_profile, rtol=1e-5, atol=1e-5)
    assert not np.allclose(served_with, served_without, atol=1e-3)  # the profile did matter
    assert served.features_used(profile) == sorted(profile)


def test_a_value_is_read_the_way_training_read_it_and_an_unknown_one_is_counted_as_such(
    tmp_path: Path,
) -> None:
    served = ServingModel(artifact.load(write_tiny_model(tmp_path)))
    known = {name: values[1] for name, values in served.features.values.items()}
    shouted = {name: f"  {value.upper()} " for name, value in known.items()}
    assert served.feature_codes([shouted]).tolist() == served.feature_codes([known]).tolist()
    assert served.features_used(shouted) == sorted(known)
    strange = {name: "never-seen" for name in known}
    assert served.feature_codes([strange]).tolist() == [[0] * len(known)]
    assert served.unknown_values(strange) == sorted(known)
    assert served.features_used(strange) == []


def test_a_model_trained_without_user_features_serves_cold_and_adapted_users(
    tmp_path: Path,
) -> None:
    served = ServingModel(artifact.load(write_tiny_model(tmp_path, user_features=False)))
    cold = served.cold_vector({})
    assert cold.shape == (served.dim,) and np.isfinite(cold).all()
    adapted = served.adapt([[(3, 4.0), (7, None)]])[0].numpy()
    assert np.isfinite(served.scores(adapted)).all()
    assert not np.allclose(adapted, cold)  # the events moved the user from the prior


def test_a_stored_profile_is_read_by_the_model_that_re_adapts_it(tmp_path: Path) -> None:
    """After a model swap the stored raw values are read by the new model's own reading; a
    feature the new model lacks is ignored, not an error."""
    with_features = ServingModel(artifact.load(write_tiny_model(tmp_path / "a")))
    without = ServingModel(artifact.load(write_tiny_model(tmp_path / "b", user_features=False)))
    history = History([HistoryEntry("i3", 4.0), HistoryEntry("i7", None)])
    record = UserRecord(
        "swapped", np.zeros(8, np.float32), history, "older", 1, profile={"age": "23"}
    )
    for model in (with_features, without):
        interactions = model.interactions(history)
        expected = model.adapt([interactions], [{"age": "23"}])[0].numpy()
        np.testing.assert_allclose(model.vector(record, interactions), expected, rtol=1e-6)
    bare = without.adapt([without.interactions(history)])[0].numpy()
    np.testing.assert_allclose(without.vector(record, without.interactions(history)), bare)


def test_a_model_without_user_features_adapts_users(tmp_path: Path) -> None:
    """A data set with no user side file gives a model with no user features at all."""
    write_synthetic(tmp_path / "data", n_users=40, n_items=30, seed=0)
    (tmp_path / "data" / "users.csv").unlink()
    data = load_dataset(tmp_path / "data")
    model = build_model(make_context(data, 0, [0, 1], torch.device("cpu")), ModelConfig(dim=8))
    artifact.save(model, data, tmp_path / "model", {"seed": 0})
    served = ServingModel(artifact.load(tmp_path / "model"))
    assert served.feature_names == []
    adapted = served.adapt([[(1, None), (2, 4.0)], []])
    assert adapted.shape == (2, 8)
    torch.testing.assert_close(adapted[1], served.prior)
