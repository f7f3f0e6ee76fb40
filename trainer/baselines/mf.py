"""Matrix factorisation without meta-learning: the control that says what meta-learning buys.

Ordinary MF on the training users' full histories, with the same scorer,
loss and inner step as our model (trainer.adapt): scores u . v_i + b_i under a
multinomial (softmax over the whole catalogue) likelihood, plus, for rated
data, a rating head u . w_i + c_i with a small squared-error weight. A new user
starts from the mean training user vector and takes the same K inner steps;
the step's rate and prior strength are searched on validation users instead of
being meta-learned, as are the epoch and the weight decay (small data sets such
as ml-100k need far stronger decay than ml-1m). The loss helpers here are
shared with MeLU, which trains on the same likelihood.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from functools import cache

import numpy as np
import torch
from torch import nn

from trainer import adapt
from trainer.adapt import InnerRule, ItemTables
from trainer.baselines.popularity import item_counts
from trainer.episodes import Context, require_validation_users, validation_ndcg
from trainer.lattice import climb
from trainer.progress import progress_bar
from trainer.split import Sequences, Support, positions_after

# The inner rule (rate c, prior p) is searched on a log lattice, c = RATE * 3**i in units of
# the inverse curvature of the mean user's loss (c = 1 is a Newton-like step, so the lattice
# fits item vectors of any scale) and p = PRIOR * 3**j, hill-climbing from the last choice.
RATE, PRIOR = 0.1, 10.0
LATTICE_REACH = 4  # |i|, |j| <= this


def query_targets(
    seqs: Sequences, users: np.ndarray, ks: np.ndarray, n_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each users[b]'s interactions after its first ks[b], as dense rows.

    Returns counts (B, I) (how often each item occurs) and ratings (B, I)
    (the rating given, 0 where unrated or the data is implicit).
    """
    rows, positions = positions_after(seqs, users, ks)
    rows = torch.from_numpy(rows)
    items = torch.from_numpy(seqs.items[positions])
    counts = torch.zeros(len(users), n_items)
    counts.index_put_((rows, items), torch.ones(len(rows)), accumulate=True)
    ratings = torch.zeros(len(users), n_items)
    if seqs.ratings is not None:
        ratings[rows, items] = torch.from_numpy(seqs.ratings[positions]).float()
    return counts, ratings


