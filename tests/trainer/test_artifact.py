"""Artifact round trip, and refusal of a corrupt, truncated or mismatched artifact."""

import dataclasses
import hashlib
import json
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

from trainer import artifact
from trainer.errors import ArtifactError
from trainer.items import add_unseen_items
from trainer.model import ModelConfig
from trainer.train import build_model


@pytest.fixture(scope="module")
def saved(
    tmp_path_factory: pytest.TempPathFactory, synthetic_context
) -> tuple[Path, torch.nn.Module]:
    ctx = synthetic_context(60, 40, [0, 1, 3])
    model = build_model(ctx, ModelConfig(dim=8))
    out = tmp_path_factory.mktemp("artifact") / "model"
    artifact.save(model, ctx.data, out, {"seed": 0})
    return out, model


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


def _rewrite(model_dir: Path, edit, restamp: bool = True) -> None:
    """Edit the manifest; restamp sets model_version to match, as a forger would."""
    manifest = json.loads((model_dir / artifact.MANIFEST).read_text())
    edit(manifest)
    if restamp:
        manifest["model_version"] = artifact.content_version(manifest)
    (model_dir / artifact.MANIFEST).write_text(json.dumps(manifest))


def test_garbage_with_a_matching_hash_is_still_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[0], tmp_path)
    (copy / artifact.WEIGHTS).write_bytes(b"not safetensors at all")
    digest = hashlib.sha256(b"not safetensors at all").hexdigest()
    _rewrite(copy, lambda m: m.update(weights_sha256=digest))
    with pytest.raises(ArtifactError, match="not a valid safetensors"):
        artifact.load(copy)


def test_non_finite_weights_with_matching_hashes_are_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[0], tmp_path)
    state = {k: v.clone() for k, v in saved[1].state_dict().items()}
    state["item_bias"][3] = float("nan")
    raw = save_tensors(state)
    (copy / artifact.WEIGHTS).write_bytes(raw)
    _rewrite(copy, lambda m: m.update(weights_sha256=hashlib.sha256(raw).hexdigest()))
    with pytest.raises(ArtifactError, match="item_bias holds NaN"):
        artifact.load(copy)


def _swap_first_items(manifest: dict) -> None:
    ids = manifest["item_ids"]
    ids[0], ids[1] = ids[1], ids[0]


@pytest.mark.parametrize(
    "edit",
    [
        _swap_first_items,
        lambda m: m["model_config"].update(inner_steps=1),
        lambda m: m.update(has_ratings=not m["has_ratings"]),
        lambda m: m["user_features"]["occupation"].reverse(),
        lambda m: m.update(model_version="deadbeefdeadbeef"),
        lambda m: m.update(seed=1),
        lambda m: m["dataset"].update(fingerprint="0" * 64),
        lambda m: m.update(text_encoder={"name": "other", "version": "1", "dim": 1}),
    ],
    ids=[
        "item map",
        "config",
        "has_ratings",
        "vocabulary",
        "version",
        "seed",
        "fingerprint",
        "text encoder",
    ],
)
def test_an_edited_manifest_no_longer_matches_its_version(saved, tmp_path: Path, edit) -> None:
    copy = _copy(saved[0], tmp_path)
    _rewrite(copy, edit, restamp=False)
    with pytest.raises(ArtifactError, match="model_version does not match"):
        artifact.load(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update(format_version="4"), "format_version is a str, not an int"),
        (lambda m: m["item_ids"].append("extra"), "shape"),
        (lambda m: m["model_config"].update(dim=16), "shape"),
        (lambda m: m["model_config"].update(dim=1000), "shape"),
        # torch cannot size the (dim, dim) preconditioner, even on the meta device
        (lambda m: m["model_config"].update(dim=10**12), "dim must be <= 1024"),
        (lambda m: m["model_config"].update(colour="red"), "does not fit"),
        (lambda m: m["model_config"].update(dim="8"), "dim must be int"),
        (lambda m: m["model_config"].update(init_prior=0), "init_prior must be > 0"),
        (lambda m: m["model_config"].update(inner_steps=2.5), "inner_steps must be int"),
        (lambda m: m["model_config"].update(inner_steps=10**12), "inner_steps must be <= 100"),
        (lambda m: m.update(seed=True), "seed True is not an integer from 0"),
        (lambda m: m.update(seed=-1), "seed -1 is not an integer from 0"),
        (lambda m: m.update(item_ids=None), "item_ids is a NoneType, not a list"),
        (lambda m: m.update(user_features=[]), "user_features is a list, not a dict"),
        (lambda m: m["item_ids"].__setitem__(0, 7), "item_ids is not a list of strings"),
        (lambda m: m["item_ids"].__setitem__(0, m["item_ids"][1]), "repeats an id"),
        (lambda m: m.update(cold_item_ids=[m["item_ids"][0]]), "not the last of item_ids"),
        (lambda m: m.update(text_encoder=None), "text_encoder is a NoneType, not a dict"),
        (lambda m: m["text_encoder"].update(dim=-1), "needs exactly name, version and dim"),
        (
            lambda m: m.update(text_encoder={"name": "e", "version": 1, "dim": 8}),
            "name and version must be strings",
        ),
        (
            lambda m: m.update(text_encoder={"name": "e", "version": "1", "dim": -1}),
            "text_encoder.dim -1 is not an integer",
        ),
        (lambda m: m.update(text_encoder={"name": "e", "version": "1", "dim": 16}), "shape"),
        (
            lambda m: m.update(user_features=dict(reversed(m["user_features"].items()))),
            "user_features are not in sorted order",
        ),
    ],
)
def test_mismatched_manifest_is_refused(saved, tmp_path: Path, edit, message: str) -> None:
    copy = _copy(saved[0], tmp_path)
    _rewrite(copy, edit)
    with pytest.raises(ArtifactError, match=message):
        artifact.load(copy)


