"""Synthetic interaction data with planted structure, written in the csv layout.

Real data cannot say whether a method finds what it should; here the truth is known. Users
belong to latent taste clusters that their occupation and age predict (not perfectly), items'
genres and release years follow their latent factors, popularity is Zipf-like, and ratings rise
with affinity. So personalisation, user side features and item features each carry signal a
test can measure, and popularity alone is a real but beatable baseline.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

N_CLUSTERS = 6  # latent taste clusters
DIM = 8  # latent factor dimension
GENRES = ["Action", "Adventure", "Comedy", "Crime", "Drama", "Fantasy"]
GENRES += ["Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "War"]  # two per cluster
AGES = ["1", "18", "25", "35", "45", "50", "56"]  # MovieLens 1M age buckets
FIDELITY = 0.8  # probability that a user's occupation (and, separately, age) follows the cluster
MIN_EVENTS, MAX_EVENTS = 20, 80  # interactions per user, uniform, capped at n_items
DENSE_CELLS = 50_000_000  # users x items up to which every draw scores the whole catalogue
CANDIDATES = 512  # past it: candidates per user, half their cluster's, half the catalogue's
POOL = 1_000_000  # popularity draws per pool the candidates are picked from
CHUNK_USERS = 4096  # users drawn at a time past DENSE_CELLS


def _write_csv(path: Path, header: str, rows: Iterable[str]) -> None:
    """Row by row: a million-item catalogue's lines are never all in memory at once."""
    with path.open("w", encoding="utf-8") as out:
        out.write(header + "\n")
        out.writelines(row + "\n" for row in rows)


