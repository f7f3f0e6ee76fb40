"""Meta-training: learn the item tables, the user prior and the inner rule.

Each outer step samples training users, gives each a support size spread over
0..max_support, adapts them with the inner loop, and scores the adapted
vectors on the rest of their sequence (the query), exactly as evaluation will.
The query loss ranks each query item against the items the user never touched
(query_loss), which is what NDCG@20 and Recall@20 reward. The model
kept is the one with the best NDCG@20 on validation users, and its step size
and prior strength are then calibrated on those users (calibrate_step).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch.nn import functional as F

from trainer.adapt import ItemTables, ratings, scores
from trainer.config_fields import check_fields
from trainer.data import Dataset
from trainer.episodes import Context, require_validation_users, validation_ndcg
from trainer.lattice import climb
from trainer.model import ColdStartModel, ModelConfig
from trainer.progress import progress_bar
from trainer.split import Sequences, Support, positions_after, support_batch

log = logging.getLogger(__name__)


# Each outer step holds a few (users_per_step, catalogue) tensors: 16,384 users of ml-1m's
# 3,706 items are 240 MB each; a million would ask for tens of GB and fail mid-allocation.
MAX_USERS_PER_STEP = 16384


@dataclass
class TrainConfig:
    meta_steps: int = 3000  # outer steps at most
    users_per_step: int = 128  # episodes (training users) per outer step
    max_support: int = 20  # support sizes are drawn uniformly from 0..max_support
    meta_lr: float = 1e-3  # Adam learning rate of the meta-parameters
    # Item vectors learn at this fraction of meta_lr from their SVD start; 0 freezes them.
    # At the full rate they over-fit the training users long before the user side converges.
    item_lr_scale: float = 0.3
    first_order: bool = False  # drop second-order terms of the meta-gradient
    eval_every: int = 50  # outer steps between validation runs
    patience: int = 4  # validation runs without improvement before stopping
    calibrate: bool = True  # rescale the learned step and prior on validation users at the end
    # Share of episodes whose user's side features are hidden. The service adapts users from
    # events, which carry none: a prior trained always with features is off-centre without.
    feature_dropout: float = 0.5
    # Share of episodes of a user with neither events nor a profile (k = 0, features hidden):
    # the bare prior is otherwise a small corner of the objective, and it is what a
    # brand-new user without a profile is served.
    zero_shot_share: float = 0.0
    # The new-item start (trainer.items): the share of items made cold in each of its
    # episodes, and its training steps at most (after meta-training, the rest frozen).
    cold_item_share: float = 0.2
    item_start_steps: int = 2000

    def __post_init__(self) -> None:
        check_fields(
            self,
            positive=("meta_steps", "users_per_step", "meta_lr", "eval_every", "patience"),
            non_negative=(
                "max_support",
                "item_lr_scale",
                "feature_dropout",
                "zero_shot_share",
                "cold_item_share",
                "item_start_steps",
            ),
        )
        for name in ("feature_dropout", "zero_shot_share", "cold_item_share"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be <= 1, got {getattr(self, name)}")
        if self.users_per_step > MAX_USERS_PER_STEP:
            raise ValueError(
                f"users_per_step must be <= {MAX_USERS_PER_STEP}, got {self.users_per_step}"
            )


@dataclass(frozen=True)
class Query:
    """Query targets of a batch of episodes, one entry per interaction: the loss makes
    (B, I) masks of them only where it scores the whole catalogue."""

    rows: torch.Tensor  # (Nq,) batch row of each query interaction
    items: torch.Tensor  # (Nq,) its item
    weights: torch.Tensor  # (Nq,) 1/|Q| of its row: each row's query weighs 1
    hidden_rows: torch.Tensor  # (Ns,) batch row of each support interaction
    hidden_items: torch.Tensor  # (Ns,) its item, excluded from the row's ranking
    ratings: torch.Tensor | None  # (Nq,) its rating, None for implicit data
    batch: int  # B, the number of episodes


def episode_histories(ctx: Context, batch: np.ndarray, rng: np.random.Generator) -> Sequences:
    """The batch's histories, user b's as group b, in the order its episode reads them.

    Time order is the protocol's and is kept: a new user's first events differ from
    later ones. Without time the protocol's order is one seeded shuffle, and any other
    shuffle is as likely a new user's, so each episode draws its own: a training user
    then gives a fresh support set every time rather than always the same prefix, and
    training over-fits later.
    """
    seqs = ctx.seqs
    groups, flat = positions_after(seqs, batch, np.zeros_like(batch))
    if ctx.data.timestamps is None:
        flat = flat[np.lexsort((rng.random(len(flat)), groups))]
    return Sequences(
        items=seqs.items[flat],
        ratings=None if seqs.ratings is None else seqs.ratings[flat],
        offsets=np.concatenate([[0], np.cumsum(seqs.lengths[batch])]),
    )


def sample_episodes(
    ctx: Context, users: np.ndarray, config: TrainConfig, rng: np.random.Generator
) -> tuple[Support, Query]:
    batch = rng.choice(users, config.users_per_step)
    seqs = episode_histories(ctx, batch, rng)
    rows = np.arange(len(batch))
    ks = np.minimum(rng.integers(0, config.max_support + 1, len(batch)), seqs.lengths - 1)
    features = _episode_features(ctx, batch, config, rng)
    if config.zero_shot_share:  # no draw at 0: the episodes of a run without it stay as they were
        bare = rng.random(len(batch)) < config.zero_shot_share
        ks, features = np.where(bare, 0, ks), features * ~bare[:, None]
    support = support_batch(seqs, rows, ks, features)
    counts = seqs.lengths - ks
    query_rows, flat = positions_after(seqs, rows, ks)
    items = torch.from_numpy(seqs.items[flat])
    rows_t = torch.from_numpy(query_rows)
    weights = torch.from_numpy(1.0 / counts[query_rows]).float()
    hidden_rows, hidden_items = support.events()
    query_ratings = None
    if seqs.ratings is not None:
        query_ratings = torch.from_numpy(seqs.ratings[flat]).float()
    query = Query(rows_t, items, weights, hidden_rows, hidden_items, query_ratings, len(batch))
    return support, query


def _episode_features(
    ctx: Context, batch: np.ndarray, config: TrainConfig, rng: np.random.Generator
) -> np.ndarray:
    """The batch's side-feature codes, all unknown (0) in a feature_dropout share of episodes.
    The service adapts users from their events alone, which carry no side features: a
    start trained only with them is off-centre without them."""
    features = ctx.features[batch]
    if config.feature_dropout:  # no draw at 0: the episodes of a run without it stay as they were
        features = features * (rng.random(len(batch)) >= config.feature_dropout)[:, None]
    return features


def query_loss(
    model: ColdStartModel, users: torch.Tensor, query: Query, tables: ItemTables | None = None
) -> torch.Tensor:
    """Each query item's negative log-probability in a softmax over itself and the items the
    user never touched, averaged per user. A softmax over the whole catalogue puts the
    user's other query items in every denominator: it asks for equal mass on all of them,
    and pushes down a popular query item that belongs at the top. The ranking metrics only
    ask that each query item outrank the untouched ones (sampled softmax drops such
    'accidental hits' for the same reason). `tables` replaces the model's own: those with
    some items started cold."""
    tables = model.item_tables() if tables is None else tables
    sampled = len(model.sample) > 0
    if not sampled:
        loss = _catalogue_loss(users, tables, query)
    else:
        loss = _sampled_loss(users, tables, _negatives(len(tables.bias), len(model.sample)), query)
    weight = model.rule().rating_weight
    if weight and query.ratings is not None:
        if not sampled:
            predicted = ratings(users, tables)[query.rows, query.items]  # (Nq,)
        else:  # no (B, I) product past the sample's size
            predicted = (users[query.rows] * tables.rating_vectors[query.items]).sum(1)
            predicted = predicted + tables.rating_bias[query.items]
        loss = loss + weight * ((predicted - query.ratings) ** 2).mean()
    return loss


def _catalogue_loss(users: torch.Tensor, tables: ItemTables, query: Query) -> torch.Tensor:
    """The query loss against every untouched item of the catalogue."""
    logits = scores(users, tables)  # (B, I)
    weights = torch.zeros_like(logits)
    weights[query.rows, query.items] = query.weights
    hidden = torch.zeros_like(logits, dtype=torch.bool)
    hidden[query.hidden_rows, query.hidden_items] = True
    touched = hidden | (weights > 0)
    untouched = torch.logsumexp(logits.masked_fill(touched, -1e9), dim=1, keepdim=True)
    # -log(e^s / (e^s + e^untouched)) for each query item s; weights are 1/|Q| on those.
    return (weights * F.softplus(untouched - logits)).sum(1).mean()


def _negatives(n_items: int, size: int) -> torch.Tensor:
    """A fresh uniform sample of items for one step's query loss. Unlike the inner step's
    fixed sample, a fixed set here would never push down the items outside it."""
    return torch.randperm(n_items)[:size]


def _sampled_loss(
    users: torch.Tensor, tables: ItemTables, sample: torch.Tensor, query: Query
) -> torch.Tensor:
    """The query loss against a uniform item sample in place of the catalogue, each
    sampled logit raised by log(I / S) (each item's chance to be drawn is S / I): the
    untouched part of each row's softmax is the sample's, less the row's own support
    and query items."""
    sample = sample.to(users.device)
    n_items = len(tables.bias)
    bias = tables.bias[sample] + math.log(n_items / len(sample))
    logits = torch.mm(users, tables.vectors[sample].T).add_(bias)  # (B, S)
    position = torch.full((n_items,), -1, dtype=torch.long, device=users.device)
    position[sample] = torch.arange(len(sample), device=users.device)
    touched = torch.zeros_like(logits, dtype=torch.bool)
    for rows, items in ((query.rows, query.items), (query.hidden_rows, query.hidden_items)):
        at = position[items]
        inside = at >= 0
        touched[rows[inside], at[inside]] = True
    untouched = torch.logsumexp(logits.masked_fill(touched, -1e9), dim=1)  # (B,)
    asked = (users[query.rows] * tables.vectors[query.items]).sum(1) + tables.bias[query.items]
    return (query.weights * F.softplus(untouched[query.rows] - asked)).sum() / query.batch


def build_model(ctx: Context, config: ModelConfig) -> ColdStartModel:
    data = ctx.data
    features = None
    if data.item_features is not None:
        features = torch.from_numpy(data.item_features).float()
    vocab = [len(data.user_vocab[name]) for name in sorted(data.user_features)]
    has_ratings, text_dim = data.ratings is not None, ctx.item_text.shape[1]
    model = ColdStartModel(config, data.n_items, features, vocab, has_ratings, text_dim)
    train = ctx.split.train
    in_train = np.isin(data.users, train)
    counts = np.bincount(data.items[in_train], minlength=data.n_items)
    mean_rating = float(data.ratings[in_train].mean()) if data.ratings is not None else 0.0
    vectors = svd_item_vectors(data, train, config.dim) * config.svd_scale
    model.init_from_data(torch.from_numpy(np.log1p(counts)).float(), mean_rating, vectors)
    model.draw_sample(counts, ctx.seed)
    return model


def svd_item_vectors(data: Dataset, users: np.ndarray, dim: int) -> torch.Tensor:
    """(I, dim) V_d S_d of the training users' interaction matrix with cosine-normalised
    columns: V V^T is then the rank-d item-item cosine similarity that item-kNN ranks by,
    so one inner step from the prior starts out as a low-rank item-kNN. A catalogue (or
    user set) smaller than dim has fewer components; the missing columns start at zero."""
    rows = np.isin(data.users, users)
    matrix = torch.zeros(data.n_users, data.n_items)
    matrix[torch.from_numpy(data.users[rows]), torch.from_numpy(data.items[rows])] = 1.0
    matrix = matrix / matrix.sum(0).clamp(min=1).sqrt()
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(0)  # svd_lowrank's random projection: the same vectors every run
        _, values, right = torch.svd_lowrank(matrix, q=min(dim + 10, *matrix.shape), niter=6)
    vectors = right[:, :dim] * values[:dim]
    return torch.nn.functional.pad(vectors, (0, dim - vectors.shape[1]))


def _optimizer(model: ColdStartModel, config: TrainConfig) -> torch.optim.Optimizer:
    slow = [model.item_embedding, model.feature_projection.weight]  # the item vectors
    rest = [p for p in model.parameters() if all(p is not s for s in slow)]
    groups = [{"params": rest, "lr": config.meta_lr}]
    if config.item_lr_scale:
        groups.append({"params": slow, "lr": config.meta_lr * config.item_lr_scale})
    else:
        for parameter in slow:
            parameter.requires_grad_(False)
    return torch.optim.Adam(groups)


def score_fn(model: ColdStartModel):
    """The model as an evaluation scorer: adapt on the support set, score the catalogue."""
    return lambda support: scores(model.adapt(support), model.item_tables())


def meta_train(
    ctx: Context, model_config: ModelConfig, config: TrainConfig, progress: bool = True
) -> tuple[ColdStartModel, dict]:
    """Returns the best model on validation users and a summary of the run. Training stops
    after meta_steps, or earlier when `patience` validations in a row bring no improvement;
    either way one log line says where and why."""
    require_validation_users(ctx)
    torch.manual_seed(ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    started = time.perf_counter()
    model = build_model(ctx, model_config).to(ctx.device)
    optimizer = _optimizer(model, config)
    users = ctx.training_users()
    best = (validation_ndcg(score_fn(model), ctx), 0, copy.deepcopy(model.state_dict()))
    stale, history = 0, [{"step": 0, "valid_ndcg@20": best[0]}]
    stopped = f"ran all {config.meta_steps} steps"
    with progress_bar(config.meta_steps, "meta-train", progress) as bar:
        for step in range(1, config.meta_steps + 1):
            support, query = sample_episodes(ctx, users, config, rng)
            support, query = support.to(ctx.device), query_to(query, ctx.device)
            loss = query_loss(model, model.adapt(support, config.first_order), query)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update()
            if step % config.eval_every == 0 or step == config.meta_steps:  # the last step too
                ndcg = validation_ndcg(score_fn(model), ctx)
                history.append({"step": step, "loss": loss.item(), "valid_ndcg@20": ndcg})
                if ndcg > best[0]:
                    best, stale = (ndcg, step, copy.deepcopy(model.state_dict())), 0
                else:
                    stale += 1
                shown = {"loss": f"{loss.item():.3f}", "valid_ndcg": f"{ndcg:.4f}"}
                # Drawn at the bar's next timed refresh, so a log file gets no extra lines.
                bar.set_postfix(shown | {"best_step": best[1]}, refresh=False)
                if stale >= config.patience and step < config.meta_steps:
                    stopped = (
                        f"stopped at step {step} of {config.meta_steps}: validation NDCG@20 did "
                        f"not improve for {stale} validations, {config.eval_every} steps apart"
                    )
                    break
    log.info("meta-training %s; best step %d (validation NDCG@20 %.4f)", stopped, best[1], best[0])
    model.load_state_dict(best[2])
    calibration = calibrate_step(model, ctx) if config.calibrate else None
    if calibration:
        log.info(
            "calibrated on validation users: step x%.2f, prior strength x%.2f, "
            "validation NDCG@20 %.4f -> %.4f",
            calibration["step_scale"],
            calibration["prior_scale"],
            calibration["valid_ndcg@20_before"],
            calibration["valid_ndcg@20"],
        )
    seconds = time.perf_counter() - started
    score = score_fn(model)  # and for a user without a profile, for the manifest
    no_profile = validation_ndcg(lambda support: score(support.without_features()), ctx)
    return model, {
        "valid_ndcg@20": calibration["valid_ndcg@20"] if calibration else best[0],
        "valid_ndcg@20_no_profile": no_profile,
        "calibration": calibration,
        "best_step": best[1],
        "steps": step,
        "stopped": stopped,
        "seconds": seconds,
        "tasks_per_s": step * config.users_per_step / seconds,
        "history": history,
    }


# The calibration lattice: step scale 2**(i/2) and prior strength times 2**(j/2), |i|, |j| <= 8.
CALIBRATION_REACH = 8


def calibrate_step(model: ColdStartModel, ctx: Context) -> dict:
    """Rescale the inner step and the prior strength to their validation-best values, in place.

    The meta-objective (query log-likelihood) rewards spreading probability over
    all of a user's later items and so favours long steps; NDCG@20 rewards the
    top of the list, and peaks at a shorter step or a stronger prior. Two numbers
    fix that without retraining: a factor on the preconditioner (added to
    log_inner_lr) and on the prior strength (added to log_prior), hill-climbed on
    a lattice as mf_finetune tunes its own rule. The model is left at the chosen
    point. The zero-shot start (k = 0) is untouched.
    """
    lr, prior = model.log_inner_lr.detach().clone(), model.log_prior.detach().clone()
    half = math.log(2.0) / 2

    def move_to(point: tuple[int, int]) -> None:
        with torch.no_grad():
            model.log_inner_lr.copy_(lr + point[0] * half)
            model.log_prior.copy_(prior + point[1] * half)

    @cache
    def value(point: tuple[int, int]) -> float:
        move_to(point)
        return validation_ndcg(score_fn(model), ctx)

    point = climb(value, (0, 0), CALIBRATION_REACH)
    move_to(point)
    return {
        "step_scale": 2 ** (point[0] / 2),
        "prior_scale": 2 ** (point[1] / 2),
        "valid_ndcg@20_before": value((0, 0)),
        "valid_ndcg@20": value(point),
    }


def query_to(query: Query, device: torch.device) -> Query:
    moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(query).items()}
    return Query(**moved)
