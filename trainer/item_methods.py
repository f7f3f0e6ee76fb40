"""The methods the item cold-start protocol compares (trainer.item_protocol).

Each fits on a Setting (the warm data and the validation items) and scores users
against the evaluated cold items after n of their interactions, and against the warm
items for the mixed ranking. Baselines: random; feature_popularity (the popularity of
warm items sharing the item's features); content_knn (feature and text similarity to
the user's history); content_map (a ridge regression from features and text to the
warm items' MF rows, the DropoutNet-style baseline); and with a support, cold_popularity
(interaction counts among cold items) and mf_foldin (the mean MF item row plus the same
item step on its support users). Whatever a method tunes, it tunes on validation items.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from trainer import adapt
from trainer.adapt import InnerRule
from trainer.baselines.mf import MatrixFactorisation
from trainer.baselines.popularity import item_counts
from trainer.episodes import Context, batches
from trainer.item_protocol import Setting
from trainer.items import (
    LATTICE_REACH,
    ColdItems,
    ColdNdcg,
    calibrate_item_step,
    cold_rows,
    item_step,
    row_scores,
    set_reference_users,
    train_item_start,
    user_rows,
)
from trainer.lattice import climb
from trainer.model import ModelConfig
from trainer.train import TrainConfig, meta_train

RIDGE = (0.1, 1.0, 10.0, 100.0)  # content_map's choices of ridge strength


def _content(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Unit rows of [features / sqrt(count), text]: genres and text weigh alike."""
    hot = features / features.sum(1, keepdim=True).clamp(min=1).sqrt()
    both = torch.cat([hot, text], dim=1)
    return both / both.norm(dim=1, keepdim=True).clamp(min=1e-9)


def _warm_content(setting: Setting) -> torch.Tensor:
    data = setting.ctx.data
    width = 0 if data.item_features is None else data.item_features.shape[1]
    features = torch.zeros(data.n_items, width)
    if width:
        features = torch.from_numpy(data.item_features)
    return _content(features, setting.ctx.item_text.cpu())


class Random:
    name = "random"

    def handles(self, n: int) -> bool:
        return True

    def fit(self, setting: Setting) -> None:
        self.n_warm, self.n_cold = setting.ctx.data.n_items, len(setting.test.users)
        self.generator = torch.Generator().manual_seed(setting.ctx.seed)

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        return torch.rand(len(users), self.n_cold, generator=self.generator)

    def warm_scores(self, users: np.ndarray) -> torch.Tensor:
        return torch.rand(len(users), self.n_warm, generator=self.generator)


class FeaturePopularity:
    """A cold item scores the mean training count of the warm items sharing each of its
    features, averaged over its features; warm items score their own counts."""

    name = "feature_popularity"

    def handles(self, n: int) -> bool:
        return True

    def fit(self, setting: Setting) -> None:
        counts = torch.from_numpy(item_counts(setting.ctx))
        data = setting.ctx.data
        self.counts = counts
        self.cold = torch.full((len(setting.test.users),), float(counts.mean()))
        if data.item_features is None or not data.item_features.shape[1]:
            return
        hot = torch.from_numpy(data.item_features)  # (I, F)
        per_feature = (hot.T @ counts) / hot.sum(0).clamp(min=1)  # (F,)
        cold = setting.test.features
        has = cold.sum(1) > 0
        mean = (cold @ per_feature) / cold.sum(1).clamp(min=1)
        self.cold = torch.where(has, mean, self.cold)

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        return self.cold.expand(len(users), -1)

    def warm_scores(self, users: np.ndarray) -> torch.Tensor:
        return self.counts.expand(len(users), -1)


class ColdPopularity(FeaturePopularity):
    """Counts of interactions among the cold items, from their supports. Under this protocol
    every evaluated item has exactly n support interactions, so the counts tie and the
    order is the tie-break: feature popularity."""

    name = "cold_popularity"

    def handles(self, n: int) -> bool:
        return n >= 1

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        seen = torch.tensor([min(n, len(u)) for u in self.test.users], dtype=torch.float32)
        tie_break = self.cold / (self.cold.max() + 1)  # in [0, 1): below one interaction
        return (seen + tie_break).expand(len(users), -1)

    def fit(self, setting: Setting) -> None:
        super().fit(setting)
        self.test = setting.test


class ContentKNN:
    """A user's score for an item: the summed content similarity of the user's history to it."""

    name = "content_knn"

    def handles(self, n: int) -> bool:
        return True

    def fit(self, setting: Setting) -> None:
        self.warm = _warm_content(setting)  # (I_warm, C)
        self.cold = _content(setting.test.features, setting.test.text)
        seqs = setting.ctx.seqs
        owner = torch.from_numpy(np.repeat(np.arange(len(seqs.lengths)), seqs.lengths))
        # (U, C) each user's summed history content, once: every n scores the same users.
        self.profiles = torch.zeros(len(seqs.lengths), self.warm.shape[1]).index_add_(
            0, owner, self.warm[torch.from_numpy(seqs.items)]
        )

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        return self.profiles[torch.from_numpy(users)] @ self.cold.T

    def warm_scores(self, users: np.ndarray) -> torch.Tensor:
        return self.profiles[torch.from_numpy(users)] @ self.warm.T


