"""The item cold-start protocol: `coldstart evaluate --protocol item-coldstart`.

Items are split by a seeded hash of the item id: 70% warm, 10% validation cold, 20%
test cold. The validation items are the warm side's held-out eighth: no method trains
on them, and they are what methods tune their item side on. Cold items and every
interaction with them are removed from training (the models, every baseline, the SVD
start, popularity counts).

Each cold item's interactions are ordered by time (a seeded shuffle without time); its
first n are its support, revealed to every method, the rest its query. Test items with
at least max(n) + 5 interactions are evaluated, the same items at every n. Each user
with a query interaction on one ranks those items (less the ones whose support holds
the user): Recall@20 and NDCG@20. A mixed ranking over the warm items and those cold
items (less the user's own history) gives NDCG@20 on the same relevant items and the
share of cold items in the top 20, so that new items are neither buried nor pushed.
A user's vector is the method's adaptation on the user's whole warm history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from trainer.data import Dataset
from trainer.episodes import Context, make_context
from trainer.errors import DataError
from trainer.items import ColdItems, cold_items, item_queries
from trainer.metrics import recall_ndcg, top_k
from trainer.split import unit_hash
from trainer.text import text_vectors

if TYPE_CHECKING:  # evaluate imports this module to dispatch the protocol to it
    from trainer.evaluate import EvalOptions

log = logging.getLogger(__name__)

ITEM_SHARES = (0.7, 0.1, 0.2)  # warm / validation cold / test cold
QUERY_MIN = 5  # interactions an evaluated item has beyond the largest support size
CUTOFF = 20
CHUNK = 512  # users scored at once
# The user-side support sizes the methods tune on (their validation users, warm items).
USER_SIZES = [0, 1, 3, 5, 10, 20]


@dataclass(frozen=True)
class ItemSplit:
    warm: np.ndarray  # item indices of the full data set
    valid: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Setting:
    """One seed's split, and everything a method may learn from."""

    data: Dataset  # the full data set (cold items included)
    ctx: Context  # the warm data: interactions on warm items, those items re-indexed
    split: ItemSplit
    valid: ColdItems  # validation items, users as indices of data's users
    test: ColdItems  # the evaluated test items
    test_items: np.ndarray  # their indices in data
    support_sizes: list[int]


class ItemMethod(Protocol):
    """What the protocol asks of a method (trainer.item_methods)."""

    name: str

    def handles(self, n: int) -> bool:
        """Whether the method applies after n interactions (some need a support)."""

    def fit(self, setting: Setting) -> None: ...

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        """(U, N) the users' scores of the evaluated cold items after n interactions."""

    def warm_scores(self, users: np.ndarray) -> torch.Tensor:
        """(U, I_warm) the users' scores of the warm items, for the mixed ranking."""


def split_items(data: Dataset, seed: int) -> ItemSplit:
    position = np.array([unit_hash(seed, f"item:{raw}") for raw in data.item_ids])
    warm_end, valid_end = ITEM_SHARES[0], ITEM_SHARES[0] + ITEM_SHARES[1]
    return ItemSplit(
        warm=np.flatnonzero(position < warm_end),
        valid=np.flatnonzero((position >= warm_end) & (position < valid_end)),
        test=np.flatnonzero(position >= valid_end),
    )


def warm_only(data: Dataset, warm: np.ndarray) -> Dataset:
    """The data set without the cold items and their interactions, items re-indexed."""
    keep = np.isin(data.items, warm)
    index = np.full(data.n_items, -1, dtype=np.int64)
    index[warm] = np.arange(len(warm))
    return dataclasses.replace(
        data,
        item_ids=[data.item_ids[i] for i in warm],
        users=data.users[keep],
        items=index[data.items[keep]],
        ratings=None if data.ratings is None else data.ratings[keep],
        timestamps=None if data.timestamps is None else data.timestamps[keep],
        item_features=None if data.item_features is None else data.item_features[warm],
        item_text=[data.item_text[i] for i in warm],
        unseen_item_ids=[],
        unseen_item_features=None,
        unseen_item_text=[],
    )


def make_setting(
    data: Dataset,
    seed: int,
    support_sizes: list[int],
    text: torch.Tensor,
    user_sizes: list[int],
    device: torch.device,
) -> Setting:
    """`text` (I, T) holds every item's text vector; `user_sizes` are the user-side k values
    the methods tune on (their validation users' episodes, on warm items)."""
    split = split_items(data, seed)
    warm = warm_only(data, split.warm)
    warm_text = text[torch.from_numpy(split.warm)].numpy()
    ctx = make_context(warm, seed, user_sizes, device, warm_text)
    valid, _ = cold_items(data, split.valid, seed, text, min_users=2)
    test, test_items = cold_items(data, split.test, seed, text, max(support_sizes) + QUERY_MIN)
    if not len(test_items):
        raise DataError(
            f"{data.name}, seed {seed}: no test item has the {max(support_sizes) + QUERY_MIN} "
            "interactions the largest support size needs"
        )
    if not valid.users:
        raise DataError(f"{data.name}, seed {seed}: no validation item has 2 interactions")
    return Setting(data, ctx, split, valid, test, test_items, support_sizes)


