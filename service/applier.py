"""Applies a micro-batch of valid events to user state, exactly once (no Kafka in here).

Why it is built this way (DESIGN.md, Events and the stream):
- Exactly-once effect on user state from at-least-once delivery: every user record keeps
  the highest applied offset per topic and partition, so an event seen again (after a
  crash, a rebalance, or a fresh consumer group) is dropped, while a new topic's events,
  whose offsets start again at 0, are not mistaken for applied ones.
- A user's vector is re-adapted from the model's initialisation over the user's whole
  stored (bounded) history, never stepped on from the stored vector: the state is then a
  function of the history alone, so a replay converges to the state a fault-free run
  would have, and a state stored under another model version is simply re-adapted.
- One batch: all touched users are loaded in one pipelined read, adapted in one batched
  call of the trainer's inner loop, and written in one pipeline of compare-and-set
  scripts; a user who lost a race is read again and retried.

`service.kafka_consumer` feeds it the events of each poll.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from service.errors import ConflictError, HistoryError, StoreError
from service.events import Event
from service.history import History, HistoryEntry, Interaction
from service.item_warmup import ItemWarmup
from service.model import ServingModel
from service.observer import StreamObserver
from service.state import Source, StateStore, UserRecord, merge_profile, now_ms

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourcedEvent:
    """A valid event and the record it came from."""

    topic: str
    partition: int
    offset: int
    event: Event

    @property
    def source(self) -> Source:
        return self.topic, self.partition


@dataclass(frozen=True)
class _Update:
    """One user's pending change within a batch."""

    stored: UserRecord | None
    events: list[SourcedEvent]  # new (above the watermark), in partition order
    record: UserRecord  # the next record, its vector still to be computed
    interactions: list[Interaction]  # the next record's history, as the model reads it


