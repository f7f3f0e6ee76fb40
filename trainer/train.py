"""Meta-training: learn the item tables, the user prior and the inner rule.

Each outer step samples training users, gives each a support size spread over
0..max_support, adapts them with the inner loop, and scores the adapted
vectors on the rest of their sequence (the query), exactly as evaluation will.
The query loss is the multinomial log-likelihood of the query items over the
catalogue minus the support items, the quantity NDCG@20 rewards. The model
kept is the one with the best NDCG@20 on validation users.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from trainer.adapt import ratings, scores
from trainer.baselines.mf import MatrixFactorisation
from trainer.episodes import Context, validation_ndcg
from trainer.model import ColdStartModel, ModelConfig
from trainer.split import Support, support_batch

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    meta_steps: int = 3000  # outer steps at most
    users_per_step: int = 128  # episodes (training users) per outer step
    max_support: int = 20  # support sizes are drawn uniformly from 0..max_support
    meta_lr: float = 3e-3  # Adam learning rate of the meta-parameters
    weight_decay: float = 1e-5  # on the item tables, against over-fitting few training users
    warm_start: bool = True  # start from plain MF's item tables, mean user and tuned step
    item_lr_scale: float = 0.1  # item tables learn at this fraction of meta_lr (warm start)
    first_order: bool = False  # drop second-order terms of the meta-gradient
    eval_every: int = 100  # outer steps between validation runs
    patience: int = 6  # validation runs without improvement before stopping


@dataclass(frozen=True)
class Query:
    """Dense query targets of a batch of episodes."""

    weights: torch.Tensor  # (B, I) 1/|Q| on each query item, else 0
    hidden: torch.Tensor  # (B, I) bool, True on support items (excluded from ranking)
    rows: torch.Tensor  # (Nq,) batch row of each query interaction
    items: torch.Tensor  # (Nq,) its item
    ratings: torch.Tensor | None  # (Nq,) its rating, None for implicit data


def sample_episodes(
    ctx: Context, users: np.ndarray, config: TrainConfig, rng: np.random.Generator
) -> tuple[Support, Query]:
    batch = rng.choice(users, config.users_per_step)
    lengths = ctx.seqs.lengths[batch]
    ks = np.minimum(rng.integers(0, config.max_support + 1, len(batch)), lengths - 1)
    support = support_batch(ctx.seqs, batch, ks, ctx.features)
    starts = ctx.seqs.offsets[batch] + ks
    counts = lengths - ks
    rows = np.repeat(np.arange(len(batch)), counts)
    flat = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    items = torch.from_numpy(ctx.seqs.items[flat])
    rows_t = torch.from_numpy(rows)
    weights = torch.zeros(len(batch), ctx.data.n_items)
    weights[rows_t, items] = torch.from_numpy(1.0 / counts[rows]).float()
    hidden = torch.zeros(len(batch), ctx.data.n_items, dtype=torch.bool)
    hidden[torch.arange(len(batch)).unsqueeze(1), support.items] = support.mask.bool()
    query_ratings = None
    if ctx.seqs.ratings is not None:
        query_ratings = torch.from_numpy(ctx.seqs.ratings[flat]).float()
    query = Query(weights, hidden, rows_t, items, query_ratings)
    return support, query


def query_loss(model: ColdStartModel, users: torch.Tensor, query: Query) -> torch.Tensor:
    tables = model.item_tables()
    logits = scores(users, tables).masked_fill(query.hidden, -1e9)  # (B, I)
    loss = -(query.weights * torch.log_softmax(logits, dim=1)).sum(1).mean()
    weight = model.rule().rating_weight
    if weight and query.ratings is not None:
        predicted = ratings(users, tables)[query.rows, query.items]  # (Nq,)
        loss = loss + weight * ((predicted - query.ratings) ** 2).mean()
    return loss


def build_model(ctx: Context, config: ModelConfig) -> ColdStartModel:
    data = ctx.data
    features = None
    if data.item_features is not None:
        features = torch.from_numpy(data.item_features).float()
    vocab = [len(data.user_vocab[name]) for name in sorted(data.user_features)]
    model = ColdStartModel(config, data.n_items, features, vocab, data.ratings is not None)
    train = ctx.split.train
    in_train = np.isin(data.users, train)
    counts = np.bincount(data.items[in_train], minlength=data.n_items)
    mean_rating = float(data.ratings[in_train].mean()) if data.ratings is not None else 0.0
    model.init_biases(torch.from_numpy(np.log1p(counts)).float(), mean_rating)
    return model


def warm_start(model: ColdStartModel, ctx: Context) -> dict:
    """Start where matrix factorisation plus a tuned inner step ends up.

    With a few hundred training users, item tables learned by the meta-objective
    alone over-fit within a few hundred steps; MF on the training users' whole
    histories, with weight decay chosen on validation users, gives far better
    tables. Meta-learning then starts from MF's mean user and step (so at step 0
    the model is exactly the mf_finetune baseline) and learns the feature-conditioned
    prior, the full preconditioner and the prior strength, moving the item tables slowly.
    """
    config = model.config
    mf = MatrixFactorisation(config.dim, config.inner_steps, rating_weight=config.rating_weight)
    mf.fit(ctx)
    with torch.no_grad():
        model.item_embedding.copy_(mf.tables.vectors)
        model.item_bias.copy_(mf.tables.bias)
        model.rating_embedding.copy_(mf.tables.rating_vectors)
        model.rating_bias.copy_(mf.tables.rating_bias)
        model.user_prior.copy_(mf.mean_user)
        model.log_inner_lr.copy_(mf.rule.preconditioner.diagonal().log())
        model.log_prior.copy_(mf.rule.prior.log())
    return mf.chosen


def _optimizer(model: ColdStartModel, config: TrainConfig) -> torch.optim.Optimizer:
    item_tables = [model.item_embedding, model.item_bias, model.rating_embedding, model.rating_bias]
    item_ids = {id(p) for p in item_tables}
    rest = [p for p in model.parameters() if id(p) not in item_ids]
    item_lr = config.meta_lr * (config.item_lr_scale if config.warm_start else 1.0)
    return torch.optim.Adam(
        [{"params": item_tables, "lr": item_lr}, {"params": rest, "lr": config.meta_lr}]
    )


def score_fn(model: ColdStartModel):
    """The model as an evaluation scorer: adapt on the support set, score the catalogue."""
    return lambda support: scores(model.adapt(support), model.item_tables())


def meta_train(
    ctx: Context, model_config: ModelConfig, config: TrainConfig, progress: bool = True
) -> tuple[ColdStartModel, dict]:
    """Returns the best model on validation users and a summary of the run."""
    torch.manual_seed(ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    started = time.perf_counter()
    model = build_model(ctx, model_config).to(ctx.device)
    pretrained = warm_start(model, ctx) if config.warm_start else None
    optimizer = _optimizer(model, config)
    users = ctx.split.train[ctx.seqs.lengths[ctx.split.train] >= 2]
    best = (validation_ndcg(score_fn(model), ctx), 0, copy.deepcopy(model.state_dict()))
    stale, history = 0, [{"step": 0, "valid_ndcg@20": best[0]}]
    bar = tqdm(
        range(1, config.meta_steps + 1), disable=not progress, desc="meta-train", mininterval=2
    )
    for step in bar:
        support, query = sample_episodes(ctx, users, config, rng)
        support, query = support.to(ctx.device), _query_to(query, ctx.device)
        loss = query_loss(model, model.adapt(support, config.first_order), query)
        loss = loss + config.weight_decay * model.item_embedding.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % config.eval_every == 0:
            model.eval()
            ndcg = validation_ndcg(score_fn(model), ctx)
            history.append({"step": step, "loss": loss.item(), "valid_ndcg@20": ndcg})
            if ndcg > best[0]:
                best, stale = (ndcg, step, copy.deepcopy(model.state_dict())), 0
            else:
                stale += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", valid_ndcg=f"{ndcg:.4f}")
            if stale >= config.patience:
                break
    model.load_state_dict(best[2])
    seconds = time.perf_counter() - started
    return model, {
        "valid_ndcg@20": best[0],
        "best_step": best[1],
        "steps": step,
        "seconds": seconds,
        "tasks_per_s": step * config.users_per_step / seconds,
        "warm_start": pretrained,
        "history": history,
    }


def _query_to(query: Query, device: torch.device) -> Query:
    moved = {k: (v.to(device) if v is not None else None) for k, v in vars(query).items()}
    return Query(**moved)
