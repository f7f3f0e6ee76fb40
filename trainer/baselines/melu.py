"""MeLU (Lee et al., KDD 2019): a meta-learned MLP whose decision layers adapt per user.

The user is the concatenation of embeddings of their side features (code 0 =
unknown); an item is its id embedding concatenated with a linear projection of
its feature multi-hot. An MLP over [user, item] (fc1 -> ReLU -> fc2 -> ReLU ->
out) has two outputs: a ranking logit (plus a global, log-popularity-initialised
item bias, which keeps the zero-shot list at popularity) and a rating. Its
decision layers (fc1, fc2, out) are locally updated for each user by K SGD
steps on the support loss; everything is meta-trained with MAML's outer loop
on episodes of training users (support = the first k interactions, k spread
over 0..max support size; query = the rest).

Departures from the paper, for a ranking protocol over the whole catalogue:
the losses are the softmax log-likelihood over all items (support items
excluded from the query's softmax) plus a small-weight rating error, not a
rating regression alone; and the meta-gradient is first-order (FOMAML: the
local gradients are treated as constants), which keeps the cost of a step to
K + 1 forward/backward passes. All users of a batch adapt at once: per-user
copies of the decision layers carry a leading batch dimension.

Every local step is a forward and backward pass over users x catalogue, which
is what bounds this model's size: the defaults (one local step, the paper's
own default; fc widths 32 and 16; 14 epochs) keep its fit to minutes on a CPU,
and more steps or width cost time linearly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.baselines.mf import query_targets, rating_mse, softmax_nll
from trainer.baselines.popularity import item_counts, training_positions
from trainer.episodes import Context, require_validation_users, validation_ndcg
from trainer.progress import progress_bar
from trainer.split import Support, support_batch

Layers = dict[str, torch.Tensor]  # decision-layer name -> (B, ...) per-user weights
HIDDEN_MASK = -1e9  # ranking logit of items excluded from a softmax (finite: 0 * it is 0)


def decide(
    layers: Layers, users: torch.Tensor, items: torch.Tensor, item_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's decision layers over every item: ranking logits (B, I) and ratings (B, I).

    users (B, du), items (I, dv); fc1 acts on [user, item], so its user half is
    applied once per user and its item half once per user and item.
    """
    du = users.shape[1]
    w1 = layers["w1"]  # (B, h1, du + dv)
    per_user = torch.einsum("bhd,bd->bh", w1[:, :, :du], users) + layers["b1"]  # (B, h1)
    hidden = torch.matmul(items, w1[:, :, du:].transpose(1, 2)) + per_user[:, None]
    hidden = torch.relu(hidden)  # (B, I, h1)
    hidden = torch.bmm(hidden, layers["w2"].transpose(1, 2)) + layers["b2"][:, None]
    hidden = torch.relu(hidden)  # (B, I, h2)
    out = torch.bmm(hidden, layers["w3"].transpose(1, 2)) + layers["b3"][:, None]  # (B, I, 2)
    return out[..., 0] + item_bias, out[..., 1]


def support_loss(
    logits: torch.Tensor, predicted: torch.Tensor, support: Support, rating_weight: float
) -> torch.Tensor:
    """Sum over users of each user's mean support loss (0 for an empty support)."""
    mask = support.mask  # (B, S)
    count = mask.sum(1).clamp(min=1.0)  # (B,)
    log_probs = torch.log_softmax(logits, dim=1).gather(1, support.items)  # (B, S)
    loss = -(mask * log_probs).sum(1) / count
    if rating_weight:
        error = predicted.gather(1, support.items) - support.ratings  # (B, S)
        loss = loss + rating_weight * (mask * error**2).sum(1) / count
    return loss.sum()


@dataclass(frozen=True)
class LocalRule:
    """MeLU's local update: plain SGD, the same for every user."""

    lr: float  # local learning rate
    steps: int  # K local steps
    rating_weight: float  # weight of the rating term; 0 for implicit data


