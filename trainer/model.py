"""The cold-start model: item tables, a user prior, and a learned adaptation rule.

A user is one vector. Its starting point is a learned vector plus embeddings
of whatever side features the user has (all-unknown features give the global
prior), and the inner loop (trainer.adapt) moves it towards the user's support
interactions. Item vectors add a projection of the item's features to a free
embedding, so rarely seen items still sit near their genre.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.adapt import InnerRule, ItemTables, inner_loop
from trainer.config_fields import check_fields
from trainer.split import Support

# Every adaptation, online ones included, takes this many catalogue-wide steps at most.
MAX_INNER_STEPS = 100
# A user vector is a Redis record of this many floats at most (4 KiB); the bound also keeps a
# manifest's dim from asking torch for a (dim, dim) matrix it cannot size.
MAX_DIM = 1024


@dataclass
class ModelConfig:
    dim: int = 64  # size of user and item vectors
    inner_steps: int = 5  # K: inner gradient steps on the support set
    init_inner_lr: float = 1.0  # starting per-dimension inner learning rate
    init_prior: float = 3.0  # starting prior strength (in interactions)
    svd_scale: float = 3.0  # item vectors start at the training interactions' SVD times this
    rating_weight: float = 0.05  # weight of rating error in inner and outer loss; 0 = ranking only
    use_user_features: bool = True  # condition the prior on user side features
    use_item_features: bool = True  # add projected item features to item vectors
    use_item_text: bool = True  # give a new item's start its text, when an encoder is installed
    item_start_width: int = 256  # hidden units of the new-item start generator
    reference_users: int = 1024  # the users a new item's step scores it against
    # From this catalogue size, a user's inner step scores a fixed sample of items (drawn by
    # popularity, corrected by it) instead of the whole catalogue, and meta-training's query
    # loss a fresh uniform sample of as many per step; 1 forces it on any size.
    sampled_from_items: int = 100_000
    sampled_items: int = 4096  # the sample's size

    def __post_init__(self) -> None:
        check_fields(
            self,
            positive=(
                "dim",
                "init_inner_lr",
                "init_prior",
                "svd_scale",
                "item_start_width",
                "sampled_from_items",
                "sampled_items",
            ),
            non_negative=("inner_steps", "rating_weight", "reference_users"),
        )
        if self.inner_steps > MAX_INNER_STEPS:
            raise ValueError(f"inner_steps must be <= {MAX_INNER_STEPS}, got {self.inner_steps}")
        if self.dim > MAX_DIM:
            raise ValueError(f"dim must be <= {MAX_DIM}, got {self.dim}")


class ColdStartModel(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        n_items: int,
        item_features: torch.Tensor | None,  # (I, F) multi-hot
        user_vocab_sizes: list[int],  # one per user feature, in user_feature_matrix order
        has_ratings: bool,
        text_dim: int = 0,  # width of the item text vectors; 0 without an encoder
    ) -> None:
        super().__init__()
        self.config = config
        self.has_ratings = has_ratings
        d = config.dim
        self.item_embedding = nn.Parameter(torch.randn(n_items, d) * 0.05)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.rating_embedding = nn.Parameter(torch.randn(n_items, d) * 0.01)
        self.rating_bias = nn.Parameter(torch.zeros(n_items))
        width = (
            0 if item_features is None or not config.use_item_features else item_features.shape[1]
        )
        self.register_buffer("item_features", item_features if width else torch.zeros(n_items, 0))
        with warnings.catch_warnings():  # width 0 (no item features): nn.Linear's init warns
            warnings.simplefilter("ignore", UserWarning)
            self.feature_projection = nn.Linear(width, d, bias=False)
        nn.init.zeros_(self.feature_projection.weight)
        sizes = user_vocab_sizes if config.use_user_features else []
        self.user_prior = nn.Parameter(torch.zeros(d))
        self.user_feature_embeddings = nn.ModuleList(nn.Embedding(n, d) for n in sizes)
        for table in self.user_feature_embeddings:
            nn.init.zeros_(table.weight)
        self.log_inner_lr = nn.Parameter(torch.full((d,), math.log(config.init_inner_lr)))
        self.inner_mixing = nn.Parameter(torch.zeros(d, d))  # M in P = diag(rates) (I + M)
        self.log_prior = nn.Parameter(torch.tensor(math.log(config.init_prior)))
        self.text_dim = text_dim if config.use_item_text else 0
        with warnings.catch_warnings():  # no features and no text: a zero-width input
            warnings.simplefilter("ignore", UserWarning)
            self.item_start = nn.Sequential(
                nn.Linear(width + self.text_dim, config.item_start_width),
                nn.ReLU(),
                nn.Linear(config.item_start_width, d + 1),
            )
        # The item step: rates for the vector and for the bias, and its prior strength.
        self.log_item_rate = nn.Parameter(torch.zeros(2))
        self.log_item_prior = nn.Parameter(torch.tensor(math.log(config.init_prior)))
        self.register_buffer("reference_users", torch.zeros(config.reference_users, d))
        # A new item adapts on its first this-many interactions, then waits for training.
        self.register_buffer("item_warm_after", torch.tensor(0))
        # The inner step's fixed item sample and each sampled item's logit correction:
        # empty below sampled_from_items (the step scores the whole catalogue).
        sampled = min(config.sampled_items, n_items) if n_items >= config.sampled_from_items else 0
        self.register_buffer("sample", torch.zeros(sampled, dtype=torch.long))
        self.register_buffer("sample_correction", torch.zeros(sampled))

    def init_from_data(
        self, log_popularity: torch.Tensor, mean_rating: float, item_vectors: torch.Tensor
    ) -> None:
        """Start the zero-shot score at popularity, ratings at the mean and item vectors at a
        factorisation of the training interactions: k = 0 is then popularity from the first
        step, and meta-training only has to improve on it."""
        with torch.no_grad():
            self.item_embedding.copy_(item_vectors)
            self.item_bias.copy_(log_popularity)
            self.rating_bias.fill_(mean_rating)

    def item_tables(self) -> ItemTables:
        vectors = self.item_embedding + self.feature_projection(self.item_features)
        return ItemTables(vectors, self.item_bias, self.rating_embedding, self.rating_bias)

    def draw_sample(self, counts: np.ndarray, seed: int) -> None:
        """Fixes the inner step's item sample (when the catalogue is past the threshold):
        S items drawn without replacement with probability q ~ (count + 1)^0.75, and the
        sampled softmax's correction -log(pi) on their logits, pi being each item's chance
        to be in the sample (_inclusion), so the sample's partition function stands in
        for the catalogue's. Fixed per
        model: the service's adaptation stays a function of a user's history, on every
        replica."""
        size = len(self.sample)
        if not size:
            return
        weights = (counts.astype(np.float64) + 1.0) ** 0.75
        q = weights / weights.sum()
        rng = np.random.default_rng(seed)
        keys = np.log(q) + rng.gumbel(size=len(q))  # top-S of log q + Gumbel: S draws
        chosen = np.sort(np.argpartition(-keys, size - 1)[:size])
        included = _inclusion(q, size)[chosen]
        with torch.no_grad():
            self.sample.copy_(torch.from_numpy(chosen))
            self.sample_correction.copy_(torch.from_numpy(-np.log(included)))

    def scored_tables(self, tables: ItemTables) -> ItemTables | None:
        """The tables a user's inner step scores: the sample's rows with their logits
        corrected, or None for the whole catalogue (`tables` itself)."""
        if not len(self.sample):
            return None
        rows = self.sample
        return ItemTables(
            tables.vectors[rows],
            tables.bias[rows] + self.sample_correction,
            tables.rating_vectors[rows],
            tables.rating_bias[rows],
        )

    def rule(self) -> InnerRule:
        weight = self.config.rating_weight if self.has_ratings else 0.0
        return InnerRule(
            # diag(rates) (I + M): M is relative to the rates, so one Adam step on it is
            # equally small whatever scale the rates have.
            preconditioner=self.log_inner_lr.exp().unsqueeze(1)
            * (torch.eye(self.config.dim, device=self.inner_mixing.device) + self.inner_mixing),
            prior=self.log_prior.exp(),
            rating_weight=weight,
            steps=self.config.inner_steps,
        )

    def item_starts(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(N, F) item features and (N, T) text vectors -> (N, d + 1) starting rows [v, b] of
        new items. Zero-width inputs (no features, no text) give one learned start."""
        inputs = torch.cat(
            [features[:, : self.item_features.shape[1]], text[:, : self.text_dim]], dim=1
        )
        return self.item_start(inputs)

    def item_rule(self) -> InnerRule:
        """The new-item step: a diagonal preconditioner, one rate for the vector, one for
        the bias."""
        d = self.config.dim
        rates = torch.cat([self.log_item_rate[:1].expand(d), self.log_item_rate[1:]]).exp()
        return InnerRule(torch.diag(rates), self.log_item_prior.exp(), 0.0, self.config.inner_steps)

    def initial_users(self, user_features: torch.Tensor) -> torch.Tensor:
        """(B, F) side-feature codes -> (B, d) starting vectors; code 0 means unknown."""
        start = self.user_prior.expand(user_features.shape[0], -1)
        for column, table in enumerate(self.user_feature_embeddings):
            start = start + table(user_features[:, column])
        return start

    def adapt(self, support: Support, first_order: bool = False) -> torch.Tensor:
        """(B, ...) support sets -> (B, d) adapted user vectors."""
        initial = self.initial_users(support.user_features)
        tables = self.item_tables()
        scored = self.scored_tables(tables)
        if scored is None:
            return inner_loop(initial, tables, support, self.rule(), first_order)
        return inner_loop(initial, scored, support, self.rule(), first_order, pulls=tables)


def _inclusion(q: np.ndarray, size: int) -> np.ndarray:
    """Each item's chance to be among `size` drawn without replacement by q: the Poisson
    approximation 1 - exp(-t q), with t such that the chances sum to `size` (1 for every
    item when `size` covers the catalogue, and near 1 for items that would be drawn
    more than once with replacement)."""
    if size >= len(q):
        return np.ones_like(q)
    low, high = 0.0, float(size) / q.min()
    for _ in range(100):  # bisection on t: the sum of chances grows with it
        middle = (low + high) / 2
        if -np.expm1(-middle * q).sum() < size:
            low = middle
        else:
            high = middle
    return -np.expm1(-high * q)