def evaluate_methods(setting: Setting, methods: list[ItemMethod]) -> dict:
    """{method: {n: metrics}} for one seed."""
    results = {}
    histories = _warm_histories(setting)
    queries = {n: _queries(setting.test, n) for n in setting.support_sizes}  # for every method
    for method in methods:
        log.info("fitting %s", method.name)
        started = time.perf_counter()
        method.fit(setting)
        results[method.name] = {
            str(n): _metrics_at(method, setting, n, histories, queries[n])
            if method.handles(n)
            else None
            for n in setting.support_sizes
        }
        log.info("%s fitted and scored in %.1f s", method.name, time.perf_counter() - started)
    return results


def _warm_histories(setting: Setting) -> list[np.ndarray]:
    seqs = setting.ctx.seqs
    return [seqs.of(u) for u in range(setting.data.n_users)]


Queries = tuple[np.ndarray, list[np.ndarray], torch.Tensor]  # users, relevant, hidden


def _queries(test: ColdItems, n: int) -> Queries:
    """The users with a query interaction on a test item after its first n, their relevant
    items, and the items whose support holds them."""
    users = np.unique(np.concatenate(test.users))
    relevant, hidden = item_queries(test, n, len(users), users)
    rows = np.flatnonzero([len(r) > 0 for r in relevant])
    return users[rows], [relevant[r] for r in rows], hidden[rows]


def _metrics_at(
    method: ItemMethod,
    setting: Setting,
    n: int,
    histories: list[np.ndarray],
    queries: Queries,
) -> dict:
    users, relevant, hidden = queries
    n_warm = len(setting.split.warm)
    recall, ndcg, mixed, share = [], [], [], []
    for start in range(0, len(users), CHUNK):
        part = slice(start, start + CHUNK)
        chunk = users[part]
        with torch.no_grad():
            # Copies: the masks below write into them, and a score may be a method's own table.
            cold = method.cold_scores(chunk, n).float().cpu().clone()
            warm = method.warm_scores(chunk).float().cpu().clone()
        cold[hidden[part]] = -torch.inf
        r, g = recall_ndcg(top_k(cold, CUTOFF), relevant[part], CUTOFF)
        recall.append(r)
        ndcg.append(g)
        for row, user in enumerate(chunk):
            warm[row, torch.from_numpy(histories[user])] = -torch.inf
        both = top_k(torch.cat([warm, cold], dim=1), CUTOFF)
        offset = [r + n_warm for r in relevant[part]]
        mixed.append(recall_ndcg(both, offset, CUTOFF)[1])
        share.append((both >= n_warm).mean(axis=1))
    return {
        "recall@20": float(np.concatenate(recall).mean()),
        "ndcg@20": float(np.concatenate(ndcg).mean()),
        "mixed_ndcg@20": float(np.concatenate(mixed).mean()),
        "mixed_cold_share@20": float(np.concatenate(share).mean()),
        "n_users": len(users),
    }


def aggregate(per_seed: list[dict]) -> dict:
    """Mean over seeds of every metric, and the spread of NDCG@20; None where a method does
    not apply (n = 0 for the methods that need a support)."""
    combined = {}
    for name, by_n in per_seed[0]["methods"].items():
        combined[name] = {}
        for key, metrics in by_n.items():
            if metrics is None:
                combined[name][key] = None
                continue
            runs = [run["methods"][name][key] for run in per_seed]
            row = {m: float(np.mean([r[m] for r in runs])) for m in metrics if m != "n_users"}
            row["ndcg@20_std"] = float(np.std([r["ndcg@20"] for r in runs]))
            combined[name][key] = row
    return combined


def description(support_sizes: list[int], data: Dataset) -> dict:
    return {
        "name": "item-coldstart",
        "support_sizes": list(support_sizes),
        "order": "time" if data.timestamps is not None else "seeded shuffle",
        "split": "seeded hash of the item id: 70% warm, 10% validation cold, 20% test cold",
        "items": f"test items with at least max(n) + {QUERY_MIN} interactions, the same at every n",
        "ranking": "the evaluated cold items less those whose support holds the user",
        "mixed": "warm items and the evaluated cold items, less the user's warm history",
    }


def run(
    data: Dataset, out: Path, options: EvalOptions, methods_for: Callable[[], list[ItemMethod]]
) -> dict:
    """Every method on every seed; writes results.json, results.md and ndcg.png.
    methods_for() gives fresh methods for a seed."""
    vectors, encoder = text_vectors(data.item_text, options.model_config.use_item_text)
    text = torch.from_numpy(vectors)
    per_seed = []
    for seed in options.seeds:
        setting = make_setting(data, seed, options.support_sizes, text, USER_SIZES, options.device)
        methods = methods_for()
        scored = evaluate_methods(setting, methods)
        per_seed.append(
            {
                "n_test_items": len(setting.test_items),
                "n_valid_items": len(setting.valid.users),
                "methods": scored,
                # What the fits chose on validation items (coldstart's item step).
                "calibration": {
                    m.name: m.calibration for m in methods if hasattr(m, "calibration")
                },
            }
        )
    results = {
        "dataset": data.name,
        "protocol": description(options.support_sizes, data),
        "text_encoder": None if encoder is None else encoder.describe(),
        "n_test_items": per_seed[0]["n_test_items"],
        "seeds": list(options.seeds),
        "methods": aggregate(per_seed),
        "per_seed": per_seed,
        "model_config": dataclasses.asdict(options.model_config),
        "train_config": dataclasses.asdict(options.train_config),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    from trainer.report import write_markdown, write_plot  # matplotlib, as evaluate.run

    write_markdown(results, out / "results.md")
    write_plot(results, out / "ndcg.png")
    return results