def test_unseen_items_are_saved_as_the_catalogue_s_cold_items(
    synthetic_context, tmp_path: Path
) -> None:
    ctx = synthetic_context(60, 40, [0, 1, 3])
    data = dataclasses.replace(ctx.data, unseen_item_ids=["new-1", "new-2"])
    width = data.item_features.shape[1]
    model = add_unseen_items(
        build_model(ctx, ModelConfig(dim=8)), torch.eye(2, width), torch.zeros(2, 0)
    )
    manifest = artifact.save(model, data, tmp_path / "model", {"seed": 0})
    assert manifest["cold_item_ids"] == ["new-1", "new-2"]
    loaded = artifact.load(tmp_path / "model")
    assert loaded.item_ids[-2:] == ["new-1", "new-2"] and len(loaded.item_ids) == 42
    torch.testing.assert_close(loaded.model.item_tables().bias, model.item_tables().bias)


def test_missing_or_invalid_manifest_is_refused(saved, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest"):
        artifact.load(tmp_path)
    copy = _copy(saved[0], tmp_path)
    _rewrite(copy, lambda m: m.pop("item_ids"), restamp=False)
    with pytest.raises(ArtifactError, match="lacks item_ids"):
        artifact.load(copy)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ArtifactError, match="not a model directory"):
        artifact.load(tmp_path / "a_file")
    (copy / artifact.MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifact.load(copy)


def test_a_source_checkout_without_package_metadata_still_saves(
    tmp_path: Path, monkeypatch, synthetic_context
) -> None:
    def uninstalled(package: str) -> str:
        if package == "coldstart":
            raise PackageNotFoundError(package)
        return "1.0"

    monkeypatch.setattr(artifact, "version", uninstalled)
    ctx = synthetic_context(30, 20, [0, 1])
    model = build_model(ctx, ModelConfig(dim=4))
    manifest = artifact.save(model, ctx.data, tmp_path / "model", {"seed": 0})
    assert manifest["versions"]["coldstart"] == "not installed"
    assert manifest["versions"]["torch"] == "1.0"
    assert artifact.load(tmp_path / "model").version == manifest["model_version"]


def test_the_fingerprint_tells_swapped_side_features_apart(synthetic_data) -> None:
    """The prior reads the side features: the same vocabulary with values moved between
    users (or items) is other data."""
    data = synthetic_data(30, 20)
    genders = data.user_features["gender"]
    swapped_genders = np.select([genders == 1, genders == 2], [2, 1], genders)
    swapped = dataclasses.replace(
        data, user_features=data.user_features | {"gender": swapped_genders}
    )
    assert artifact.data_fingerprint(swapped) != artifact.data_fingerprint(data)
    moved = dataclasses.replace(data, item_features=data.item_features[::-1].copy())
    assert artifact.data_fingerprint(moved) != artifact.data_fingerprint(data)


def test_the_fingerprint_tells_renamed_users_apart(synthetic_data) -> None:
    """The split hashes raw user ids, so renamed users are another split of the same events."""
    data = synthetic_data(30, 20)
    renamed = dataclasses.replace(data, user_ids=[f"x{u}" for u in data.user_ids])
    assert artifact.data_fingerprint(renamed) != artifact.data_fingerprint(data)