def softmax_nll(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over interactions of -log softmax(logits)_i: adapt.py's ranking loss."""
    return -(counts * torch.log_softmax(logits, dim=-1)).sum() / counts.sum().clamp(min=1.0)


def rating_mse(predicted: torch.Tensor, ratings: torch.Tensor, rated: torch.Tensor) -> torch.Tensor:
    """Mean squared rating error over the entries where `rated` is 1."""
    return (rated * (predicted - ratings) ** 2).sum() / rated.sum().clamp(min=1.0)


class _Factors(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.users = nn.Parameter(0.05 * torch.randn(n_users, dim, generator=gen))
        self.vectors = nn.Parameter(0.05 * torch.randn(n_items, dim, generator=gen))
        self.bias = nn.Parameter(torch.zeros(n_items))
        self.rating_vectors = nn.Parameter(0.01 * torch.randn(n_items, dim, generator=gen))
        self.rating_bias = nn.Parameter(torch.zeros(n_items))

    def item_tables(self) -> ItemTables:
        return ItemTables(self.vectors, self.bias, self.rating_vectors, self.rating_bias)


class MatrixFactorisation:
    name = "mf_finetune"

    def __init__(
        self,
        dim: int = 64,  # size of user and item vectors
        inner_steps: int = 5,  # K, as in our model
        epochs: int = 30,  # training budget; the best checkpoint within it is kept
        eval_every: int = 5,  # epochs between validation checkpoints
        batch_size: int = 128,  # users per minibatch
        lr: float = 3e-3,  # Adam learning rate
        weight_decays: tuple[float, ...] = (1.0, 10.0),  # AdamW decay: one fit each, best kept
        rating_weight: float = 0.05,  # weight of rating error, in training and in the inner step
        progress: bool = False,  # a bar over the epochs of every fit
    ) -> None:
        self.dim, self.inner_steps = dim, inner_steps
        self.epochs, self.eval_every, self.batch_size = epochs, eval_every, batch_size
        self.lr, self.weight_decays, self.rating_weight = lr, weight_decays, rating_weight
        self.progress = progress

    def fit(self, ctx: Context) -> None:
        """One training run per weight decay; keeps the validation-best checkpoint of all."""
        require_validation_users(ctx)
        # The rating term's weight in training and in the inner step; 0 for implicit data.
        self.rating_term = self.rating_weight if ctx.data.ratings is not None else 0.0
        train = ctx.split.train
        targets = query_targets(ctx.seqs, train, np.zeros_like(train), ctx.data.n_items)
        counts, ratings = (t.to(ctx.device) for t in targets)  # (U, I) each
        best = -1.0
        epochs = len(self.weight_decays) * self.epochs
        with progress_bar(epochs, self.name, self.progress) as bar:
            for decay in self.weight_decays:
                for factors in self._train(ctx, counts, ratings, decay, bar.update):
                    ndcg = self._select_rule(copy.deepcopy(factors).requires_grad_(False), ctx)
                    if ndcg > best:
                        best, chosen = ndcg, (self.tables, self.mean_user, self.rule)
                    bar.set_postfix(
                        decay=decay, valid_ndcg=f"{ndcg:.4f}", best=f"{best:.4f}", refresh=False
                    )
        self.tables, self.mean_user, self.rule = chosen

    def _train(
        self,
        ctx: Context,
        counts: torch.Tensor,
        ratings: torch.Tensor,
        decay: float,
        epoch_done: Callable[[], object],
    ) -> Iterator[_Factors]:
        """Train from scratch, yielding the factors at every checkpoint epoch."""
        gen = torch.Generator().manual_seed(ctx.seed)
        factors = _Factors(len(counts), ctx.data.n_items, self.dim, gen)
        with torch.no_grad():
            factors.bias.copy_(torch.from_numpy(item_counts(ctx)).log1p())
            if self.rating_term:
                factors.rating_bias.fill_(float(ratings[counts > 0].mean()))
        factors.to(ctx.device)
        # The rating offset holds the mean rating: decaying it towards 0 would bias every
        # predicted rating by several stars.
        decayed = [p for p in factors.parameters() if p is not factors.rating_bias]
        optimiser = torch.optim.AdamW(
            [{"params": decayed}, {"params": [factors.rating_bias], "weight_decay": 0.0}],
            lr=self.lr,
            weight_decay=decay,
        )
        self.lattice_point = (0, 0)
        for epoch in range(1, self.epochs + 1):
            for batch in torch.randperm(len(counts), generator=gen).split(self.batch_size):
                batch = batch.to(ctx.device)
                users = factors.users[batch]  # (b, d)
                loss = softmax_nll(adapt.scores(users, factors.item_tables()), counts[batch])
                if self.rating_term:
                    predicted = adapt.ratings(users, factors.item_tables())  # (b, I)
                    rated = (counts[batch] > 0).float()
                    loss = loss + self.rating_term * rating_mse(predicted, ratings[batch], rated)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            epoch_done()
            if epoch % self.eval_every == 0 or epoch == self.epochs:
                yield factors

    def _select_rule(self, factors: _Factors, ctx: Context) -> float:
        """Take these factors and the validation-best inner rule; return its validation NDCG."""
        self.tables, self.mean_user = factors.item_tables(), factors.users.mean(0)
        unit = torch.eye(self.dim, device=ctx.device) / self._curvature()  # (d, d)

        @cache
        def value(point: tuple[int, int]) -> float:
            self.rule = self._rule_at(point, unit)
            return validation_ndcg(self.scores, ctx)

        point = climb(value, self.lattice_point, LATTICE_REACH)
        self.lattice_point, self.rule = point, self._rule_at(point, unit)
        return value(point)

    def _rule_at(self, point: tuple[int, int], unit: torch.Tensor) -> InnerRule:
        rate, prior = RATE * 3.0 ** point[0], PRIOR * 3.0 ** point[1]
        # A scaled identity: the same rate on every dimension, nothing learned.
        return InnerRule(
            preconditioner=rate * unit,  # (d, d)
            prior=torch.tensor(prior, device=unit.device),
            rating_weight=self.rating_term,
            steps=self.inner_steps,
        )

    def _curvature(self) -> torch.Tensor:
        """Mean per-dimension variance of item vectors under the mean user's softmax:
        the average eigenvalue of the softmax loss's Hessian per interaction."""
        probs = torch.softmax(adapt.scores(self.mean_user[None], self.tables), dim=1)[0]  # (I,)
        vectors = self.tables.vectors
        return (probs @ vectors**2 - (probs @ vectors) ** 2).mean()

    def _adapted(self, support: Support) -> torch.Tensor:
        initial = self.mean_user.expand(support.items.shape[0], -1)  # (B, d)
        return adapt.inner_loop(initial, self.tables, support, self.rule)

    def scores(self, support: Support) -> torch.Tensor:
        return adapt.scores(self._adapted(support), self.tables)  # (B, I)

    def ratings(self, support: Support) -> torch.Tensor | None:
        if not self.rating_term:
            return None
        return adapt.ratings(self._adapted(support), self.tables)  # (B, I)