class EventApplier:
    """Applies a micro-batch of valid events to user state in Redis, exactly once."""

    def __init__(
        self,
        model: ServingModel,
        store: StateStore,
        observer: StreamObserver | None = None,
        *,
        hit_k: int = 10,
        hit_sample: int = 64,
        max_conflicts: int = 3,
        items: ItemWarmup | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.items = items  # registered items' warm-up; None: users only
        self.observer = observer or StreamObserver()
        self.hit_k = hit_k  # the top-k of the online hit rate
        self.hit_sample = hit_sample  # users judged per batch at most
        self.max_conflicts = max_conflicts  # compare-and-set retries per batch

    def apply(self, events: Sequence[SourcedEvent]) -> int:
        """Applies the events; returns how many were new. Redis errors propagate, and so
        does the StoreError of a user whose stored state cannot be read or written: raised
        before any write or after writes that the watermarks make idempotent, so the batch
        can be applied again without that user's events."""
        pending = group_by_user(events)
        applied, hits, vectors, stored = 0, None, {}, {}
        for _ in range(self.max_conflicts + 1):
            updates, read = self._updates(pending)
            stored.update(read)
            if hits is None:  # judged on the states as they were before this batch
                hits = self._judge_hits(updates)
            written = self._write(updates) if updates else {}
            vectors.update(written)
            applied += sum(len(updates[user].events) for user in written)
            # Reported as each user is written: a batch that fails is retried, and a user
            # not yet written would otherwise be judged twice, one already written never.
            for user in written.keys() & hits.keys():
                self.observer.on_hit(hits[user])
            pending = {user: pending[user] for user in updates if user not in written}
            if not pending:
                if self.items is not None:
                    self.items.apply(self.model, events, self._states(events, vectors, stored))
                return applied
            logger.info("%s users changed under us; re-reading them", len(pending))
        raise ConflictError(f"{len(pending)} users kept losing compare-and-set races")

    def _states(
        self,
        events: Sequence[SourcedEvent],
        written: Mapping[str, np.ndarray],
        stored: Mapping[str, UserRecord],
    ) -> dict[str, np.ndarray]:
        """The vector each user of an event on an untrained item holds after the batch: as
        written, or (every event of theirs a replay) as stored; none for a user with no
        state. What a registered item's warm-up adds up, with no second read."""
        users = {e.event.user_id for e in events if e.event.item_id not in self.model.item_index}
        states = {user: written[user] for user in users & written.keys()}
        for user in users - written.keys():
            record = stored.get(user)
            if record is not None:
                states[user] = self.model.vector(record, self._interactions(record))
        return states

    def _updates(
        self, pending: Mapping[str, list[SourcedEvent]]
    ) -> tuple[dict[str, _Update], dict[str, UserRecord]]:
        """Loads the users (one round trip) and keeps only events above their watermarks;
        the updates, and the records as read."""
        stored = self.store.get_many(pending)
        updates, replayed = {}, 0
        for user, events in pending.items():
            record = stored.get(user)
            marks = record.watermarks if record else {}
            fresh = [e for e in events if e.offset > marks.get(e.source, -1)]
            replayed += len(events) - len(fresh)
            if fresh:
                updates[user] = self._update(user, record, fresh)
        if replayed:
            # Expected after a restart or a rebalance. Without one, the marks are ahead of the
            # log: the topic was deleted and created again under the same name, and new events
            # are being lost (README, Scale out).
            logger.info("%d events at or below their users' applied offsets skipped", replayed)
            self.observer.on_replayed(replayed)
        return updates, stored

    def _update(self, user: str, stored: UserRecord | None, events: list[SourcedEvent]) -> _Update:
        """The user's next record (history and watermarks advanced) and its interactions."""
        added = (HistoryEntry(e.event.item_id, e.event.rating) for e in events)
        history = (stored.history if stored else History()).extended(
            added, self.store.history_limit
        )
        marks = dict(stored.watermarks) if stored else {}
        profile = stored.profile if stored else {}
        for sourced in events:
            marks[sourced.source] = max(marks.get(sourced.source, -1), sourced.offset)
            profile = merge_profile(profile, sourced.event.features)
        record = UserRecord(
            user_id=user,
            vector=stored.vector if stored else self.model.prior.numpy(),
            history=history,
            model_version=self.model.version,
            state_version=(stored.state_version if stored else 0) + 1,
            watermarks=marks,
            profile=profile,
        )
        return _Update(stored, events, record, self._interactions(record))

    def _write(self, updates: Mapping[str, _Update]) -> dict[str, np.ndarray]:
        """Re-adapts every updated user in one call and writes them in one pipeline; the
        vectors of those written."""
        records = [update.record for update in updates.values()]
        histories = [update.interactions for update in updates.values()]
        profiles = [record.profile for record in records]
        started = time.perf_counter()
        vectors = self.model.adapt(histories, profiles).numpy()  # (B, d)
        self.observer.on_batch(len(records), time.perf_counter() - started)
        self.observer.on_adapted_with_profile(sum(1 for profile in profiles if profile))
        for profile in profiles:
            for name in self.model.unknown_values(profile):
                self.observer.on_unknown_feature_value(name)
        written_at = now_ms()
        records = [
            replace(record, vector=vector.copy(), updated_at_ms=written_at)
            for record, vector in zip(records, vectors, strict=True)
        ]
        written = self.store.put_many(records)
        for user in written:
            events = updates[user].events
            self.observer.on_event_applied(len(events))
            for sourced in events:
                if sourced.event.ts is not None:
                    self.observer.on_freshness(max(0.0, (written_at - sourced.event.ts) / 1000))
        return {record.user_id: record.vector for record in records if record.user_id in written}

    def _interactions(self, record: UserRecord) -> list[Interaction]:
        """The record's history as the model reads it; StoreError names an unreadable one."""
        try:
            return self.model.interactions(record.history)
        except HistoryError as error:
            raise StoreError.of(record.user_id, error) from None

    def _judge_hits(self, updates: Mapping[str, _Update]) -> dict[str, bool]:
        """Online hit rate: was each user's first new event's item in their current top-k?

        Only the first new event per user is judged, since later events of the batch
        would be judged against a state that no longer is current. A state without a
        current top-k under this model (adapted under another version, or unreadable) is
        skipped: the write may still repair it, and the batch must not fail for a metric.
        A random sample of at most `hit_sample` users per batch is judged: the rate is an
        estimate either way, and scoring every touched user's catalogue is not free.
        Scored by the model's one scoring path, `ServingModel.top_k`, as Recommend is.
        """
        candidates = [
            (user, update.stored, update.events[0].event.item_id)
            for user, update in updates.items()
            if update.stored is None or self.model.is_current(update.stored)
        ]
        if len(candidates) > self.hit_sample:
            candidates = random.sample(candidates, self.hit_sample)
        hits, live = {}, self.model.live
        for user, stored, item_id in candidates:
            vector, seen = self.model.prior.numpy(), []
            if stored is not None:
                vector, seen = stored.vector, self.model.seen(stored.history, live)
            if seen is not None:
                best = self.model.top_k(vector, self.hit_k, exclude=seen, live=live)
                hits[user] = any(item == item_id for item, _ in best)
        return hits


def group_by_user(events: Iterable[SourcedEvent]) -> dict[str, list[SourcedEvent]]:
    """Events by user id, each user's list in the order given (partition order)."""
    grouped: dict[str, list[SourcedEvent]] = {}
    for sourced in events:
        grouped.setdefault(sourced.event.user_id, []).append(sourced)
    return grouped
