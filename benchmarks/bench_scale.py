"""Serving a million items against ten thousand, in one run: the top-k's cost, the index's
recall, and what loading the model costs.

For each catalogue size, an item table as a trained one looks (d = 64; SIZES' vectors
around 256 cluster centres, the genres; a log-popularity bias over a power-law rank) in
a `ServingModel` with the service's default retrieval settings (`Retrieval`): below
100,000 items every top-k scores the whole catalogue; from there it goes through the
index (service/retrieval.py). Measured in this process, one thread:
- load_s: building the ServingModel from the in-memory model (the index built here);
- top_k_cpu_ms: CPU per top-10 with 50 seen items excluded (the part of a Recommend
  that depends on the catalogue), median of ROUNDS rounds;
- recommend_cpu_ms: CPU per whole Recommend in this process (`service.recommend`:
  the user's record read from a local redis-server, its 50-event history decoded,
  the top-10), USERS stored users (current vectors, random histories), median of
  ROUNDS rounds;
- recall@20 of the index's top-20 against exact scoring, over QUERIES user-like
  vectors (mixtures of cluster centres), at each probe count of --probes;
- adapt_users_per_s: users re-adapted per second (CPU), 256 at a time on 50-event
  histories, with the model's inner step: the whole catalogue scored below 100,000
  items, a fixed 4,096-item sample from there (`ModelConfig.sampled_from_items`);
- train_step_ms: one meta-training step (64 episodes of random 20-item histories:
  adapt, the query loss, its gradient, Adam's update), median wall time of ROUNDS;
- rss_mib of this process after each size's model.

    python benchmarks/bench_scale.py [--sizes 10000,1000000] [--probes 8,16,24,32,64]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import torch
from common import machine, random_histories, rss_mib

from service.localstack import LocalStack
from service.metrics import Metrics
from service.model import Retrieval, ServingModel
from service.recommend import Recommender, RecommendQuery
from service.retrieval import ItemIndex
from service.state import UserRecord
from service.store import UserStore
from trainer.artifact import Artifact
from trainer.model import ColdStartModel, ModelConfig
from trainer.split import Support
from trainer.train import Query, TrainConfig, query_loss

DIM = 64
CENTRES = 256
SEEN = 50
ADAPT_BATCH = 256  # users per batched adaptation


def item_table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, d) vectors, (n,) biases, and the cluster centres they are drawn around."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32) / np.sqrt(DIM) * 3
    vectors = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):  # in slices: bounded temporaries
        part = slice(start, min(n, start + 100_000))
        size = part.stop - part.start
        noise = rng.normal(size=(size, DIM)).astype(np.float32) / np.sqrt(DIM)
        vectors[part] = centres[rng.integers(0, CENTRES, size)] + noise
    bias = -np.log(rng.permutation(n).astype(np.float32) + 1.0)
    return vectors, bias, centres


def trained_model(vectors: np.ndarray, bias: np.ndarray) -> ColdStartModel:
    """A model with this item table (ratings off), its inner-step sample drawn."""
    model = ColdStartModel(ModelConfig(dim=DIM), len(vectors), None, [], False)
    with torch.no_grad():
        model.item_embedding.copy_(torch.from_numpy(vectors))
        model.item_bias.copy_(torch.from_numpy(bias))
    model.draw_sample(np.exp(bias), seed=0)  # a Zipf popularity: e^bias is 1 / rank
    return model


def train_step_ms(model: ColdStartModel, rounds: int) -> float:
    """Median wall ms of one meta-training step (TrainConfig's users_per_step episodes of
    random 20-item histories, 5 support events each, adapted, the query loss, its
    gradient and Adam's update), as meta_train runs it."""
    users, size = TrainConfig().users_per_step, len(model.item_bias)
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(rounds + 1):  # the first builds Adam's state: not timed
        items = torch.randint(0, size, (users, 20), generator=generator)
        support = Support(
            items[:, :5],
            torch.ones(users, 5),
            torch.zeros(users, 5),
            torch.zeros(users, 5),
            torch.zeros(users, 0, dtype=torch.long),
        )
        rows = torch.arange(users).repeat_interleave(15)
        query = Query(
            rows,
            items[:, 5:].reshape(-1),
            torch.full((users * 15,), 1 / 15),
            *support.events(),
            None,
            users,
        )
        clock = time.perf_counter()
        loss = query_loss(model, model.adapt(support), query)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append((time.perf_counter() - clock) * 1000)
    return statistics.median(times[1:])


def serving_model(vectors: np.ndarray, bias: np.ndarray) -> tuple[ServingModel, float]:
    model = trained_model(vectors, bias)
    manifest = {
        "model_version": f"scale-{len(vectors)}",
        "item_ids": [str(i) for i in range(len(vectors))],
        "text_encoder": {},
        "user_features": {},
        "user_feature_brackets": {},
        "item_feature_names": [],
    }
    clock = time.perf_counter()
    served = ServingModel(Artifact(model, manifest), Retrieval())
    return served, time.perf_counter() - clock


def queries(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    """User-like vectors: each a mixture of a few cluster centres (a few tastes)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    picks = rng.integers(0, len(centres), (n, 3))
    return np.einsum("nk,nkd->nd", weights, centres[picks]) * 2


def top_k_cpu(model: ServingModel, users: np.ndarray, rounds: int) -> float:
    """Median CPU ms per top-10 with SEEN items excluded."""
    rng = np.random.default_rng(0)
    seen = [rng.choice(len(model.item_ids), SEEN, replace=False).tolist() for _ in users]
    times = []
    for _ in range(rounds):
        clock = time.process_time()
        for vector, excluded in zip(users, seen, strict=True):
            model.top_k(vector, 10, exclude=excluded)
        times.append((time.process_time() - clock) / len(users) * 1000)
    return statistics.median(times)


def adapt_users_per_s(model: ServingModel, rounds: int) -> float:
    """Users re-adapted per second on 50-event histories, ADAPT_BATCH at a time, as the
    consumer's micro-batch does (median of `rounds`)."""
    rng = np.random.default_rng(3)
    size = len(model.item_ids)
    histories = [[(int(i), None) for i in rng.integers(0, size, SEEN)] for _ in range(ADAPT_BATCH)]
    times = []
    for _ in range(rounds):
        clock = time.process_time()
        model.adapt(histories)
        times.append(time.process_time() - clock)
    return ADAPT_BATCH / statistics.median(times)


def recommend_cpu(model: ServingModel, users: np.ndarray, redis_url: str, rounds: int) -> float:
    """Median CPU ms per Recommend of stored users whose vectors are `users`."""
    store = UserStore.from_url(redis_url)
    store.client.flushdb()
    histories = random_histories(model.item_ids, len(users), SEEN, seed=2)
    ids = [f"scale-{n}" for n in range(len(users))]
    store.put_many(
        UserRecord(i, u.astype(np.float32), h, model.version, 1)
        for i, u, h in zip(ids, users, histories, strict=True)
    )
    recommender = Recommender(model, store, Metrics())
    times = []
    for _ in range(rounds):
        clock = time.process_time()
        for user in ids:
            recommender.recommend(RecommendQuery(user, 10))
        times.append((time.process_time() - clock) / len(ids) * 1000)
    store.close()
    return statistics.median(times)


def recall(model: ServingModel, users: np.ndarray, probes: list[int]) -> dict[str, float]:
    """Recall@20 of the index against exact scoring, by probe count."""
    assert model.index is not None
    exact = [set(np.argsort(-(model.scores(u)))[:20].tolist()) for u in users]
    out = {}
    for probe in probes:
        model.index.index.nprobe = probe
        found = [set(model.index.search(u, 20).tolist()) for u in users]
        hits = [len(e & f) / 20 for e, f in zip(exact, found, strict=True)]
        out[str(probe)] = round(float(np.mean(hits)), 4)
    model.index.index.nprobe = model.index.probes
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with LocalStack(kafka=False, redis=True) as stack:
        assert stack.redis_url is not None
        for size in args.sizes:
            results[str(size)] = measure(size, stack.redis_url, args)
    small, large = (results[str(s)] for s in (min(args.sizes), max(args.sizes)))
    return {
        "sizes": results,
        "top_k_cpu_ratio": round(large["top_k_cpu_ms"] / small["top_k_cpu_ms"], 3),
        "recommend_cpu_ratio": round(large["recommend_cpu_ms"] / small["recommend_cpu_ms"], 3),
        "adapt_rate_ratio": round(large["adapt_users_per_s"] / small["adapt_users_per_s"], 3),
        "train_step_ratio": round(large["train_step_ms"] / small["train_step_ms"], 3),
        "queries": args.queries,
        "rounds": args.rounds,
        "dim": DIM,
        **machine(),
    }


def measure(size: int, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Everything measured at one catalogue size."""
    vectors, bias, centres = item_table(size, seed=0)
    step_ms = train_step_ms(trained_model(vectors, bias), args.rounds)
    model, load_s = serving_model(vectors, bias)
    del vectors, bias  # the model holds its own copy
    users = queries(centres, args.queries, seed=1)
    entry: dict[str, Any] = {
        "indexed": model.index is not None,
        "load_s": round(load_s, 2),
        "top_k_cpu_ms": round(top_k_cpu(model, users, args.rounds), 4),
        "recommend_cpu_ms": round(recommend_cpu(model, users, redis_url, args.rounds), 4),
        "inner_step_sample": model.inner_sample,
        "adapt_users_per_s": round(adapt_users_per_s(model, args.rounds), 1),
        "train_step_ms": round(step_ms, 1),
        "rss_mib": rss_mib(os.getpid()),
    }
    if isinstance(model.index, ItemIndex):
        entry["index_lists"] = model.index.lists
        entry["probes"] = model.index.probes
        entry["recall@20_by_probes"] = recall(model, users, args.probes)
    return entry


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_ints, default=[10_000, 1_000_000])
    parser.add_argument("--probes", type=_ints, default=[8, 16, 24, 32, 64])
    parser.add_argument("--queries", type=int, default=200, help="user-like query vectors")
    parser.add_argument("--rounds", type=int, default=5, help="top-k CPU rounds (median)")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