def local_update(
    layers: Layers,
    users: torch.Tensor,
    items: torch.Tensor,
    item_bias: torch.Tensor,
    support: Support,
    rule: LocalRule,
) -> Layers:
    """K SGD steps on every user's support loss at once. The gradients are constants
    (first order), so the result depends on `layers` only through the identity;
    users, items and item_bias should come detached for the same reason."""
    for _ in range(rule.steps):
        logits, predicted = decide(layers, users, items, item_bias)
        loss = support_loss(logits, predicted, support, rule.rating_weight)
        grads = torch.autograd.grad(loss, list(layers.values()))
        layers = {name: w - rule.lr * g for (name, w), g in zip(layers.items(), grads, strict=True)}
    return layers


class _MeLUNet(nn.Module):
    """The meta-parameters: embeddings, the item bias and the decision layers' initial values."""

    def __init__(
        self,
        vocab_sizes: list[int],
        item_features: torch.Tensor | None,  # (I, F) multi-hot
        n_items: int,
        dims: tuple[int, int, int, int, int],  # user feature, item id, item feature, fc1, fc2
    ) -> None:
        super().__init__()
        user_dim, item_dim, feature_dim, h1, h2 = dims
        self.user_embeddings = nn.ModuleList(nn.Embedding(n, user_dim) for n in vocab_sizes)
        self.item_embedding = nn.Embedding(n_items, item_dim)
        self.register_buffer("item_features", item_features)
        self.feature_projection = None
        if item_features is not None:
            self.feature_projection = nn.Linear(item_features.shape[1], feature_dim, bias=False)
        else:
            feature_dim = 0
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        fc1 = nn.Linear(user_dim * len(vocab_sizes) + item_dim + feature_dim, h1)
        fc2, out = nn.Linear(h1, h2), nn.Linear(h2, 2)
        self.decision = nn.ParameterDict(
            {"w1": fc1.weight, "b1": fc1.bias, "w2": fc2.weight, "b2": fc2.bias}
            | {"w3": out.weight, "b3": out.bias}
        )

    def users(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) side-feature codes -> (B, du)."""
        columns = [table(features[:, f]) for f, table in enumerate(self.user_embeddings)]
        return (
            torch.cat(columns, dim=1) if columns else features.new_zeros(len(features), 0).float()
        )

    def items(self) -> torch.Tensor:
        """(I, dv) item representations."""
        if self.feature_projection is None:
            return self.item_embedding.weight
        projected = self.feature_projection(self.item_features)  # (I, feature_dim)
        return torch.cat([self.item_embedding.weight, projected], dim=1)

    def initial_layers(self, batch: int) -> Layers:
        return {name: w.expand(batch, *w.shape) for name, w in self.decision.items()}


class MeLU:
    name = "melu"

    def __init__(
        self,
        local_steps: int = 1,  # K local SGD steps (the paper's default is 1)
        local_lr: float = 0.3,  # SGD rate of the local update
        epochs: int = 14,  # meta-training budget; the best checkpoint within it is kept
        eval_every: int = 2,  # epochs between validation checkpoints
        meta_batch: int = 32,  # users (episodes) per outer step
        lr: float = 5e-3,  # Adam rate of the outer step
        dims: tuple[int, int, int, int, int] = (16, 32, 16, 32, 16),  # see _MeLUNet
        rating_weight: float = 0.05,  # weight of rating error in the local and outer losses
        chunk: int = 64,  # users adapted together when scoring: bounds memory
        progress: bool = False,  # a bar over the epochs
    ) -> None:
        self.local_steps, self.local_lr = local_steps, local_lr
        self.epochs, self.eval_every, self.meta_batch, self.lr = epochs, eval_every, meta_batch, lr
        self.dims, self.rating_weight, self.chunk = dims, rating_weight, chunk
        self.progress = progress

    def fit(self, ctx: Context) -> None:
        require_validation_users(ctx)
        has_ratings = ctx.data.ratings is not None
        weight = self.rating_weight if has_ratings else 0.0
        self.rule = LocalRule(self.local_lr, self.local_steps, weight)
        features = None
        if ctx.data.item_features is not None:
            features = torch.from_numpy(ctx.data.item_features).float()
        vocab_sizes = [len(ctx.data.user_vocab[n]) for n in sorted(ctx.data.user_features)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)  # the initial weights, without touching the global stream
            self.net = _MeLUNet(vocab_sizes, features, ctx.data.n_items, self.dims)
        with torch.no_grad():
            self.net.item_bias.copy_(torch.from_numpy(item_counts(ctx)).log1p())
            if has_ratings:
                positions, _ = training_positions(ctx)  # training users' ratings only
                self.net.decision["b3"][1] = float(ctx.seqs.ratings[positions].mean())
        self.net.to(ctx.device)
        optimiser = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        rng = np.random.default_rng(ctx.seed)
        best = -1.0
        with progress_bar(self.epochs, self.name, self.progress) as bar:
            for epoch in range(1, self.epochs + 1):
                for users in np.array_split(rng.permutation(ctx.split.train), self._batches(ctx)):
                    loss = self._episode_loss(users, rng, ctx)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                bar.update()
                if epoch % self.eval_every == 0 or epoch == self.epochs:
                    ndcg = validation_ndcg(self.scores, ctx)
                    if ndcg > best:
                        best, state = ndcg, copy.deepcopy(self.net.state_dict())
                    bar.set_postfix(valid_ndcg=f"{ndcg:.4f}", best=f"{best:.4f}", refresh=False)
        self.net.load_state_dict(state)

    def _batches(self, ctx: Context) -> int:
        return max(1, round(len(ctx.split.train) / self.meta_batch))

    def _episode_loss(
        self, users: np.ndarray, rng: np.random.Generator, ctx: Context
    ) -> torch.Tensor:
        """The outer (query) loss of one meta-batch of episodes after the local update."""
        max_k = max(ctx.support_sizes)
        ks = np.minimum(rng.integers(0, max_k + 1, len(users)), ctx.seqs.lengths[users] - 1)
        support = support_batch(ctx.seqs, users, ks, ctx.features).to(ctx.device)
        counts, ratings = (
            t.to(ctx.device) for t in query_targets(ctx.seqs, users, ks, ctx.data.n_items)
        )
        user_vectors, items = self.net.users(support.user_features), self.net.items()
        adapted = local_update(
            self.net.initial_layers(len(users)),
            user_vectors.detach(),
            items.detach(),
            self.net.item_bias.detach(),
            support,
            self.rule,
        )
        logits, predicted = decide(adapted, user_vectors, items, self.net.item_bias)
        seen = torch.zeros_like(counts).scatter_add_(1, support.items, support.mask) > 0  # (B, I)
        counts = counts.masked_fill(seen, 0.0)
        loss = softmax_nll(logits.masked_fill(seen, HIDDEN_MASK), counts)
        weight = self.rule.rating_weight
        if weight:
            loss = loss + weight * rating_mse(predicted, ratings, (counts > 0).float())
        return loss

    def _adapted_outputs(self, support: Support) -> tuple[torch.Tensor, torch.Tensor]:
        """Ranking logits and ratings (B, I) after each user's local update, in chunks of users."""
        logits, ratings = [], []
        with torch.enable_grad():
            items, item_bias = self.net.items().detach(), self.net.item_bias.detach()
            for start in range(0, len(support.items), self.chunk):
                part = Support(*(t[start : start + self.chunk] for t in vars(support).values()))
                users = self.net.users(part.user_features).detach()
                layers = self.net.initial_layers(len(part.items))
                if part.mask.any():
                    layers = local_update(layers, users, items, item_bias, part, self.rule)
                layers = {name: w.detach() for name, w in layers.items()}
                chunk_logits, chunk_ratings = decide(layers, users, items, item_bias)
                logits.append(chunk_logits)
                ratings.append(chunk_ratings)
        return torch.cat(logits), torch.cat(ratings)

    def scores(self, support: Support) -> torch.Tensor:
        return self._adapted_outputs(support)[0]  # (B, I)

    def ratings(self, support: Support) -> torch.Tensor | None:
        if not self.rule.rating_weight:
            return None
        return self._adapted_outputs(support)[1]  # (B, I)
