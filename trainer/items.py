"""New items: a start from what is known of them, then a few steps on their first users.

An item the model has not trained on gets its row [v, b] (vector and bias) from the
item-start network, a function of its features and its text. The network is trained
after meta-training, with the rest of the model frozen, as MetaEmb trains its
generator: in each episode a share of the items is made cold (their trained rows
replaced by generated ones) and the generator learns to rank them as the query asks.
The warm model, and with it every user-protocol number, is left exactly as it was.

An item's first interactions then move it with the users' own inner step
(trainer.adapt.inner_loop) in the item role: the item is pulled towards its support
users [u, 1] and scored against a fixed set of reference users (training users'
vectors, kept in the model, so the online step is the same on every replica), plus
an outside option of the same mass: while the item is unknown to most users the
outside option holds most of the probability, and each interaction raises the bias.
The step's two rates and its prior strength, and after how many interactions an item
stops adapting, are chosen on validation items (calibrate_item_step).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from trainer.adapt import InnerRule, ItemTables, inner_loop
from trainer.data import Dataset
from trainer.episodes import Context, batches
from trainer.lattice import climb
from trainer.metrics import recall_ndcg, top_k
from trainer.model import ColdStartModel
from trainer.split import Sequences, Support, support_batch, unit_hash
from trainer.train import Query, TrainConfig, query_loss, query_to, sample_episodes

log = logging.getLogger(__name__)

CUTOFF = 20
# Counts of interactions an item may adapt on before it waits for training to fold it in.
WARM_AFTER_CHOICES = (1, 3, 5, 10, 20, 50)
LATTICE_REACH = 8  # the step's lattice: rates and prior times 2**(i/2), |i| <= this


@dataclass(frozen=True)
class ColdItems:
    """Items to start cold, and the users who interacted with each, in protocol order."""

    features: torch.Tensor  # (N, F) multi-hot item features
    text: torch.Tensor  # (N, T) text vectors, zeros where none
    users: list[np.ndarray]  # item n's users (rows of the user table), first first

    def support(self, n: int) -> Support:
        """Each item's first n users (fewer if it has fewer), as padded support sets."""
        lengths = np.array([len(u) for u in self.users], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        # One trailing pad: the gather needs a row even when no item has a user.
        flat = np.concatenate([*self.users, [0]]).astype(np.int64)
        seqs = Sequences(items=flat, ratings=None, offsets=offsets)
        rows = np.arange(len(self.users))
        none = np.zeros((len(rows), 0), dtype=np.int64)
        return support_batch(seqs, rows, np.minimum(lengths, n), none)


def cold_items(
    data: Dataset, items: np.ndarray, seed: int, text: torch.Tensor, min_users: int = 0
) -> tuple[ColdItems, np.ndarray]:
    """The items (those with at least min_users interactions) and each one's users in
    protocol order; and the indices of the items kept."""
    when = data.timestamps
    if when is None:
        when = np.random.default_rng(seed).permutation(len(data.items))
    order = np.lexsort((np.arange(len(data.items)), when, data.items))
    sorted_items = data.items[order]
    bounds = np.searchsorted(sorted_items, [items, items + 1])
    users = [data.users[order[a:b]] for a, b in zip(*bounds, strict=True)]
    kept = np.array([i for i, u in enumerate(users) if len(u) >= min_users], dtype=np.int64)
    features = _features_of(data)
    chosen = items[kept]
    cold = ColdItems(
        features=torch.from_numpy(features[chosen]).float(),
        text=text[torch.from_numpy(chosen)],
        users=[users[i] for i in kept],
    )
    return cold, chosen


def user_rows(model: ColdStartModel, ctx: Context, users: np.ndarray) -> torch.Tensor:
    """(U, d) each user's vector adapted on everything they did (their whole history)."""
    out = []
    with torch.no_grad():
        for _, _, support in batches(ctx, users, ctx.seqs.lengths[users]):
            out.append(model.adapt(support))
    return torch.cat(out) if out else torch.zeros(0, model.config.dim)


def item_step(
    starts: torch.Tensor,  # (N, d + 1) rows [v, b]
    support: Support,  # each item's support users, as rows of `users`
    users: torch.Tensor,  # (U, d) user vectors
    reference: torch.Tensor,  # (R, d) the users every item is scored against
    rule: InnerRule,  # over d + 1 dimensions
) -> torch.Tensor:
    """(N, d + 1) adapted rows: the user inner step in the item role."""
    d = users.shape[1]
    one = users.new_ones(1)
    rows = torch.cat(
        [torch.cat([reference, one.expand(len(reference), 1)], 1), users.new_zeros(1, d + 1)]
    )
    bias = torch.cat([users.new_zeros(len(reference)), one * math.log(max(len(reference), 1))])
    scored = ItemTables(rows, bias, rows, bias)
    pulled = torch.cat([users, one.expand(len(users), 1)], 1)
    pulls = ItemTables(pulled, users.new_zeros(len(users)), pulled, users.new_zeros(len(users)))
    return inner_loop(starts, scored, support, rule, pulls=pulls)


def cold_rows(
    model: ColdStartModel,
    cold: ColdItems,
    n: int,
    users: torch.Tensor,
    warm_after: int | None = None,
) -> torch.Tensor:
    """(N, d + 1) the items' rows after n interactions: generated, then stepped on at most
    warm_after (the model's own when None) of them."""
    with torch.no_grad():
        device = model.reference_users.device
        starts = model.item_starts(cold.features.to(device), cold.text.to(device))
        cap = int(model.item_warm_after) if warm_after is None else warm_after
        if min(n, cap) == 0:
            return starts
        support = cold.support(min(n, cap)).to(starts.device)
        return item_step(starts, support, users, model.reference_users, model.item_rule())


def row_scores(users: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(U, d) users, (N, d + 1) item rows -> (U, N) scores u . v + b."""
    return torch.mm(users, rows[:, :-1].T).add_(rows[:, -1])


def item_queries(
    cold: ColdItems, n: int, n_rows: int, users: np.ndarray
) -> tuple[list[np.ndarray], torch.Tensor]:
    """Per scores row: the cold items it is a query user of, and a (rows, N) mask of those
    it is a support user of."""
    row_of = {int(u): r for r, u in enumerate(users)}
    relevant: list[list[int]] = [[] for _ in range(n_rows)]
    hidden = torch.zeros(n_rows, len(cold.users), dtype=torch.bool)
    for item, item_users in enumerate(cold.users):
        for position, user in enumerate(item_users):
            row = row_of.get(int(user))
            if row is None:
                continue
            if position < n:
                hidden[row, item] = True
            else:
                relevant[row].append(item)
    return [np.array(r, dtype=np.int64) for r in relevant], hidden


def train_item_start(
    model: ColdStartModel,
    ctx: Context,
    config: TrainConfig,
    held_out: np.ndarray | None = None,
) -> dict:
    """Fit the item-start network on cold-item episodes, the rest of the model frozen; keeps
    the state with the lowest loss on a fixed set of validation episodes. Items in
    `held_out` are never made cold: the step is calibrated on them as items the network
    has not learned."""
    model.requires_grad_(False)
    model.item_start.requires_grad_(True)
    optimiser = torch.optim.Adam(model.item_start.parameters(), lr=config.meta_lr)
    rng = np.random.default_rng(ctx.seed + 1)  # the main run's stream is its own
    generator = torch.Generator().manual_seed(ctx.seed + 1)
    allowed = torch.ones(ctx.data.n_items, dtype=torch.bool)
    if held_out is not None:
        allowed[torch.from_numpy(held_out)] = False
    valid = _cold_episode(ctx, ctx.validation_users(), config, rng, generator, allowed)
    features = model.item_features
    best = (math.inf, 0, copy.deepcopy(model.item_start.state_dict()))
    stale, step = 0, 0
    for step in range(1, config.item_start_steps + 1):
        episode = _cold_episode(ctx, ctx.training_users(), config, rng, generator, allowed)
        loss = _cold_loss(model, episode, features, ctx.item_text)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % config.eval_every == 0:
            with torch.no_grad():
                held = _cold_loss(model, valid, features, ctx.item_text).item()
            if held < best[0]:
                best, stale = (held, step, copy.deepcopy(model.item_start.state_dict())), 0
            else:
                stale += 1
            if stale >= config.patience:
                break
    model.item_start.load_state_dict(best[2])
    model.requires_grad_(True)
    log.info(
        "item start: best step %d of %d (validation cold-item loss %.4f)", best[1], step, best[0]
    )
    return {"best_step": best[1], "steps": step, "valid_loss": best[0]}


# A batch of episodes, and which items it makes cold.
ColdEpisode = tuple[Support, Query, torch.Tensor]


def _cold_episode(
    ctx: Context,
    users: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    allowed: torch.Tensor,  # (I,) bool: the items that may be made cold
) -> ColdEpisode:
    support, query = sample_episodes(ctx, users, config, rng)
    support = support.to(ctx.device)
    cold = (torch.rand(ctx.data.n_items, generator=generator) < config.cold_item_share) & allowed
    return support, query_to(query, ctx.device), cold.to(ctx.device)


def _cold_loss(
    model: ColdStartModel, episode: ColdEpisode, features: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    support, query, cold = episode
    with torch.no_grad():
        users = model.adapt(support)
        tables = model.item_tables()
    rows = model.item_starts(features[cold], text[cold])
    vectors = tables.vectors.clone()
    bias = tables.bias.clone()
    vectors[cold] = rows[:, :-1]
    bias[cold] = rows[:, -1]
    cold_tables = ItemTables(vectors, bias, tables.rating_vectors, tables.rating_bias)
    return query_loss(model, users, query, cold_tables)


def set_reference_users(model: ColdStartModel, ctx: Context) -> None:
    """A seeded sample of training users, adapted on their histories: the population a new
    item's step scores it against."""
    users = ctx.training_users()
    size = model.config.reference_users
    pick = np.random.default_rng(ctx.seed + 2).choice(users, size, replace=len(users) < size)
    with torch.no_grad():
        model.reference_users.copy_(user_rows(model, ctx, pick))


class ColdNdcg:
    """Mean NDCG@20 of ranking some (validation) cold items over support sizes, for
    rows given per size: what the item side is tuned on. `users` (U, d) holds every user's
    vector, indexed as cold.users."""

    def __init__(self, cold: ColdItems, users: torch.Tensor, sizes: list[int]) -> None:
        self.sizes = list(sizes)
        ranked = np.unique(np.concatenate(cold.users)) if cold.users else np.zeros(0, np.int64)
        self.queries = {n: item_queries(cold, n, len(ranked), ranked) for n in self.sizes}
        self.rows = users[torch.from_numpy(ranked)]

    def __call__(self, rows_at: Callable[[int], torch.Tensor]) -> float:
        values = []
        for n in self.sizes:
            relevant, hidden = self.queries[n]
            values.append(_ranking_ndcg(row_scores(self.rows, rows_at(n)), relevant, hidden))
        return float(np.mean(values))


def calibrate_item_step(
    model: ColdStartModel, cold: ColdItems, users: torch.Tensor, sizes: list[int]
) -> dict:
    """Choose the item step's vector rate, bias rate and prior strength, then after how
    many interactions an item stops adapting, by mean cold-item NDCG@20 of these
    validation items over the support sizes >= 1. The two rates are apart because the
    start's bias (a popularity read from the item's features and text) and its vector
    are worth keeping to different degrees."""
    judge = ColdNdcg(cold, users, [n for n in sizes if n >= 1])
    rate, prior = model.log_item_rate.detach().clone(), model.log_item_prior.detach().clone()
    half = math.log(2.0) / 2

    def ndcg(cap: int) -> float:
        return judge(lambda n: cold_rows(model, cold, n, users, warm_after=cap))

    def move_to(point: tuple[int, int, int]) -> None:
        with torch.no_grad():
            model.log_item_rate.copy_(rate + torch.tensor(point[:2]) * half)
            model.log_item_prior.copy_(prior + point[2] * half)

    @cache
    def value(point: tuple[int, int, int]) -> float:
        move_to(point)
        return ndcg(max(WARM_AFTER_CHOICES))

    point = climb(value, (0, 0, 0), LATTICE_REACH)
    move_to(point)
    by_cap = {cap: ndcg(cap) for cap in WARM_AFTER_CHOICES}
    warm_after = max(by_cap, key=lambda cap: (by_cap[cap], -cap))  # ties: the fewer steps
    model.item_warm_after.fill_(warm_after)
    scales = [2 ** (p / 2) for p in point]
    log.info(
        "item step calibrated on %d validation items: vector rate x%.2f, bias rate x%.2f, "
        "prior x%.2f, adapts on the first %d interactions (validation cold-item NDCG@20 %.4f)",
        len(cold.users),
        *scales,
        warm_after,
        by_cap[warm_after],
    )
    return {
        "vector_rate_scale": scales[0],
        "bias_rate_scale": scales[1],
        "prior_scale": scales[2],
        "warm_after": warm_after,
        "valid_cold_ndcg@20_by_warm_after": {str(c): v for c, v in by_cap.items()},
    }


def _ranking_ndcg(scores: torch.Tensor, relevant: list[np.ndarray], hidden: torch.Tensor) -> float:
    keep = np.flatnonzero([len(r) > 0 for r in relevant])
    if not len(keep):
        return 0.0
    masked = scores[keep].clone()
    masked[hidden[keep]] = -torch.inf
    ranked = top_k(masked, CUTOFF)
    return float(recall_ndcg(ranked, [relevant[r] for r in keep], CUTOFF)[1].mean())


def add_unseen_items(
    model: ColdStartModel, features: torch.Tensor, text: torch.Tensor
) -> ColdStartModel:
    """The model with these never-seen items appended to its catalogue, each at its
    generated start: items of the side files that no interaction names are recommendable
    from the first request. Their rating rows sit at the catalogue's mean."""
    if not len(features):
        return model
    with torch.no_grad():
        rows = model.item_starts(features, text)
        width = model.item_features.shape[1]
        hot = features[:, :width]
        grown = ColdStartModel(
            model.config,
            model.item_bias.shape[0] + len(rows),
            torch.cat([model.item_features, hot]) if width else None,
            [len(t.weight) for t in model.user_feature_embeddings],
            model.has_ratings,
            model.text_dim,
        )
        state = model.state_dict()
        own = rows[:, :-1] - model.feature_projection(hot)  # the projection is added back
        state["item_embedding"] = torch.cat([model.item_embedding, own])
        state["item_bias"] = torch.cat([model.item_bias, rows[:, -1]])
        mean_rating = model.rating_bias.mean().expand(len(rows))
        state["rating_embedding"] = torch.cat(
            [model.rating_embedding, torch.zeros(len(rows), model.config.dim)]
        )
        state["rating_bias"] = torch.cat([model.rating_bias, mean_rating])
        state["item_features"] = grown.item_features
        if len(grown.sample) != len(model.sample):  # the new items took it past the size
            popularity = torch.cat([model.item_bias, rows[:, -1]]).exp().numpy()
            grown.draw_sample(popularity, seed=0)
            state["sample"], state["sample_correction"] = grown.sample, grown.sample_correction
        grown.load_state_dict(state)
    return grown


HELD_OUT_SHARE = 0.2  # of the items, the step is calibrated on when no cold items are given


def fit_item_side(model: ColdStartModel, ctx: Context, config: TrainConfig) -> dict:
    """The item side of a model trained on all items (`coldstart train`): the start network,
    the reference users, and the step calibrated on a seeded share of the items held out
    of the network's training, as validation users met them (their vectors adapted
    without those items)."""
    data = ctx.data
    position = np.array([unit_hash(ctx.seed, f"item:{raw}") for raw in data.item_ids])
    held = np.flatnonzero(position < HELD_OUT_SHARE)
    start = train_item_start(model, ctx, config, held)
    set_reference_users(model, ctx)
    valid = ctx.split.valid
    mine = np.isin(data.users, valid)
    met = dataclasses.replace(
        data,
        users=data.users[mine],
        items=data.items[mine],
        timestamps=None if data.timestamps is None else data.timestamps[mine],
    )
    cold, _ = cold_items(met, held, ctx.seed, ctx.item_text.cpu(), min_users=2)
    without = dataclasses.replace(ctx, seqs=_without_items(ctx.seqs, held, data.n_items))
    users = torch.zeros(data.n_users, model.config.dim, device=model.reference_users.device)
    users[torch.from_numpy(valid)] = user_rows(model, without, valid)
    step = calibrate_item_step(model, cold, users, ctx.support_sizes)
    return {"item_start": start, "item_step": step, "held_out_items": len(held)}


def _features_of(data: Dataset) -> np.ndarray:
    if data.item_features is None:
        return np.zeros((data.n_items, 0), dtype=np.float32)
    return data.item_features


def _without_items(seqs: Sequences, items: np.ndarray, n_items: int) -> Sequences:
    """The sequences with these items' interactions dropped, order kept."""
    drop = np.zeros(n_items, dtype=bool)
    drop[items] = True
    keep = ~drop[seqs.items]
    owner = np.repeat(np.arange(len(seqs.lengths)), seqs.lengths)
    counts = np.bincount(owner[keep], minlength=len(seqs.lengths))
    return Sequences(
        items=seqs.items[keep],
        ratings=None if seqs.ratings is None else seqs.ratings[keep],
        offsets=np.concatenate([[0], np.cumsum(counts)]),
    )