def _sample(rng: np.random.Generator, logits: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each user's interactions: (user, item, time) flat arrays, distinct items per user.

    Drawing without replacement with probability ∝ exp(logit) is the top-k of logit + Gumbel
    noise; the chosen items then get a random time order, not a preference order.
    """
    n_users, n_items = logits.shape
    counts = np.minimum(rng.integers(MIN_EVENTS, MAX_EVENTS + 1, size=n_users), n_items)
    width = int(counts.max())
    chosen = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)[:, :width]
    return _timed(rng, chosen, counts)


def _timed(
    rng: np.random.Generator, chosen: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, ...]:
    """(user, item, time) of each user's first counts[u] chosen items, in a random order."""
    valid = np.arange(chosen.shape[1]) < counts[:, None]  # (n_users, width)
    time_order = np.argsort(np.where(valid, rng.random(chosen.shape), 2.0), axis=1)
    chosen = np.take_along_axis(chosen, time_order, axis=1)
    gaps = rng.exponential(86_400.0, size=chosen.shape).astype(np.int64) + 1
    times = 900_000_000 + rng.integers(0, 30_000_000, size=(len(chosen), 1)) + gaps.cumsum(axis=1)
    user, slot = np.nonzero(valid)
    return user, chosen[user, slot], times[user, slot]


def _write_users(path: Path, rng: np.random.Generator, cluster: np.ndarray) -> None:
    """Occupation and age follow the cluster with probability FIDELITY; gender leans by it."""
    n = len(cluster)
    follows = rng.random((2, n)) < FIDELITY
    own_occupation = 3 * cluster + rng.integers(3, size=n)  # three per cluster
    occupation = np.where(follows[0], own_occupation, rng.integers(3 * N_CLUSTERS, size=n))
    age = np.where(follows[1], cluster % len(AGES), rng.integers(len(AGES), size=n))
    gender = np.where(rng.random(n) < 0.2 + 0.6 * cluster / (N_CLUSTERS - 1), "F", "M")
    rows = (f"u{u},{AGES[age[u]]},{gender[u]},occ{occupation[u]:02d}" for u in range(n))
    _write_csv(path, "user_id,age,gender,occupation", rows)


def _write_items(path: Path, rng: np.random.Generator, cluster: np.ndarray) -> None:
    """Each cluster has two signature genres and its own era; other genres are rare."""
    n = len(cluster)
    signature = np.arange(len(GENRES)) // 2 == cluster[:, None]  # (n, G)
    has_genre = rng.random((n, len(GENRES))) < np.where(signature, 0.7, 0.05)
    year = 1960 + 8 * cluster + rng.integers(0, 20, size=n)
    names = np.array(GENRES)
    rows = (f"i{i},{'|'.join(names[has_genre[i]])},{year[i]}" for i in range(n))
    _write_csv(path, "item_id,genres,year", rows)


def _sample_candidates(
    rng: np.random.Generator,
    user_vec: np.ndarray,
    item_vec: np.ndarray,
    item_cluster: np.ndarray,
    user_cluster: np.ndarray,
    popularity: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """_sample for catalogues too large to score whole: each user's items are drawn from
    CANDIDATES candidates, half from their cluster's items and half from the catalogue,
    each by popularity (from pools drawn once), by Gumbel top-k on affinity; so memory
    holds the interactions and a users chunk's candidates, never users x items."""
    weight = np.exp(popularity)
    pools = [_pool(rng, np.flatnonzero(item_cluster == c), weight) for c in range(N_CLUSTERS)]
    everywhere = _pool(rng, np.arange(len(item_vec)), weight)
    parts = []
    for start in range(0, len(user_vec), CHUNK_USERS):
        users = np.arange(start, min(start + CHUNK_USERS, len(user_vec)))
        half = CANDIDATES // 2
        own = np.stack(
            [pools[c][rng.integers(len(pools[c]), size=half)] for c in user_cluster[users]]
        )
        wide = everywhere[rng.integers(len(everywhere), size=(len(users), half))]
        candidates = np.sort(np.concatenate([own, wide], axis=1), axis=1)
        repeat = np.zeros(candidates.shape, dtype=bool)
        repeat[:, 1:] = candidates[:, 1:] == candidates[:, :-1]
        logits = np.einsum("ud,ucd->uc", user_vec[users], item_vec[candidates])
        logits[repeat] = -np.inf  # each item at most once per user
        distinct = (~repeat).sum(axis=1)
        counts = np.minimum(rng.integers(MIN_EVENTS, MAX_EVENTS + 1, size=len(users)), distinct)
        order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)[:, : counts.max()]
        user, item, time = _timed(rng, np.take_along_axis(candidates, order, axis=1), counts)
        parts.append((users[user], item, time))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _pool(rng: np.random.Generator, items: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """POOL draws of `items` with probability by `weight`: drawing from it uniformly then
    costs nothing per user."""
    if not len(items):
        return np.arange(len(weight))[:1]
    return rng.choice(items, size=POOL, p=weight[items] / weight[items].sum())


def write_synthetic(out: Path, n_users: int, n_items: int, seed: int) -> None:
    """Write interactions.csv, users.csv and items.csv to `out`, the same for the same seed.

    Up to DENSE_CELLS users x items, every user's draw scores the whole catalogue
    (users x items float64 matrices); past it, a sample of candidates per user
    (_sample_candidates), so a million-item catalogue fits in memory.
    """
    rng = np.random.default_rng(seed)
    centres = 1.5 * rng.normal(size=(N_CLUSTERS, DIM))
    user_cluster = rng.integers(N_CLUSTERS, size=n_users)
    item_cluster = rng.integers(N_CLUSTERS, size=n_items)
    user_vec = centres[user_cluster] + 0.5 * rng.normal(size=(n_users, DIM))
    item_vec = (centres[item_cluster] + 0.5 * rng.normal(size=(n_items, DIM))) / np.sqrt(DIM)
    if n_users * n_items <= DENSE_CELLS:
        affinity = user_vec @ item_vec.T  # (n_users, n_items)
        popularity = -np.log1p(rng.permutation(n_items))  # Zipf-like: log(1 / rank)
        user, item, time = _sample(rng, affinity + popularity)
        score = affinity[user, item]
    else:
        popularity = -np.log1p(rng.permutation(n_items))
        sampled = _sample_candidates(
            rng, user_vec, item_vec, item_cluster, user_cluster, popularity
        )
        user, item, time = sampled
        score = np.einsum("nd,nd->n", user_vec[user], item_vec[item])
    score = (score - score.mean()) / max(score.std(), 1e-9)  # one interaction has no spread
    rating = np.clip(np.rint(3.0 + 1.2 * score + 0.5 * rng.normal(size=score.shape)), 1, 5)

    out.mkdir(parents=True, exist_ok=True)
    order = np.argsort(time, kind="stable")  # one log in time order, users interleaved
    rows = (f"u{user[k]},i{item[k]},{rating[k]:.0f},{time[k]}" for k in order)
    _write_csv(out / "interactions.csv", "user_id,item_id,rating,timestamp", rows)
    _write_users(out / "users.csv", rng, user_cluster)
    _write_items(out / "items.csv", rng, item_cluster)
