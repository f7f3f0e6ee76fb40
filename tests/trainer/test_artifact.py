"""Artifact round trip, and refusal of a corrupt, truncated or mismatched artifact."""

import hashlib
import json
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
import torch

from trainer import artifact
from trainer.data import load_dataset
from trainer.episodes import make_context
from trainer.errors import ArtifactError
from trainer.model import ModelConfig
from trainer.synth import write_synthetic
from trainer.train import build_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("artifact")
    write_synthetic(root / "data", n_users=60, n_items=40, seed=0)
    data = load_dataset(root / "data")
    ctx = make_context(data, 0, [0, 1, 3], torch.device("cpu"))
    model = build_model(ctx, ModelConfig(dim=8))
    artifact.save(model, data, root / "model", {"seed": 0})
    return root / "model", model


def test_round_trip_keeps_every_tensor_and_the_manifest(saved) -> None:
    model_dir, model = saved
    loaded = artifact.load(model_dir)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert loaded.version == manifest["model_version"]
    assert len(loaded.item_ids) == 40
    assert manifest["dataset"]["fingerprint"]
    assert {"torch", "numpy", "safetensors", "python"} <= set(manifest["versions"])


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


def test_truncated_weights_are_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[0], tmp_path)
    weights = copy / artifact.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        artifact.load(copy)


def test_flipped_byte_is_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[0], tmp_path)
    weights = copy / artifact.WEIGHTS
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        artifact.load(copy)


def test_garbage_with_a_matching_hash_is_still_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[0], tmp_path)
    (copy / artifact.WEIGHTS).write_bytes(b"not safetensors at all")
    manifest = json.loads((copy / artifact.MANIFEST).read_text())
    manifest["weights_sha256"] = hashlib.sha256(b"not safetensors at all").hexdigest()
    (copy / artifact.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a valid safetensors"):
        artifact.load(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.pop("item_ids"), "lacks item_ids"),
        (lambda m: m["item_ids"].append("extra"), "shape"),
        (lambda m: m["model_config"].update(dim=16), "shape"),
        (lambda m: m["model_config"].update(colour="red"), "does not fit"),
    ],
)
def test_mismatched_manifest_is_refused(saved, tmp_path: Path, edit, message: str) -> None:
    copy = _copy(saved[0], tmp_path)
    manifest = json.loads((copy / artifact.MANIFEST).read_text())
    edit(manifest)
    (copy / artifact.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        artifact.load(copy)


def test_missing_or_invalid_manifest_is_refused(saved, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest"):
        artifact.load(tmp_path)
    copy = _copy(saved[0], tmp_path)
    (copy / artifact.MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifact.load(copy)


def test_a_source_checkout_without_package_metadata_still_saves(
    tmp_path: Path, monkeypatch
) -> None:
    def uninstalled(package: str) -> str:
        if package == "coldstart":
            raise PackageNotFoundError(package)
        return "1.0"

    monkeypatch.setattr(artifact, "version", uninstalled)
    write_synthetic(tmp_path / "data", n_users=30, n_items=20, seed=0)
    data = load_dataset(tmp_path / "data")
    model = build_model(make_context(data, 0, [0, 1], torch.device("cpu")), ModelConfig(dim=4))
    manifest = artifact.save(model, data, tmp_path / "model", {"seed": 0})
    assert manifest["versions"]["coldstart"] == "not installed"
    assert manifest["versions"]["torch"] == "1.0"
    assert artifact.load(tmp_path / "model").version == manifest["model_version"]
