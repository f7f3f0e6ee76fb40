"""The model artifact: `model.safetensors` (tensors only) plus `manifest.json`.

The manifest carries everything needed to rebuild and trust the model without
the training data: the config, the item id map, the feature vocabularies, a
fingerprint of the training data, the validation metrics, and a hash of the
weights file. Loading checks all of it, so a truncated, corrupted or
mismatched artifact is refused with a message instead of serving garbage.
No pickle is involved anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from trainer.data import Dataset
from trainer.errors import ArtifactError
from trainer.model import ColdStartModel, ModelConfig

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
_REQUIRED = (
    "format_version",
    "model_version",
    "model_config",
    "item_ids",
    "user_features",
    "item_feature_names",
    "has_ratings",
    "weights_sha256",
    "dataset",
)


@dataclass(frozen=True)
class Artifact:
    model: ColdStartModel
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def item_ids(self) -> list[str]:
        return self.manifest["item_ids"]


def data_fingerprint(data: Dataset) -> str:
    """A hash of the interactions, to tell which data a model was trained on."""
    digest = hashlib.sha256()
    for array in (data.users, data.items, data.ratings, data.timestamps):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("\n".join(data.item_ids).encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    packages = ("coldstart", "torch", "numpy", "safetensors")
    return {"python": platform.python_version(), **{p: _version(p) for p in packages}}


def _version(package: str) -> str:
    """A checkout run from its source tree (PYTHONPATH, as on a GPU machine with its own
    torch) has no installed metadata for coldstart: that must not stop a save."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def save(model: ColdStartModel, data: Dataset, out: Path, extra: dict) -> dict:
    """Writes the artifact into `out`; returns the manifest. `extra` adds keys (metrics, seed)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save_tensors(state)
    names = sorted(data.user_features)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model.config),
        "item_ids": data.item_ids,
        "user_features": {name: data.user_vocab[name] for name in names},
        "item_feature_names": data.item_feature_names,
        "has_ratings": model.has_ratings,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "dataset": {
            "name": data.name,
            "fingerprint": data_fingerprint(data),
            "n_users": data.n_users,
            "n_items": data.n_items,
            "n_interactions": len(data.users),
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        **extra,
    }
    identity = {k: manifest[k] for k in ("weights_sha256", "model_config", "item_ids")}
    manifest["model_version"] = hashlib.sha256(
        json.dumps(identity, sort_keys=True).encode()
    ).hexdigest()[:16]
    # Weights first, manifest last, each replaced atomically: a service polling this directory
    # sees the old artifact, or a new manifest whose hash the weights match, never a torn file.
    _replace(out / WEIGHTS, weights)
    _replace(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _replace(path: Path, content: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, path)


def version_of(model_dir: str | Path) -> str:
    """The model version the directory holds now, from its manifest alone (a cheap poll)."""
    path = Path(model_dir) / MANIFEST
    version = _read_manifest(path).get("model_version")
    if not isinstance(version, str):
        raise ArtifactError(f"{path}: no model_version")
    return version


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest; is this a model directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: the manifest is not a JSON object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ArtifactError(f"{path}: manifest lacks {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {manifest['format_version']!r}, "
            f"this coldstart reads {FORMAT_VERSION}"
        )
    return manifest


def _read_weights(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise ArtifactError(f"{path}: contents do not match the manifest (corrupt or truncated)")
    try:
        return load_tensors(raw)
    except SafetensorError as error:
        raise ArtifactError(f"{path}: not a valid safetensors file ({error})") from None


def _build(manifest: dict) -> ColdStartModel:
    try:
        config = ModelConfig(**manifest["model_config"])
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"manifest model_config does not fit this coldstart: {error}") from None
    n_items, width = len(manifest["item_ids"]), len(manifest["item_feature_names"])
    vocab = [len(values) for values in manifest["user_features"].values()]
    features = torch.zeros(n_items, width) if width else None
    return ColdStartModel(config, n_items, features, vocab, bool(manifest["has_ratings"]))


def load(model_dir: str | Path) -> Artifact:
    """Loads and validates an artifact; raises ArtifactError saying what is wrong."""
    root = Path(model_dir)
    manifest = _read_manifest(root / MANIFEST)
    tensors = _read_weights(root / WEIGHTS, manifest["weights_sha256"])
    model = _build(manifest)
    expected = model.state_dict()
    if set(tensors) != set(expected):
        difference = sorted(set(tensors) ^ set(expected))
        raise ArtifactError(f"{root / WEIGHTS}: tensors do not match the manifest: {difference}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ArtifactError(
                f"{root / WEIGHTS}: {name} has shape {tuple(tensor.shape)}, "
                f"the manifest implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)
    model.eval()
    return Artifact(model, manifest)
