"""Offline evaluation: every method on identical users and support/query splits.

`coldstart` protocol (DESIGN.md): each seed is a different user split; test
users with at least max(k) + 5 interactions; the first k in protocol order are
the support set, everything after is the query; ranking over the whole
catalogue minus the support items. `melu` protocol (Lee et al., KDD 2019):
users with 13 to 100 ratings, 10 random query items, the rest as support,
with MAE, RMSE and NDCG@3 over the query items so numbers sit beside the
literature's. Per-seed numbers are means over test users; reported numbers
are means over seeds, with the standard deviation over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer import adapt, item_protocol
from trainer.artifact import Artifact
from trainer.baselines.item_knn import ItemKNN
from trainer.baselines.melu import MeLU
from trainer.baselines.mf import MatrixFactorisation
from trainer.baselines.popularity import Popularity
from trainer.data import Dataset
from trainer.episodes import Context, batches, make_context, rank_metrics
from trainer.errors import DataError
from trainer.features import FeatureReader
from trainer.item_methods import item_methods
from trainer.metrics import graded_ndcg, mae_rmse
from trainer.model import ModelConfig
from trainer.split import eligible_test_users, min_length
from trainer.train import TrainConfig, meta_train

log = logging.getLogger(__name__)

PROTOCOLS = ("coldstart", "melu", "item-coldstart")
MELU_QUERY = 10  # query items per user in the MeLU protocol
MELU_LENGTHS = (13, 100)  # users with this many ratings, inclusive
MELU_KEY = "rest"  # the support-size key of the MeLU protocol: all but the query items


@dataclass(frozen=True)
class EvalOptions:
    support_sizes: list[int]  # k values of the coldstart protocol
    seeds: list[int]  # one user split (and one trained model) per seed
    protocol: str  # one of PROTOCOLS
    device: torch.device
    model_config: ModelConfig  # an artifact's own, or for the per-seed training
    train_config: TrainConfig  # for the per-seed training when no artifact is given
    progress: bool = True  # progress bars for the fits that take minutes


class ColdStart:
    """Our model as an evaluated method: meta-trained per seed unless an artifact is given."""

    name = "coldstart"

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        artifact: Artifact | None,
        progress: bool = False,  # a bar over the meta-training steps
    ) -> None:
        self.model_config, self.train_config = model_config, train_config
        self.model = artifact.model if artifact else None
        self.progress = progress

    def fit(self, ctx: Context) -> None:
        if self.model is None:
            self.model, _ = meta_train(ctx, self.model_config, self.train_config, self.progress)
        self.model = self.model.to(ctx.device)

    def scores(self, support) -> torch.Tensor:
        return adapt.scores(self.model.adapt(support), self.model.item_tables())

    def ratings(self, support) -> torch.Tensor | None:
        if not self.model.has_ratings:
            return None
        return adapt.ratings(self.model.adapt(support), self.model.item_tables())


class ColdStartAsServed:
    """The model as the service adapts a user: each test user's profile as the data files
    hold it (the raw strings a client sends) read by `trainer.features.FeatureReader`, the
    reading the service applies to UpsertUser, Recommend and events. Equal to `coldstart`
    unless serving reads a value otherwise than training did."""

    name = "coldstart_as_served"

    def __init__(self, fitted: ColdStart) -> None:
        self.fitted = fitted  # fitted first, in the method list
        self.features: np.ndarray | None = None  # (n_users, F) codes of the raw profiles

    def fit(self, ctx: Context) -> None:
        data = ctx.data
        reader = FeatureReader(data.user_vocab, data.user_brackets)
        codes = [reader.codes(data.profile(user)) for user in range(data.n_users)]
        self.features = np.array(codes, dtype=np.int64).reshape(data.n_users, len(reader.names))

    def context(self, ctx: Context) -> Context:
        """The evaluation context with the served codes in place of the loader's."""
        return dataclasses.replace(ctx, features=self.features)

    def scores(self, support) -> torch.Tensor:
        return self.fitted.scores(support)

    def ratings(self, support) -> torch.Tensor | None:
        return self.fitted.ratings(support)


