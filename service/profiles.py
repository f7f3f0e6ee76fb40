"""UpsertUser as a domain call: a user's profile merged into their stored state, and their
vector re-adapted from the prior it conditions.

The write is the consumer's compare-and-set: the new record carries the next state
version, so a profile update and an event batch applied at the same time by two replicas
cannot both win; the loser reads the user again and retries, and neither change is lost.
The history and the applied-offset watermarks are kept as stored, so no event is applied
twice or dropped. The vector is a function of history and profile alone, as the
consumer's: an upsert repeated, or raced, ends in the same state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import ConflictError, HistoryError, InvalidRequest, StoreError
from service.history import History
from service.metrics import Metrics
from service.model import ServingModel
from service.requests import check_profile, check_user_id
from service.state import StateStore, UserRecord, merge_profile, now_ms

logger = logging.getLogger(__name__)

MAX_CONFLICTS = 3  # compare-and-set retries before the call fails


@dataclass(frozen=True)
class ProfileUpdate:
    profile: Mapping[str, str]  # the whole stored profile, raw values
    features_used: list[str]  # its features whose values the model knows, sorted
    state_version: int  # of the record written


class ProfileWriter:
    """Stores profiles; `model` may be replaced while serving, as the Recommender's."""

    def __init__(self, model: ServingModel, store: StateStore, metrics: Metrics) -> None:
        self.model = model
        self.store = store
        self.metrics = metrics

    def upsert(self, user_id: str, features: Mapping[str, str]) -> ProfileUpdate:
        model = self.model
        check_user_id(user_id)
        if not features:
            raise InvalidRequest("features is empty: give at least one feature to set")
        check_profile(features, model)
        for _ in range(MAX_CONFLICTS + 1):
            record = self._next(model, self.store.get(user_id), user_id, features)
            if self.store.put_many([record]):
                for name in model.unknown_values(record.profile):
                    self.metrics.on_unknown_feature_value(name)
                used = model.features_used(record.profile)
                return ProfileUpdate(record.profile, used, record.state_version)
            logger.info("user %r changed while their profile was written; reading again", user_id)
        raise ConflictError(f"user {user_id!r} kept changing; retry the call")

    def _next(
        self,
        model: ServingModel,
        stored: UserRecord | None,
        user_id: str,
        features: Mapping[str, str],
    ) -> UserRecord:
        """The stored record with the merged profile, re-adapted; raises StoreError for a
        record that cannot be read (its history would be lost by overwriting it)."""
        history = stored.history if stored else History()
        profile = merge_profile(stored.profile if stored else {}, features)
        try:
            interactions = model.interactions(history)
        except HistoryError as error:
            raise StoreError.of(user_id, error) from None
        vector = model.adapt([interactions], [profile])[0].numpy()
        return UserRecord(
            user_id=user_id,
            vector=vector,
            history=history,
            model_version=model.version,
            state_version=(stored.state_version if stored else 0) + 1,
            watermarks=dict(stored.watermarks) if stored else {},
            updated_at_ms=now_ms(),
            profile=profile,
        )
