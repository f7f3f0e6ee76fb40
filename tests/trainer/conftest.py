"""Fixtures the trainer tests share: synthetic data sets, their contexts, and the CLI run from
synthetic data to an evaluation.

A synthetic data set is written once per session for each size and seed; tests read it and
never change it (one that edits its input copies it first).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from service.cli import main
from trainer.data import Dataset, load_dataset
from trainer.episodes import Context, make_context
from trainer.synth import write_synthetic


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """(n_users, n_items, seed=0) -> the directory of that synthetic data set (csv layout)."""
    written: dict[tuple[int, int, int], Path] = {}

    def directory(n_users: int, n_items: int, seed: int = 0) -> Path:
        key = (n_users, n_items, seed)
        if key not in written:
            written[key] = tmp_path_factory.mktemp(f"synth-{n_users}x{n_items}-seed{seed}")
            write_synthetic(written[key], n_users, n_items, seed)
        return written[key]

    return directory


@pytest.fixture(scope="session")
def synthetic_data(synthetic_dir: Callable[..., Path]) -> Callable[..., Dataset]:
    """(n_users, n_items, seed=0) -> that synthetic data set, loaded afresh."""
    return lambda n_users, n_items, seed=0: load_dataset(synthetic_dir(n_users, n_items, seed))


@pytest.fixture(scope="session")
def synthetic_context(synthetic_data: Callable[..., Dataset]) -> Callable[..., Context]:
    """(n_users, n_items, support_sizes) -> the seed-0 split of that data set, on the CPU."""

    def context(n_users: int, n_items: int, support_sizes: list[int]) -> Context:
        data = synthetic_data(n_users, n_items)
        return make_context(data, 0, support_sizes, torch.device("cpu"))

    return context


@dataclass(frozen=True)
class EndToEnd:
    """What `coldstart synth`, `train` and `evaluate --model` left behind."""

    data: Path  # the synthetic data set synth wrote
    out: Path  # evaluate's results directory
    evaluate: list[str]  # the evaluate command, without --support-sizes and --device
    manifest: dict  # the artifact's manifest
    results: dict  # evaluate's results.json


@pytest.fixture
def train_then_evaluate(tmp_path: Path) -> Callable[[str], EndToEnd]:
    """(device) -> an EndToEnd: a short training on 500 users and 120 items, then every
    method evaluated on the model's split at k = 0, 3, 10; each command exits 0."""

    def run(device: str) -> EndToEnd:
        data, model, out = tmp_path / "data", tmp_path / "model", tmp_path / "eval"
        assert main(["synth", "--out", str(data), "--users", "500", "--items", "120"]) == 0
        train = ["train", "--data", str(data), "--out", str(model), "--device", device]
        assert main([*train, "--meta-steps", "120", "--eval-every", "40", "--dim", "16"]) == 0
        evaluate = ["evaluate", "--data", str(data), "--out", str(out), "--model", str(model)]
        flags = ["--support-sizes", "0,3,10", "--device", device]
        assert main([*evaluate, *flags]) == 0
        results = json.loads((out / "results.json").read_text(), parse_constant=_not_json)
        manifest = json.loads((model / "manifest.json").read_text())
        return EndToEnd(data, out, evaluate, manifest, results)

    return run


def _not_json(constant: str) -> None:
    """json.loads accepts NaN and Infinity, which strict parsers (and the contract) do not."""
    raise AssertionError(f"results.json holds {constant}")
