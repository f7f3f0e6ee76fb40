"""The approximate top-k of large catalogues: the index finds (nearly) the exact top-k, and
a top-k through it filters seen and retired items exactly, adds registered items, and
leaves candidate restrictions to the exact path."""

from __future__ import annotations

import numpy as np
import pytest

from service.catalogue import ItemEntry
from service.live_catalogue import LiveCatalogue
from service.model import Retrieval, ServingModel
from service.retrieval import ItemIndex
from trainer import artifact


def clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Item rows as a trained table looks: clusters of genres, a log-popularity bias."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, dim))
    bias = -np.log(np.arange(1, n + 1, dtype=np.float32))
    return vectors.astype(np.float32), rng.permutation(bias).astype(np.float32)


def test_the_index_finds_the_exact_top_20_nearly_always() -> None:
    vectors, bias = clustered(20_000, 16, seed=0)
    index = ItemIndex.for_size(vectors, bias, probes=32)
    queries = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    recall = []
    for query in queries:
        exact = set(np.argsort(-(vectors @ query + bias))[:20].tolist())
        recall.append(len(exact & set(index.search(query, 20).tolist())) / 20)
    assert np.mean(recall) >= 0.95


@pytest.fixture(scope="module")
def indexed(model_dir) -> ServingModel:  # type: ignore[no-untyped-def]
    """The tiny model with an index over its 40 items, probing every list: exact."""
    model = ServingModel(artifact.load(model_dir), Retrieval(index_from=10, probes=1000))
    assert model.index is not None
    return model


def test_a_top_k_through_the_index_is_the_exact_one(
    indexed: ServingModel, model: ServingModel
) -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        vector = rng.normal(size=model.dim).astype(np.float32)
        seen = rng.choice(len(model.item_ids), 5, replace=False).tolist()
        exact = model.top_k(vector, 10, exclude=seen)
        found = indexed.top_k(vector, 10, exclude=seen)
        # The same scores, each an item's exact one (an untrained model has tied items,
        # which either path may list in another order).
        np.testing.assert_allclose([s for _, s in found], [s for _, s in exact], rtol=1e-5)
        scores = model.scores(vector)
        for item, score in found:
            assert model.item_index[item] not in seen
            assert scores[model.item_index[item]] == pytest.approx(score, rel=1e-5)


def test_retired_items_never_come_back_and_registered_ones_join(model_dir) -> None:  # type: ignore[no-untyped-def]
    indexed = ServingModel(artifact.load(model_dir), Retrieval(index_from=10, probes=1000))
    catalogue = LiveCatalogue()
    catalogue.apply(ItemEntry("launch", {"genre": ("Drama",)}, ts=1), record_ts=0)
    vector = np.random.default_rng(3).normal(size=indexed.dim).astype(np.float32)
    best = indexed.top_k(vector, 5)[0][0]
    catalogue.apply(ItemEntry(best, available=False), record_ts=0)
    catalogue.publish(indexed)
    size = len(indexed.item_ids)
    assert indexed.live.first == size and indexed.live.vectors.shape == (1, indexed.dim)
    everything = dict(indexed.top_k(vector, len(indexed.item_ids) + 1))
    assert best not in everything and "launch" in everything
    assert [i for i, _ in indexed.top_k(vector, 3, candidates=[size])] == ["launch"]
