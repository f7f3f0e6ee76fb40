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
from trainer.features import FeatureReader
from trainer.model import ColdStartModel, ModelConfig

# Raised whenever what the manifest's hashes cover changes: an artifact of another format is
# refused with its version named, not misread.
FORMAT_VERSION = 7
MAX_SEED = 2**32 - 1  # what `coldstart train --seed` accepts
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
_REQUIRED = {  # key: its JSON type
    "format_version": int,
    "model_version": str,
    "model_config": dict,
    "item_ids": list,
    "user_features": dict,
    "user_feature_brackets": dict,
    "item_feature_names": list,
    "cold_item_ids": list,
    "text_encoder": dict,
    "has_ratings": bool,
    "weights_sha256": str,
    "dataset": dict,
    "seed": int,
}
# What decides the scores a model gives, and on which users it may be tested: the model
# version is a hash of these.
_IDENTITY = (
    "weights_sha256",
    "seed",
    "dataset",
    "model_config",
    "item_ids",
    "user_features",
    "user_feature_brackets",
    "item_feature_names",
    "cold_item_ids",
    "text_encoder",
    "has_ratings",
)
MAX_TEXT_DIM = 4096  # a text encoder's vector width, as a manifest may claim it


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

    @property
    def text_encoder(self) -> dict:
        """The encoder the item-start network reads ({} for none): new items' text must
        be embedded by exactly it (trainer.text.require_encoder)."""
        return self.manifest["text_encoder"]

    @property
    def feature_reader(self) -> FeatureReader:
        """How the model reads a user's raw feature values, as training read them."""
        return FeatureReader(self.manifest["user_features"], self.manifest["user_feature_brackets"])


def data_fingerprint(data: Dataset) -> str:
    """A hash of the interactions and side features, to tell which data a model was trained
    on. The raw user ids are in it because the split hashes them: the same file with users
    renamed puts other users in the test set. The side features' values are in it because
    the model's prior reads them: the same vocabulary with two users' genders swapped is
    other data. Item text and the side file's unseen items are in it: the item-start
    network reads them."""
    digest = hashlib.sha256()
    arrays = [data.users, data.items, data.ratings, data.timestamps, data.item_features]
    arrays.append(data.unseen_item_features)
    arrays += [data.user_features[name] for name in sorted(data.user_features)]
    for array in arrays:
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    names = [data.item_ids, data.user_ids, data.item_feature_names, sorted(data.user_vocab)]
    names += [data.item_text, data.unseen_item_ids, data.unseen_item_text]
    names += [data.user_vocab[name] for name in sorted(data.user_vocab)]
    for ids in names:
        digest.update("\n".join(ids).encode() + b"\0")
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


def save(
    model: ColdStartModel,
    data: Dataset,
    out: Path,
    extra: dict,
    text_encoder: dict | None = None,
) -> dict:
    """Writes the artifact into `out`; returns the manifest. `extra` adds keys: the split's
    seed (required), metrics. A model whose catalogue holds the data's unseen items too
    (trainer.items.add_unseen_items) lists them as cold items. `text_encoder` describes the
    encoder the item-start network reads (trainer.text), when it reads text."""
    out.mkdir(parents=True, exist_ok=True)
    cold = data.unseen_item_ids[: len(model.item_bias) - data.n_items]
    if data.n_items + len(cold) != len(model.item_bias):
        raise ValueError(f"a model of {len(model.item_bias)} items for {data.n_items} items")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save_tensors(state)
    names = sorted(data.user_features)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model.config),
        "item_ids": data.item_ids + cold,
        "user_features": {name: data.user_vocab[name] for name in names},
        "user_feature_brackets": {
            n: data.user_brackets[n] for n in names if n in data.user_brackets
        },
        "item_feature_names": data.item_feature_names,
        "cold_item_ids": cold,
        "text_encoder": text_encoder or {},
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
    manifest["model_version"] = content_version(manifest)
    # Weights first, manifest last, each replaced atomically. A service polling the manifest
    # sees the old version (and loads nothing) until the new manifest lands, whose hash the new
    # weights match; a load between the two renames is refused (old manifest, new weights).
    _replace(out / WEIGHTS, weights)
    _replace(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def content_version(manifest: dict) -> str:
    """The model version: a hash of the weights and of everything that says how to read them,
    so an edited item map or config cannot pass as the model it claims to be."""
    identity = {key: manifest[key] for key in _IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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


def _named(kind: type) -> str:
    return ("an " if kind.__name__[0] in "aeiou" else "a ") + kind.__name__


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest; is this a model directory?") from None
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: the manifest is not a JSON object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ArtifactError(f"{path}: manifest lacks {', '.join(missing)}")
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest[key], kind):
            raise ArtifactError(
                f"{path}: {key} is {_named(type(manifest[key]))}, not {_named(kind)}"
            )
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {manifest['format_version']!r}, "
            f"this coldstart reads {FORMAT_VERSION}"
        )
    seed = manifest["seed"]
    if isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ArtifactError(f"{path}: seed {seed!r} is not an integer from 0 to {MAX_SEED}")
    _check_names(manifest, path)
    return manifest


