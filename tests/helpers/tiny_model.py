"""A small untrained model artifact on synthetic data, for the service tests.

Untrained is enough: these tests check the plumbing (events in, states out, the
API's answers), not the quality of the recommendations.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer import artifact
from trainer.data import load_dataset
from trainer.episodes import make_context
from trainer.model import ModelConfig
from trainer.synth import write_synthetic
from trainer.train import build_model


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
    model = build_model(
        make_context(data, 0, [0, 1, 3], torch.device("cpu")),
        ModelConfig(dim=dim, use_user_features=user_features),
    )
    artifact.save(model, data, root / "model", {"seed": 0})
    return root / "model"