class ColdStartNoProfile:
    """The model for a user the service holds no profile for: adapted from the prior
    without side features. Shows what a profile adds, and what a user without one gets."""

    name = "coldstart_no_profile"

    def __init__(self, fitted: ColdStart) -> None:
        self.fitted = fitted  # fitted first, in the method list

    def fit(self, ctx: Context) -> None:
        pass

    def scores(self, support) -> torch.Tensor:
        return self.fitted.scores(support.without_features())

    def ratings(self, support) -> torch.Tensor | None:
        return self.fitted.ratings(support.without_features())


def _rating_metrics(method, ctx: Context, users: np.ndarray, ks: np.ndarray) -> dict:
    """Per-user MAE, RMSE and graded NDCG@3 over the query items (NaN without ratings)."""
    maes, rmses, ndcg3 = [], [], []
    for chunk, chunk_ks, support in batches(ctx, users, ks):
        with torch.no_grad():
            predicted = method.ratings(support)
            ranking = method.scores(support) if predicted is None else predicted
        # One copy per chunk: a per-user read of a GPU tensor would wait on the device each time.
        ranking = ranking.cpu().numpy()
        for row, (user, k) in enumerate(zip(chunk, chunk_ks, strict=True)):
            span = slice(ctx.seqs.offsets[user] + k, ctx.seqs.offsets[user + 1])
            items, truth = ctx.seqs.items[span], ctx.seqs.ratings[span]
            ranked = ranking[row, items]
            ndcg3.append(graded_ndcg(ranked, truth, 3))
            mae, rmse = np.nan, np.nan
            if predicted is not None:  # then the ranking is by the predicted ratings
                mae, rmse = mae_rmse(ranked, truth)
            maes.append(mae)
            rmses.append(rmse)
    return {"mae": np.array(maes), "rmse": np.array(rmses), "ndcg@3": np.array(ndcg3)}


def _episode_metrics(method, ctx: Context, users: np.ndarray, ks: np.ndarray) -> dict:
    recall, ndcg = rank_metrics(method.scores, ctx, users, ks)
    numbers = {"recall@20": recall.mean(), "ndcg@20": ndcg.mean()}
    if ctx.seqs.ratings is not None:
        rating = _rating_metrics(method, ctx, users, ks)
        numbers |= {name: _mean_of_defined(v) for name, v in rating.items()}
    return {name: None if v is None else float(v) for name, v in numbers.items()}


def _mean_of_defined(values: np.ndarray) -> float | None:
    """Mean over the users a metric is defined for; None (JSON null) when it is defined for
    none, as for a method that predicts no ratings."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else None


def _melu_users(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    test = ctx.split.test
    lengths = ctx.seqs.lengths[test]
    users = test[(lengths >= MELU_LENGTHS[0]) & (lengths <= MELU_LENGTHS[1])]
    return users, ctx.seqs.lengths[users] - MELU_QUERY


def evaluate_seed(data: Dataset, seed: int, methods: list, options: EvalOptions) -> dict:
    """{method: {K: metrics}} on one seed's split, and the number of test users."""
    if options.protocol == "melu":  # random order, as the MeLU paper's split
        data = dataclasses.replace(data, timestamps=None)
    ctx = make_context(data, seed, options.support_sizes, options.device)
    if options.protocol == "melu":
        users, ks = _melu_users(ctx)
        episodes = {MELU_KEY: ks}
        needed = f"{MELU_LENGTHS[0]} to {MELU_LENGTHS[1]}"
    else:
        users = eligible_test_users(ctx.seqs, ctx.split, max(options.support_sizes))
        episodes = {str(k): np.full(len(users), k) for k in options.support_sizes}
        needed = f"at least {min_length(max(options.support_sizes))}"
    if not len(users):
        raise DataError(f"{data.name}, seed {seed}: no test user has {needed} interactions")
    results = {}
    for method in methods:
        log.info("seed %d: fitting %s", seed, method.name)
        started = time.perf_counter()
        method.fit(ctx)
        fitted = time.perf_counter()
        scored = method.context(ctx) if hasattr(method, "context") else ctx
        results[method.name] = {
            key: _episode_metrics(method, scored, users, ks) for key, ks in episodes.items()
        }
        log.info(
            "seed %d: %s fitted in %.1f s, scored %d test users in %.1f s",
            seed,
            method.name,
            fitted - started,
            len(users),
            time.perf_counter() - fitted,
        )
    return {"n_test_users": len(users), "methods": results}


