"""Applies a micro-batch's events on registered items to the items' warm-up state, exactly
once, in the batch that adapts their users.

An item registered while serving starts from its features and text; each of its first
`item_warm_after` events pulls it towards the event's user, as the item step learned
(trainer.items.item_step). The step needs of its users only their count and the sum of
their vectors, so an item's record is that sum, added to event by event. The user's vector
is the one the batch just wrote (their state after the batch), handed over by the applier.
Exactly once, as for users: each item record keeps the highest applied offset per topic and
partition, so a replayed event is dropped, and a write that lost a compare-and-set race
(another replica applied events of the same item from its own partitions) is read again
and redone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from service.errors import ConflictError
from service.model import ServingModel
from service.observer import StreamObserver
from service.state import ItemRecord, ItemStateStore, now_ms

if TYPE_CHECKING:
    from service.applier import SourcedEvent

logger = logging.getLogger(__name__)


class ItemWarmup:
    """Adds a batch's events on registered items to their records in Redis."""

    def __init__(
        self,
        items: ItemStateStore,
        observer: StreamObserver | None = None,
        max_conflicts: int = 3,
    ) -> None:
        self.items = items
        self.observer = observer or StreamObserver()
        self.max_conflicts = max_conflicts

    def apply(
        self,
        model: ServingModel,
        events: Sequence[SourcedEvent],
        states: Mapping[str, np.ndarray],
    ) -> int:
        """Applies the events on items the model was not trained on; returns how many were
        new. `states`: each user's vector after the batch (none: the prior)."""
        pending = _by_item([e for e in events if e.event.item_id not in model.item_index])
        if not pending:
            return 0
        prior = model.prior.numpy()
        vectors = {e.event.user_id: states.get(e.event.user_id, prior) for e in events}
        applied = 0
        for _ in range(self.max_conflicts + 1):
            stored = self.items.get_many(pending)
            records = {}
            for item, item_events in pending.items():
                record = _next_record(model, stored.get(item), item, item_events, vectors)
                if record is not None:
                    records[item] = record
            written = self.items.put_many(records.values(), now_ms())
            for item in written:
                new = records[item].count - (stored[item].count if item in stored else 0)
                applied += new
                self.observer.on_item_adapted(new)
            pending = {item: pending[item] for item in records if item not in written}
            if not pending:
                return applied
            logger.info("%s items changed under us; re-reading them", len(pending))
        raise ConflictError(f"{len(pending)} items kept losing compare-and-set races")


def _next_record(
    model: ServingModel,
    stored: ItemRecord | None,
    item: str,
    events: Sequence[SourcedEvent],
    vectors: Mapping[str, np.ndarray],
) -> ItemRecord | None:
    """The item's record with the events above its watermarks added; None when none is."""
    marks = dict(stored.watermarks) if stored else {}
    fresh = [e for e in events if e.offset > marks.get(e.source, -1)]
    if not fresh:
        return None
    count, pulls, pull_sum = 0, 0, np.zeros(model.dim, np.float32)
    if stored is not None:
        count = stored.count
        if stored.model_version == model.version:  # a sum under another model is dropped
            pulls, pull_sum = stored.pulls, stored.pull_sum.copy()
    for sourced in fresh:
        marks[sourced.source] = max(marks.get(sourced.source, -1), sourced.offset)
        count += 1
        if pulls < model.warm_after:
            pulls += 1
            pull_sum += vectors[sourced.event.user_id]
    return ItemRecord(
        item_id=item,
        count=count,
        pulls=pulls,
        pull_sum=pull_sum,
        model_version=model.version,
        state_version=(stored.state_version if stored else 0) + 1,
        watermarks=marks,
        updated_at_ms=now_ms(),
    )


def _by_item(events: Sequence[SourcedEvent]) -> dict[str, list[SourcedEvent]]:
    grouped: dict[str, list[SourcedEvent]] = {}
    for sourced in events:
        grouped.setdefault(sourced.event.item_id, []).append(sourced)
    return grouped
