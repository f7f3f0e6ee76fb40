"""UpsertItems and GetItemState as domain calls: the live catalogue's write and read.

A write validates every item first and writes nothing unless all are valid: a client
that sends a thousand items learns which one is wrong and sends them again, rather than
guessing which of them landed. Valid items go to the items topic, and the call returns
once the broker holds them; every replica (this one included) applies them from there
(`service.catalogue_follower`), so all replicas see one order of changes. A read
answers from this replica's catalogue, with the item's event count read from Redis so
that it is current.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from service.catalogue import ItemEntry, item_from_mapping
from service.errors import (
    InvalidEvent,
    InvalidRequest,
    ItemStateError,
    StoreUnavailable,
    UnknownItemError,
)
from service.events import check_id
from service.live_catalogue import ItemSummary, LiveCatalogue
from service.metrics import Metrics
from service.model import ServingModel
from service.state import ItemStateStore, now_ms

MAX_ITEMS_PER_CALL = 1000


class RecordSink(Protocol):
    """Where item records go: service.kafka_producer.KafkaEventSink on the items topic."""

    def send_record(self, key: bytes, value: bytes) -> Callable[[], None]: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class UpsertResult:
    accepted: int
    registered: int  # of them, not in the catalogue before
    retired: int  # of them, now retired


class ItemRegistry:
    """Writes item records to the items topic; reads an item's state."""

    def __init__(
        self,
        model: ServingModel,
        catalogue: LiveCatalogue,
        sink: RecordSink,  # producing to the items topic
        items: ItemStateStore,
        metrics: Metrics,
    ) -> None:
        self.model = model  # replaced on a model swap
        self.catalogue = catalogue
        self.sink = sink
        self.items = items
        self.metrics = metrics

    def upsert(self, documents: Sequence[Mapping[str, Any]]) -> UpsertResult:
        """Each document holds an item's fields as the items topic's JSON names them; a
        field left out is absent from its mapping."""
        if not 1 <= len(documents) <= MAX_ITEMS_PER_CALL:
            raise InvalidRequest(
                f"items must hold 1 to {MAX_ITEMS_PER_CALL} items, got {len(documents)}"
            )
        model, stamp = self.model, now_ms()
        entries = [self._entry(n, document, model, stamp) for n, document in enumerate(documents)]
        twice = [i for i, n in Counter(e.item_id for e in entries).items() if n > 1]
        if twice:
            raise InvalidRequest(f"item {twice[0][:64]!r} appears more than once in one call")
        registered = len({e.item_id for e in entries if not self._known(e.item_id, model)})
        checks = [self.sink.send_record(e.item_id.encode(), e.to_json()) for e in entries]
        self.sink.flush()
        for check in checks:
            check()
        for _ in range(registered):
            self.metrics.on_item_registered(implicit=False)
        retired = sum(1 for e in entries if not e.available)
        for _ in range(retired):
            self.metrics.on_item_retired()
        return UpsertResult(len(entries), registered, retired)

    def state(self, item_id: str) -> ItemSummary:
        check_id("item_id", item_id)
        model = self.model
        summary = self.catalogue.summary(model, item_id)
        if summary is None:
            raise UnknownItemError(
                f"item {item_id[:64]!r} is in neither the model nor the catalogue"
            )
        if summary.state == "trained":
            return summary
        try:
            record = self.items.get_many([item_id]).get(item_id)
        except (StoreUnavailable, ItemStateError):  # the catalogue's own count, a second older
            return summary
        count = record.count if record else 0
        return replace(summary, state="warming" if count else "cold", interactions=count)

    def _known(self, item_id: str, model: ServingModel) -> bool:
        return item_id in model.item_index or item_id in self.catalogue.entries

    def _entry(
        self, n: int, document: Mapping[str, Any], model: ServingModel, stamp: int
    ) -> ItemEntry:
        """The item's next record, or InvalidRequest naming it and what is wrong."""
        try:
            entry = replace(item_from_mapping(document), ts=stamp)
            model.item_hot(entry)
        except InvalidEvent as error:
            raise InvalidRequest(f"items[{n}]: {error}") from None
        current = self.catalogue.entries.get(entry.item_id)
        if "features" not in document and "text" not in document and current is not None:
            entry = replace(entry, features=current.features, text=current.text)
        if not entry.available and not self._known(entry.item_id, model):
            raise InvalidRequest(
                f"items[{n}]: item {entry.item_id[:64]!r} is in neither the model nor the "
                "catalogue: there is nothing to retire"
            )
        return entry