def aggregate(per_seed: list[dict]) -> dict:
    """Mean over seeds of every metric, plus the spread of NDCG@20 over seeds."""
    combined = {}
    for name, by_k in per_seed[0]["methods"].items():
        combined[name] = {}
        for key, metrics in by_k.items():
            values = {m: [run["methods"][name][key][m] for run in per_seed] for m in metrics}
            row = {m: None if None in v else float(np.mean(v)) for m, v in values.items()}
            row["ndcg@20_std"] = float(np.std(values["ndcg@20"]))
            row.setdefault("mae", None)
            row.setdefault("rmse", None)
            combined[name][key] = row
    return combined


def all_methods(options: EvalOptions, artifact: Artifact | None) -> list:
    """Every method, fitted in this order; those that train for minutes show a bar."""
    progress = options.progress
    ours = ColdStart(options.model_config, options.train_config, artifact, progress)
    return [
        Popularity(),
        ItemKNN(),
        MatrixFactorisation(inner_steps=options.model_config.inner_steps, progress=progress),
        MeLU(progress=progress),
        ours,
        ColdStartAsServed(ours),
        ColdStartNoProfile(ours),
    ]


def run(data: Dataset, out: Path, options: EvalOptions, artifact: Artifact | None) -> dict:
    """Evaluates every method on every seed and writes results.json, results.md, ndcg.png."""
    if options.protocol == "item-coldstart":
        return item_protocol.run(
            data, out, options, lambda: item_methods(options.model_config, options.train_config)
        )
    per_seed = []
    for seed in options.seeds:
        methods = all_methods(options, artifact)
        per_seed.append(evaluate_seed(data, seed, methods, options))
    results = {
        "dataset": data.name,
        "protocol": _protocol_description(options, data),
        "n_test_users": per_seed[0]["n_test_users"],
        "seeds": list(options.seeds),
        "methods": aggregate(per_seed),
        "per_seed": per_seed,
        "model_config": dataclasses.asdict(options.model_config),
        "train_config": dataclasses.asdict(options.train_config),
    }
    if artifact is not None:  # the model's own training settings, not this command's flags
        results["train_config"] = artifact.manifest.get("train_config")
        results["model_version"] = artifact.version
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    # Imported here: the report module pulls in matplotlib, which training never needs.
    from trainer.report import write_markdown, write_plot

    write_markdown(results, out / "results.md")
    write_plot(results, out / "ndcg.png")
    return results


def _protocol_description(options: EvalOptions, data: Dataset) -> dict:
    if options.protocol == "melu":
        return {
            "name": "melu",
            "users": f"test users with {MELU_LENGTHS[0]} to {MELU_LENGTHS[1]} interactions",
            "order": "seeded shuffle",
            "query": f"{MELU_QUERY} items; support: the rest (key '{MELU_KEY}')",
        }
    return {
        "name": "coldstart",
        "support_sizes": list(options.support_sizes),
        "order": "time" if data.timestamps is not None else "seeded shuffle",
        "split": "70/10/20 by seeded hash of the user id",
        "ranking": "whole catalogue minus the support items",
        "recall@20": "query items in the top 20 / min(20, query items) (Liang et al., 2018)",
    }
