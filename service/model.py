"""The trained model as the service uses it: id maps, batched adaptation, top-k.

The service never re-implements the adaptation: it is the trainer's own
`inner_loop`, started from the model's own initialisation. Scoring is one path,
`top_k`: u . v_i + b_i on numpy views of the same item tables (see
`ServingModel.__init__` for why not torch), for Recommend and for the consumer's
online hit rate alike, over the trained items and those registered while serving
(`service.live_items`); from `Retrieval.index_from` trained items it takes an
approximate index's candidates (`service.retrieval`) and scores those exactly.
Otherwise this module only translates between the raw ids and feature values of the
outside world and the model's tensor indices.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service.catalogue import ItemEntry
from service.errors import HistoryError, InvalidEvent, UnknownFeatureError
from service.events import UNKNOWN_FEATURE, unknown_features
from service.history import History, Interaction, decode_entry
from service.live_items import LiveItems
from service.retrieval import ItemIndex
from service.state import UserRecord
from trainer.adapt import inner_loop
from trainer.artifact import Artifact
from trainer.data import item_columns
from trainer.features import UNKNOWN, describe_reading
from trainer.items import item_step
from trainer.model import ColdStartModel
from trainer.split import Support

# Stored history parts whose interaction each model keeps: parts repeat (a catalogue's items
# times a few ratings), and the cache is bounded since ratings are arbitrary floats.
PART_CACHE = 2**16
# Users re-adapted on read whose vectors each model keeps (about 0.5 KiB each). After a model
# rollout every stored state is stale until the user's next event, and re-adapting one costs
# more than a whole Recommend: a user read again meanwhile is served from here.
READAPTED_CACHE = 2**14
COLD_CACHE = 2**12  # distinct profiles' cold starts kept (the features' value combinations)


@dataclass(frozen=True)
class Retrieval:
    """When and how a top-k uses an approximate index (service.retrieval) rather than
    scoring every item: from `index_from` trained items, probing `probes` of its lists."""

    index_from: int = 100_000
    probes: int = 32


class ServingModel:
    def __init__(self, artifact: Artifact, retrieval: Retrieval | None = None) -> None:
        # Inference only: with no parameter requiring grad, nothing derived from the model
        # (tables, rule, prior, any start) builds an autograd graph or refuses .numpy().
        model = artifact.model.eval().requires_grad_(False)
        self.version = artifact.version
        self.item_ids: list[str] = artifact.item_ids  # the trained catalogue
        self.item_index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.text_encoder: dict = artifact.text_encoder  # {} when item text is not used
        self.text_dim = model.text_dim  # width of the text vectors the item start reads
        self.item_columns = {
            name: j for j, name in enumerate(artifact.manifest["item_feature_names"])
        }
        # The raw item features a registration may give, as the side files name them.
        self.item_feature_names = sorted(
            {"genre" if c.startswith("genre=") else "year" for c in self.item_columns}
        )
        self.warm_after = int(model.item_warm_after)  # item events a new item adapts on
        self.features = artifact.feature_reader  # how a client's raw values read, as in training
        self.feature_names: list[str] = self.features.names
        self.tables = model.item_tables()
        self._scored = model.scored_tables(self.tables)  # None: the step scores every item
        self.rule = model.rule()
        self.prior = model.initial_users(torch.zeros(1, len(self.feature_names), dtype=torch.long))[
            0
        ]
        self._model = model
        # Scoring one user is a handful of small ops. numpy's keep the GIL, where each torch
        # op hands it back and forth between the server's threads, so the read path scores
        # on numpy views of the same tables (shared memory, no copy).
        self._vectors = self.tables.vectors.numpy()
        self._bias = self.tables.bias.numpy()
        self.live = LiveItems.empty(self._vectors, self._bias)  # replaced whole by the catalogue
        retrieval = retrieval or Retrieval()
        self.index = None  # a top-k without an index scores every item
        if len(self.item_ids) >= retrieval.index_from:
            self.index = ItemIndex.for_size(self._vectors, self._bias, retrieval.probes)
        # Bound to the id map, not to self: no reference cycle for a model swap to leave.
        self._interaction = functools.lru_cache(maxsize=PART_CACHE)(
            functools.partial(_read_part, self.item_index)
        )
        self._item_of = functools.lru_cache(maxsize=PART_CACHE)(_item_of)
        # Cold starts by profile codes: a cold Recommend is then numpy only, as a warm one.
        self._cold = functools.lru_cache(maxsize=COLD_CACHE)(functools.partial(_cold_start, model))
        # Keyed by the stored write (user, state version, write time): a new write is a miss.
        self._readapted: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()

    @property
    def inner_sample(self) -> int:
        """Items a user's inner step scores in place of the catalogue; 0: all of them."""
        return 0 if self._scored is None else len(self._scored.bias)

    @property
    def dim(self) -> int:
        return self.prior.shape[0]

    def check_features(self, features: Mapping[str, str]) -> None:
        """An unknown feature name is an error (an unknown value is not: it is code 0)."""
        problem = unknown_features(features, self.feature_names)
        if problem:
            raise UnknownFeatureError(problem)

    def feature_codes(self, profiles: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """(B, F) codes of raw profiles: a value the model does not know is code 0, the
        prior's unknown slot, and so is a name it does not know (a stored profile may hold
        one from another model; requests and events are checked before they get here)."""
        codes = [self.features.codes(profile) for profile in profiles]
        return torch.tensor(codes, dtype=torch.long).reshape(len(profiles), len(self.feature_names))

    def describe_features(self) -> list[tuple[str, list[str], str]]:
        """(name, accepted values, how a raw value is read) of each feature, by name."""
        return [
            (
                name,
                [value for value in self.features.values[name] if value != UNKNOWN],
                describe_reading(self.features.brackets.get(name, ())),
            )
            for name in self.feature_names
        ]

    def features_used(self, profile: Mapping[str, str]) -> list[str]:
        """The profile's features whose values this model knows, sorted."""
        return self.features.known(profile)

    def unknown_values(self, profile: Mapping[str, str]) -> list[str]:
        """The profile's features this model knows by name but not by value."""
        reader = self.features
        return [
            name
            for name, value in sorted(profile.items())
            if value and name in reader.values and not reader.code(name, value)
        ]

    def knows(self, item_id: str) -> bool:
        """Whether the item can be scored: trained, or registered while serving."""
        return item_id in self.item_index or item_id in self.live.index

    def index_of(self, item_id: str, live: LiveItems) -> int | None:
        """The item's combined index under `live` (trained first, then live rows)."""
        index = self.item_index.get(item_id)
        if index is None:
            row = live.index.get(item_id)
            index = None if row is None else len(self.item_ids) + row
        return index

    def item_hot(self, entry: ItemEntry) -> np.ndarray:
        """(F,) the multi-hot features of a registered item; InvalidEvent when it names a
        feature this model does not read (a value it does not know is left out)."""
        unknown = sorted(set(entry.features) - set(self.item_feature_names))
        if unknown:
            raise InvalidEvent(
                UNKNOWN_FEATURE,
                f"unknown item feature {', '.join(unknown[:5])}; this model reads "
                f"{', '.join(self.item_feature_names) or 'none'}",
            )
        hot = np.zeros(len(self.item_columns), np.float32)
        columns = item_columns(entry.features.get("genre", ()), entry.year)
        hot[[self.item_columns[c] for c in columns if c in self.item_columns]] = 1.0
        return hot

    def with_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """The scoring table of live rows (L, d + 1): vectors, biases, and the combined index
        of its first row. Where every top-k scores every item, the trained rows then the
        live ones, scored in one product; with an index, the live rows alone (no copy of
        a large catalogue per change)."""
        if self.index is not None:
            return np.ascontiguousarray(rows[:, :-1]), rows[:, -1].copy(), len(self.item_ids)
        vectors = np.concatenate([self._vectors, rows[:, :-1]])
        return vectors, np.concatenate([self._bias, rows[:, -1]]), 0

    def item_rows(
        self, hot: np.ndarray, text: np.ndarray, pulls: np.ndarray, sums: np.ndarray
    ) -> np.ndarray:
        """(N, d + 1) rows [v, b] of new items: generated from their features (N, F) and
        text vectors (N, T), then stepped towards the users of their first events, given as
        each item's count of them (N,) and the sum of their vectors (N, d). A sum is all the
        item step needs of its users (trainer.items.item_step): one support row per item,
        the users' mean, weighted by their count."""
        with torch.no_grad():
            starts = self._model.item_starts(torch.from_numpy(hot), torch.from_numpy(text))
            if not len(starts) or not pulls.any():
                return starts.numpy()
            count = torch.from_numpy(pulls.astype(np.float32))[:, None]
            mean = torch.from_numpy(sums) / count.clamp(min=1.0)
            support = Support(
                torch.arange(len(starts))[:, None],
                count,
                torch.zeros_like(count),
                torch.zeros_like(count),
                torch.zeros(len(starts), 0, dtype=torch.long),
            )
            rule = self._model.item_rule()
            rows = item_step(starts, support, mean, self._model.reference_users, rule)
            return torch.where(count > 0, rows, starts).numpy()

    def is_current(self, record: UserRecord) -> bool:
        """Whether the record's vector was adapted under this model and can be scored as
        stored; any other state is re-adapted from its history."""
        return record.model_version == self.version and record.vector.shape == (self.dim,)

    def vector(self, record: UserRecord, interactions: Sequence[Interaction]) -> np.ndarray:
        """The user's vector under this model: as stored when current, else re-adapted from
        `interactions` (their history's), and kept for the user's next read."""
        if self.is_current(record):
            return record.vector
        key = (record.user_id, record.state_version, record.updated_at_ms)
        vector = self._readapted.get(key)
        if vector is None:
            vector = self.adapt([interactions], [record.profile])[0].numpy()
            self._readapted[key] = vector
            if len(self._readapted) > READAPTED_CACHE:
                self._readapted.popitem(last=False)  # the oldest; one C call, safe across threads
        return vector

    def interactions(self, history: History) -> list[Interaction]:
        """The history as this model's interactions: each item once, at its first event, as
        training reads a history (trainer.data); items the model does not know are skipped.
        A view then a click on one item must not pull the user twice as far towards it as
        the model learned. HistoryError when a stored entry is unreadable."""
        return self.read(history)[0]

    def read(self, history: History) -> tuple[list[Interaction], list[str]]:
        """The history's interactions (as `interactions`), and in one pass its parts that
        name items the trained catalogue lacks: registered items, or none at all."""
        first: dict[int, Interaction] = {}
        untrained = []
        for part in history.parts:
            interaction = self._interaction(part)
            if interaction is None:
                untrained.append(part)
            else:
                first.setdefault(interaction[0], interaction)
        return list(first.values()), untrained

    def seen(self, history: History, live: LiveItems | None = None) -> list[int] | None:
        """The combined indices of the history's items this model scores (trained, and
        registered under `live`, the current live items when None); None when an entry is
        unreadable (then the user has no usable state: Recommend answers DEGRADED)."""
        try:
            interactions, untrained = self.read(history)
        except HistoryError:
            return None
        return item_indices(interactions) + self.live_seen(untrained, live)

    def live_seen(self, parts: Sequence[str], live: LiveItems | None) -> list[int]:
        """The combined indices under `live` (the current live items when None) of the
        items `parts` name that are registered (parts as `read` gives them)."""
        live = self.live if live is None else live
        if not parts or not live:
            return []
        size, index = len(self.item_ids), live.index
        return [size + index[item] for item in map(self._item_of, parts) if item in index]

    def cold_vector(self, profile: Mapping[str, str]) -> np.ndarray:
        """(d,) the vector of a user with no history: the prior their profile conditions.
        Shared between calls: not to be written to."""
        return self._cold(tuple(self.features.codes(profile)))

    def _starts(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct initial vectors (U, d) of (B, F) codes, and each user's row (B,):
        users with one profile share a start, and inner_loop's first step scores the
        catalogue once per distinct start (once in all when no user has a profile)."""
        if codes.shape[1] == 0:  # a model without user features: one start for everyone
            distinct, start_of = codes[:1], torch.zeros(len(codes), dtype=torch.long)
        else:
            distinct, start_of = torch.unique(codes, dim=0, return_inverse=True)
        with torch.no_grad():
            return self._model.initial_users(distinct), start_of

    def adapt(
        self,
        histories: Sequence[Sequence[Interaction]],
        profiles: Sequence[Mapping[str, str]] | None = None,  # None: no user has one
    ) -> torch.Tensor:
        """Re-adapts every user from the prior their profile conditions on their whole
        history, in one batched call: (B, d). Starting from the initialisation each time
        (not from the stored vector) makes the result a function of the history and the
        profile alone, so replays and restarts agree."""
        lengths = np.array([len(h) for h in histories], dtype=np.intp)
        mask = np.arange(max(lengths.max(initial=0), 1)) < lengths[:, None]  # (B, S)
        flat = [event for history in histories for event in history]
        items = np.zeros(mask.shape, np.int64)
        items[mask] = [item for item, _ in flat]
        given = [rating for _, rating in flat]
        rated = np.zeros(mask.shape, np.float32)
        rated[mask] = [rating is not None for rating in given]
        ratings = np.zeros(mask.shape, np.float32)
        ratings[mask] = [rating or 0.0 for rating in given]
        codes = self.feature_codes(profiles or [{}] * len(histories))
        support = Support(
            *(torch.from_numpy(a) for a in (items, mask.astype(np.float32), ratings, rated)),
            codes,
        )
        starts, start_of = self._starts(codes)
        with torch.no_grad():
            if self._scored is None:
                return inner_loop(starts, self.tables, support, self.rule, start_of=start_of)
            return inner_loop(
                starts, self._scored, support, self.rule, start_of=start_of, pulls=self.tables
            )

    def scores(self, vector: np.ndarray, live: LiveItems | None = None) -> np.ndarray:
        """(d,) -> (I + L,) float32 scores over the trained catalogue, then the live rows
        (the model's current ones when `live` is None)."""
        live = self.live if live is None else live
        vector = np.asarray(vector, dtype=np.float32)
        scores = live.vectors @ vector
        scores += live.bias
        if live.first:  # the table holds the live rows alone
            scores = np.concatenate([self._vectors @ vector + self._bias, scores])
        return scores

    def _rows(self, indices: np.ndarray, live: LiveItems) -> tuple[np.ndarray, np.ndarray]:
        """The vectors and biases of items by combined index under `live`."""
        if not live.first:
            return live.vectors[indices], live.bias[indices]
        trained = indices < live.first
        vectors = np.empty((len(indices), self.dim), np.float32)
        bias = np.empty(len(indices), np.float32)
        vectors[trained], bias[trained] = (
            self._vectors[indices[trained]],
            self._bias[indices[trained]],
        )
        rows = indices[~trained] - live.first
        vectors[~trained], bias[~trained] = live.vectors[rows], live.bias[rows]
        return vectors, bias

    def top_k(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[int] = (),
        candidates: Sequence[int] | None = None,
        live: LiveItems | None = None,
    ) -> list[tuple[str, float]]:
        """The k best available items, excluding `exclude`, among `candidates` when given:
        combined indices under `live` (the model's current live items when None)."""
        live = self.live if live is None else live
        if self.index is not None and candidates is None:
            return self._indexed_top_k(vector, k, exclude, live)
        scores = self.scores(vector, live)
        if candidates is not None:
            allowed = np.full_like(scores, -np.inf)
            index = np.asarray(candidates, dtype=np.intp)
            allowed[index] = scores[index]
            scores = allowed
        if exclude:
            scores[np.asarray(exclude, dtype=np.intp)] = -np.inf
        if len(live.hidden):
            scores[live.hidden] = -np.inf
        best = torch.from_numpy(scores).topk(min(k, scores.shape[0]))  # faster than argpartition
        return [
            (self._item_id(i, live), s)
            for i, s in zip(best.indices.tolist(), best.values.tolist(), strict=True)
            if s != -np.inf
        ]

    def _indexed_top_k(
        self, vector: np.ndarray, k: int, exclude: Sequence[int], live: LiveItems
    ) -> list[tuple[str, float]]:
        """top_k through the index: its candidates among the trained items, every live row,
        each re-scored exactly; blocked items (excluded, retired) filtered exactly, the
        search fetching as many more as there are blocked items."""
        assert self.index is not None
        size = len(self.item_ids)
        blocked = live.hidden_set.union(exclude)
        found = self.index.search(vector, k + len(blocked)).tolist() + list(
            range(size, size + len(live))
        )
        pool = np.array([i for i in found if i not in blocked], dtype=np.intp)
        vectors, bias = self._rows(pool, live)
        scores = vectors @ np.asarray(vector, dtype=np.float32) + bias
        best = np.argsort(-scores, kind="stable")[:k]
        return [
            (self._item_id(i, live), s)
            for i, s in zip(pool[best].tolist(), scores[best].tolist(), strict=True)
        ]

    def _item_id(self, index: int, live: LiveItems) -> str:
        """The id of a combined index under `live`."""
        size = len(self.item_ids)
        return self.item_ids[index] if index < size else live.ids[index - size]


def _cold_start(model: ColdStartModel, codes: tuple[int, ...]) -> np.ndarray:
    with torch.no_grad():
        return model.initial_users(torch.tensor([codes], dtype=torch.long))[0].numpy()


def _read_part(item_index: Mapping[str, int], part: str) -> Interaction | None:
    """A stored history part as an interaction in the catalogue of `item_index`, or None
    for an item it does not hold."""
    item_id, rating = decode_entry(part)
    index = item_index.get(item_id)
    return None if index is None else (index, rating)


def _item_of(part: str) -> str:
    return decode_entry(part)[0]


def item_indices(interactions: Sequence[Interaction]) -> list[int]:
    return [item for item, _ in interactions]
