"""Recommend and GetUserState as domain calls: plain values in, plain values out.

A Recommend reads the user's state (one Redis round trip through `service.store`) and
scores it with the serving model (one matrix-vector product and a top-k). It never fails
because Redis does: the user is scored from the meta-learned prior and the answer says
`degraded`. A state adapted under an older model is re-adapted from its stored history on
read (the consumer rewrites it on the user's next event), so a deploy loses no
personalisation. Errors are `service.errors`' (and the model's); `service.servicer`
turns them into gRPC statuses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service.errors import HistoryError, InvalidRequest, StoreError, StoreUnavailable
from service.live_items import LiveItems
from service.metrics import Metrics
from service.model import ServingModel, item_indices
from service.requests import check_profile, check_user_id
from service.state import StateStore, UserRecord, now_ms

logger = logging.getLogger(__name__)

MAX_K = 1000  # items per Recommend
DEFAULT_K = 10  # items when a request leaves k unset (proto3 sends 0)
MAX_CANDIDATES = 10_000  # candidate_item_ids per Recommend
NEW_ITEM_MS = 86_400_000  # an item registered less than a day ago is new (exposure metric)


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    k: int
    include_seen: bool = False
    features: Mapping[str, str] = field(default_factory=dict)
    candidates: Sequence[str] = ()


@dataclass(frozen=True)
class Recommendation:
    items: list[tuple[str, float]]  # (item id, score), best first
    model_version: str
    state: str  # "cold", "adapted" or "degraded"
    interactions_used: int = 0
    state_version: int = 0
    features_used: list[str] = field(default_factory=list)  # known profile features, sorted


@dataclass(frozen=True)
class UserSummary:
    user_id: str
    state: str  # "cold", "adapted" or "degraded"
    history_length: int = 0
    state_version: int = 0
    model_version: str = ""
    updated_at_ms: int = 0
    profile: Mapping[str, str] = field(default_factory=dict)


class ThrottledWarning:
    """At most one warning line per interval, counting those held back. During a Redis
    outage every Recommend degrades: a line each would flood the log, and the metrics
    already count every one."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._next = 0.0  # time.monotonic() from which the next line may be written
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                return
            held, self._held, self._next = self._held, 0, now + self.interval_s
        if held:
            message += f" ({held} more such answers since the last line)"
        logger.warning(message, *args)


class Recommender:
    """Top-k for a user from their stored state, the prior, or (Redis down) the prior.

    `model` may be replaced while serving (service.reload); each call reads it once, so
    one answer never mixes two models."""

    def __init__(self, model: ServingModel, store: StateStore, metrics: Metrics) -> None:
        self.model = model
        self.store = store
        self.metrics = metrics
        self._warn_degraded = ThrottledWarning(interval_s=10.0)

    def recommend(self, query: RecommendQuery) -> Recommendation:
        model = self.model
        live = model.live  # one catalogue for the whole answer
        candidates = self._check(query, model, live)
        k = query.k or DEFAULT_K
        record, state = self._read(query.user_id)
        if record is not None and record.history:
            try:
                answer = self._personal(query, k, model, live, record, candidates)
                self._count_new(answer.items, live)
                return answer
            except HistoryError as error:  # one user's history is unreadable: the others are fine
                self._warn_degraded("user %r: answering from the prior: %s", query.user_id, error)
                state = "degraded"
        # A stored profile is the user's own; a request's features stand in for a user the
        # service holds no profile the model can read.
        profile = record.profile if record is not None else {}
        used = model.features_used(profile)
        if not used:
            profile = query.features
            used = model.features_used(profile)
        self._count_unknown(model, profile)
        items = model.top_k(model.cold_vector(profile), k, candidates=candidates, live=live)
        self._count_new(items, live)
        self.metrics.on_response(state)
        version = record.state_version if record is not None and state == "cold" else 0
        return Recommendation(items, model.version, state, 0, version, used)

    def user_state(self, user_id: str) -> UserSummary:
        check_user_id(user_id)
        record, state = self._read(user_id)
        if record is None:
            return UserSummary(user_id, state)
        if self.model.seen(record.history) is None:
            kind = "degraded"
        else:
            kind = "adapted" if record.history else "cold"
        return UserSummary(
            user_id,
            kind,
            len(record.history),
            record.state_version,
            record.model_version,
            record.updated_at_ms,
            record.profile,
        )

    def _personal(
        self,
        query: RecommendQuery,
        k: int,
        model: ServingModel,
        live: LiveItems,
        record: UserRecord,
        candidates: list[int] | None,
    ) -> Recommendation:
        interactions, untrained = model.read(record.history)
        vector, known = model.vector(record, interactions), item_indices(interactions)
        seen = () if query.include_seen else known + model.live_seen(untrained, live)
        items = model.top_k(vector, k, exclude=seen, candidates=candidates, live=live)
        self.metrics.on_response("adapted")
        used = model.features_used(record.profile)
        return Recommendation(
            items, model.version, "adapted", len(known), record.state_version, used
        )

    def _count_new(self, items: list[tuple[str, float]], live: LiveItems) -> None:
        """Counts the answer's slots, and those going to items registered within a day."""
        new = 0
        if len(live):
            young = now_ms() - NEW_ITEM_MS
            rows = [live.index.get(item_id) for item_id, _ in items]
            new = sum(1 for row in rows if row is not None and live.registered_ms[row] > young)
        self.metrics.on_recommended(len(items), new)

    def _count_unknown(self, model: ServingModel, profile: Mapping[str, str]) -> None:
        for name in model.unknown_values(profile):
            self.metrics.on_unknown_feature_value(name)

    def _check(
        self, query: RecommendQuery, model: ServingModel, live: LiveItems
    ) -> list[int] | None:
        """Validates the request; the candidates' item indices, None when unrestricted."""
        check_user_id(query.user_id)
        if not 0 <= query.k <= MAX_K:
            raise InvalidRequest(
                f"k must be between 1 and {MAX_K} (or 0 for {DEFAULT_K}), got {query.k}"
            )
        check_profile(query.features, model)
        if not query.candidates:
            return None
        if len(query.candidates) > MAX_CANDIDATES:
            raise InvalidRequest(
                f"candidate_item_ids has {len(query.candidates)} ids, "
                f"more than the limit of {MAX_CANDIDATES}"
            )
        # Ids the model does not know are left out, as the API promises: a catalogue grows
        # between model versions, and a client's new items must not fail its requests.
        found = (model.index_of(item, live) for item in query.candidates)
        return [index for index in found if index is not None]

    def _read(self, user_id: str) -> tuple[UserRecord | None, str]:
        """The stored record (one Redis round trip) and the state kind when there is none."""
        try:
            record = self.store.get(user_id)
        except StoreUnavailable as error:
            self.metrics.on_redis_error()
            self._warn_degraded("Redis unavailable, answering from the prior: %s", error)
            return None, "degraded"
        except StoreError as error:  # one user's record is unreadable: the others are fine
            self._warn_degraded("answering from the prior: %s", error)
            return None, "degraded"
        return record, "cold"
