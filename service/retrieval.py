"""Approximate top-k over a large trained catalogue: an index whose search costs the
few lists it probes, not the catalogue.

Why faiss, and an inverted-file index (IVF-flat): faiss is Meta's well-kept library
for exactly this; an IVF index trains its coarse clusters on a sample and adds a
million rows in seconds on two cores, where a graph index (HNSW) takes minutes to
build, and a model must load in seconds. The score u . v + b is an inner product, which
is not a distance: each row [v, b] gets one more coordinate, sqrt(M^2 - |[v, b]|^2)
with M the largest row norm, so every row has norm M, and the query [u, 1, 0] is then
nearest (in L2) to the row whose inner product with it is largest (Bachrach et al.,
RecSys 2014). The index returns candidates only: `ServingModel.top_k` re-scores them
exactly from the item table, so an answer's scores are always exact.

Only the trained rows are indexed: they are fixed per model version, so the index is
built once when the model loads. Registered items change with each warm-up event and
are few, so they are scored exactly beside the candidates; retired and seen items are
filtered exactly after the search, which fetches that many more.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

SAMPLE_PER_LIST = 40  # training rows per coarse cluster: faiss's own advice is 30 to 256
TRAIN_ITERATIONS = 10
SEED = 1234  # clusters, and so the candidates, are the same on every replica


class ItemIndex:
    """Inner-product candidates over a fixed item table."""

    def __init__(self, vectors: np.ndarray, bias: np.ndarray, lists: int, probes: int) -> None:
        faiss.omp_set_num_threads(1)  # one thread per replica, as torch (service.app)
        rows = np.concatenate([vectors, bias[:, None]], axis=1).astype(np.float32)
        norms = np.einsum("ij,ij->i", rows, rows)
        rows = np.concatenate([rows, np.sqrt(norms.max() - norms)[:, None]], axis=1)
        self.size, self.width = rows.shape
        quantizer = faiss.IndexFlatL2(self.width)
        self.index = faiss.IndexIVFFlat(quantizer, self.width, lists, faiss.METRIC_L2)
        self.index.cp.niter = TRAIN_ITERATIONS
        self.index.cp.seed = SEED
        rng = np.random.default_rng(SEED)
        sample = rng.choice(self.size, min(self.size, lists * SAMPLE_PER_LIST), replace=False)
        self.index.train(rows[np.sort(sample)])
        self.index.add(rows)
        self.index.nprobe = probes
        self.lists, self.probes = lists, probes

    @classmethod
    def for_size(cls, vectors: np.ndarray, bias: np.ndarray, probes: int) -> ItemIndex:
        """An index with about 2 sqrt(I) lists: a million items in 2,000 lists of 500."""
        lists = min(len(vectors), max(1, int(2 * math.sqrt(len(vectors)))))
        return cls(vectors, bias, lists, probes)

    def search(self, vector: np.ndarray, n: int) -> np.ndarray:
        """The indices of (about) the n items of largest u . v + b, best first."""
        query = np.zeros((1, self.width), np.float32)
        query[0, : len(vector)] = vector
        query[0, len(vector)] = 1.0
        _, found = self.index.search(query, min(n, self.size))
        found = found[0]
        return found[found >= 0]
