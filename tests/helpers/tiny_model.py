"""A small untrained model artifact on synthetic data, for the service tests.

Untrained is enough for the user side: these tests check the plumbing (events in,
states out, the API's answers), not the quality of the recommendations. The item side
is fitted for a few seconds, so that a registered item starts where items of its
genres and era sit, as the live-catalogue tests need.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer import artifact
from trainer.data import load_dataset
from trainer.episodes import make_context
from trainer.items import fit_item_side
from trainer.model import ModelConfig
from trainer.synth import write_synthetic
from trainer.train import TrainConfig, build_model


def write_tiny_model(
    root: Path,
    *,
    users: int = 60,
    items: int = 40,
    dim: int = 8,
    seed: int = 0,
    user_features: bool = True,
) -> Path:
    """Writes synthetic data to root/data and a model artifact to root/model (returned)."""
    write_synthetic(root / "data", n_users=users, n_items=items, seed=seed)
    data = load_dataset(root / "data")
    torch.manual_seed(0)
    ctx = make_context(data, 0, [0, 1, 3], torch.device("cpu"))
    model = build_model(ctx, ModelConfig(dim=dim, use_user_features=user_features))
    # The item side fitted briefly: new items start from their genres and era and adapt.
    fit_item_side(model, ctx, TrainConfig(item_start_steps=100))
    artifact.save(model, data, root / "model", {"seed": 0})
    return root / "model"
