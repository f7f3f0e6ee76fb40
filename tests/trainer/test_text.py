"""The optional text encoder's wrapping: blanks, long texts, and the no-encoder path."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import text
from trainer.errors import ColdstartError


class _Recording:
    """Stands in for the sentence-transformers model: records what it is asked to encode."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: list[str], batch_size: int, normalize_embeddings: bool):
        self.seen += texts
        return np.ones((len(texts), 3)) / np.sqrt(3)


def test_blank_texts_are_zeros_and_long_ones_are_cut() -> None:
    model = _Recording()
    encoder = text.TextEncoder("fake", "1", 3, model)
    vectors = encoder.encode(["  ", "a film", "y" * 100_000])
    assert vectors.shape == (3, 3) and vectors.dtype == np.float32
    assert not vectors[0].any() and np.allclose(np.linalg.norm(vectors[1:], axis=1), 1)
    assert model.seen == ["a film", "y" * text.MAX_TEXT_CHARS]


def test_no_text_wanted_or_given_means_no_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "load_encoder", lambda: pytest.fail("must not load"))
    vectors, encoder = text.text_vectors(["a", "b"], wanted=False)
    assert vectors.shape == (2, 0) and encoder is None
    vectors, encoder = text.text_vectors(["", " "], wanted=True)
    assert vectors.shape == (2, 0) and encoder is None


def test_a_model_asks_for_its_own_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "load_encoder", lambda: None)
    wanted = {"name": text.PACKAGE, "version": "0.1.0", "dim": 384}
    with pytest.raises(ColdstartError, match="this install has none"):
        text.require_encoder(wanted)