class MFRows:
    """A matrix factorisation of the warm data, fitted once per seed and shared by
    content_map and mf_foldin: its item rows [v, b], and every user's vector adapted
    on the whole warm history as mf_finetune adapts a user."""

    def __init__(self, inner_steps: int) -> None:
        self.mf = MatrixFactorisation(inner_steps=inner_steps)
        self.setting: Setting | None = None

    def fit(self, setting: Setting) -> None:
        if self.setting is setting:
            return
        self.setting = setting
        ctx = setting.ctx
        self.mf.fit(ctx)
        tables = self.mf.tables
        self.items = torch.cat([tables.vectors, tables.bias[:, None]], 1).detach()  # (I, d + 1)
        everyone = np.arange(ctx.data.n_users)
        out = []
        with torch.no_grad():
            for _, _, support in _history_batches(ctx, everyone):
                out.append(self.mf._adapted(support))
        self.users = torch.cat(out)


def _history_batches(ctx: Context, users: np.ndarray):
    return batches(ctx, users, ctx.seqs.lengths[users])


class ContentMap:
    """Ridge regression from an item's content to its MF row, scored with MF user vectors."""

    name = "content_map"

    def __init__(self, rows: MFRows) -> None:
        self.rows = rows

    def handles(self, n: int) -> bool:
        return True

    def fit(self, setting: Setting) -> None:
        self.rows.fit(setting)
        inputs = self._inputs(_warm_content(setting))
        judge = ColdNdcg(setting.valid, self.rows.users, [0])
        valid = self._inputs(_content(setting.valid.features, setting.valid.text))
        best = None
        for strength in RIDGE:
            weights = self._ridge(inputs, self.rows.items, strength)
            value = judge(lambda n, w=weights: valid @ w)
            if best is None or value > best[0]:
                best = (value, weights)
        self.weights = best[1]
        self.cold = self._inputs(_content(setting.test.features, setting.test.text)) @ self.weights

    @staticmethod
    def _inputs(content: torch.Tensor) -> torch.Tensor:
        return torch.cat([content, torch.ones(len(content), 1)], 1)

    @staticmethod
    def _ridge(inputs: torch.Tensor, targets: torch.Tensor, strength: float) -> torch.Tensor:
        gram = inputs.T @ inputs + strength * torch.eye(inputs.shape[1])
        return torch.linalg.solve(gram, inputs.T @ targets)

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        return row_scores(self.rows.users[torch.from_numpy(users)], self.cold)

    def warm_scores(self, users: np.ndarray) -> torch.Tensor:
        return row_scores(self.rows.users[torch.from_numpy(users)], self.rows.items)


class MFFoldIn:
    """The mean MF item row, then the item step on the item's support users (MF vectors),
    its rates and prior chosen on validation items."""

    name = "mf_foldin"

    def __init__(self, rows: MFRows, inner_steps: int, reference_users: int) -> None:
        self.rows, self.steps, self.size = rows, inner_steps, reference_users

    def handles(self, n: int) -> bool:
        return n >= 1

    def fit(self, setting: Setting) -> None:
        self.rows.fit(setting)
        users = self.rows.users
        pick = np.random.default_rng(setting.ctx.seed + 2).choice(len(users), self.size)
        self.reference = users[torch.from_numpy(pick)]
        self.start = self.rows.items.mean(0)
        judge = ColdNdcg(setting.valid, users, [n for n in setting.support_sizes if n >= 1])

        @cache
        def value(point: tuple[int, int]) -> float:
            self.rule = self._rule(point)
            return judge(lambda n: self._rows(setting.valid, n))

        point = climb(value, (0, 0), LATTICE_REACH)
        self.rule = self._rule(point)
        self.test = setting.test

    def _rule(self, point: tuple[int, int]) -> InnerRule:
        dim = self.rows.items.shape[1]
        rate, prior = 2 ** (point[0] / 2), 3.0 * 2 ** (point[1] / 2)
        return InnerRule(rate * torch.eye(dim), torch.tensor(prior), 0.0, self.steps)

    def _rows(self, cold: ColdItems, n: int) -> torch.Tensor:
        starts = self.start.expand(len(cold.users), -1)
        return item_step(starts, cold.support(n), self.rows.users, self.reference, self.rule)

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        return row_scores(self.rows.users[torch.from_numpy(users)], self._rows(self.test, n))

    def warm_scores(self, users: np.ndarray) -> torch.Tensor:
        return row_scores(self.rows.users[torch.from_numpy(users)], self.rows.items)


class ColdStartItems:
    """Our model: meta-trained on the warm data, its item start trained after, its item step
    calibrated on the validation items."""

    name = "coldstart"

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig) -> None:
        self.model_config, self.train_config = model_config, train_config

    def handles(self, n: int) -> bool:
        return True

    def fit(self, setting: Setting) -> None:
        ctx = setting.ctx
        self.model, _ = meta_train(ctx, self.model_config, self.train_config, progress=False)
        train_item_start(self.model, ctx, self.train_config)
        set_reference_users(self.model, ctx)
        self.users = user_rows(self.model, ctx, np.arange(ctx.data.n_users))
        self.calibration = calibrate_item_step(
            self.model, setting.valid, self.users, setting.support_sizes
        )
        self.test = setting.test

    def cold_scores(self, users: np.ndarray, n: int) -> torch.Tensor:
        rows = cold_rows(self.model, self.test, n, self.users)
        return row_scores(self.users[torch.from_numpy(users)], rows)

    def warm_scores(self, users: np.ndarray) -> torch.Tensor:
        return adapt.scores(self.users[torch.from_numpy(users)], self.model.item_tables())


def item_methods(model_config: ModelConfig, train_config: TrainConfig) -> list:
    rows = MFRows(model_config.inner_steps)
    return [
        Random(),
        FeaturePopularity(),
        ColdPopularity(),
        ContentKNN(),
        ContentMap(rows),
        MFFoldIn(rows, model_config.inner_steps, model_config.reference_users),
        ColdStartItems(model_config, train_config),
    ]