def _check_names(manifest: dict, path: Path) -> None:
    """The id map and the vocabularies must be lists of strings, ids unique, features sorted."""
    lists = {key: manifest[key] for key in ("item_ids", "item_feature_names", "cold_item_ids")}
    lists |= {f"user_features.{n}": v for n, v in manifest["user_features"].items()}
    for name, values in lists.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ArtifactError(f"{path}: {name} is not a list of strings")
    if len(set(manifest["item_ids"])) != len(manifest["item_ids"]):
        raise ArtifactError(f"{path}: item_ids repeats an id")
    cold = manifest["cold_item_ids"]
    if cold and manifest["item_ids"][-len(cold) :] != cold:
        raise ArtifactError(f"{path}: cold_item_ids are not the last of item_ids")
    # The version hashes the manifest with sorted keys, so it cannot see their order; the
    # feature embeddings are read in this order, and save writes it sorted.
    if list(manifest["user_features"]) != sorted(manifest["user_features"]):
        raise ArtifactError(f"{path}: user_features are not in sorted order")
    for name, edges in manifest["user_feature_brackets"].items():
        if name not in manifest["user_features"]:
            raise ArtifactError(f"{path}: user_feature_brackets names an unknown feature {name!r}")
        if not isinstance(edges, list) or not all(
            isinstance(e, int) and not isinstance(e, bool) for e in edges
        ):
            raise ArtifactError(f"{path}: user_feature_brackets.{name} is not a list of integers")
        if not edges or edges != sorted(set(edges)):
            raise ArtifactError(f"{path}: user_feature_brackets.{name} is not increasing")
    _check_text_encoder(manifest["text_encoder"], path)


def _check_text_encoder(encoder: dict, path: Path) -> None:
    """{} (no text read), or the name, version and vector width of the encoder the
    item-start network reads: trainer.text.require_encoder holds an install to them."""
    if not encoder:
        return
    if set(encoder) != {"name", "version", "dim"}:
        raise ArtifactError(f"{path}: text_encoder needs exactly name, version and dim")
    if not all(isinstance(encoder[key], str) for key in ("name", "version")):
        raise ArtifactError(f"{path}: text_encoder name and version must be strings")
    dim = encoder["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= MAX_TEXT_DIM:
        raise ArtifactError(f"{path}: text_encoder.dim {dim!r} is not an integer 1..{MAX_TEXT_DIM}")


def _read_weights(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read ({error.strerror})") from None
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
    text_dim = manifest["text_encoder"].get("dim", 0)
    return ColdStartModel(config, n_items, features, vocab, bool(manifest["has_ratings"]), text_dim)


def load(model_dir: str | Path) -> Artifact:
    """Loads and validates an artifact; raises ArtifactError saying what is wrong."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not a model directory")
    manifest = _read_manifest(root / MANIFEST)
    if manifest["model_version"] != content_version(manifest):
        raise ArtifactError(
            f"{root / MANIFEST}: model_version does not match the manifest's contents (edited?)"
        )
    tensors = _read_weights(root / WEIGHTS, manifest["weights_sha256"])
    with torch.device("meta"):  # shapes only: a forged config cannot make us allocate it
        expected = _build(manifest).state_dict()
    if set(tensors) != set(expected):
        difference = sorted(set(tensors) ^ set(expected))
        raise ArtifactError(f"{root / WEIGHTS}: tensors do not match the manifest: {difference}")
    for name, tensor in tensors.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise ArtifactError(
                f"{root / WEIGHTS}: {name} is {tensor.dtype} of shape {tuple(tensor.shape)}, "
                f"the manifest implies {want.dtype} of shape {tuple(want.shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{root / WEIGHTS}: {name} holds NaN or infinite values")
    sample = tensors["sample"]
    if len(sample) and not (
        int(sample.min()) >= 0 and int(sample.max()) < len(manifest["item_ids"])
    ):
        raise ArtifactError(f"{root / WEIGHTS}: sample names items outside the catalogue")
    model = _build(manifest)
    model.load_state_dict(tensors)
    model.eval()
    return Artifact(model, manifest)
