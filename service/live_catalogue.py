"""The catalogue as one replica holds it: every item record of the items topic, every
registered item's warm-up state, and from them the serving model's live rows.

Why here and not in the model: the catalogue outlives a model. A model swap keeps
every registered item: the new model scores those it was trained on with its own rows
and starts the others from their features, so `publish` builds the live rows of
whatever model serves. Rows are built only for items whose record, warm-up state or
model changed since the last build (`_rows`), so a catalogue change costs the items
it touches, not the catalogue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from service.catalogue import ItemEntry
from service.errors import InvalidEvent
from service.live_items import LiveItems
from service.model import ServingModel
from service.state import ItemRecord
from trainer.text import TextEncoder, load_encoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Row:
    """A live item's row and what it was built from."""

    model_version: str
    entry: ItemEntry
    record: ItemRecord | None
    row: np.ndarray  # (d + 1,) [v, b]


@dataclass(frozen=True)
class ItemSummary:
    """What GetItemState reports of one item."""

    item_id: str
    state: str  # "trained", "cold" or "warming"
    interactions: int
    registered_at_ms: int
    entry: ItemEntry | None  # None: a trained item no record has changed


class LiveCatalogue:
    """Item records and warm-up states in, each serving model's live rows out."""

    def __init__(self) -> None:
        self.entries: dict[str, ItemEntry] = {}  # the last record of each item, given first
        self.registered_ms: dict[str, int] = {}  # each item's first record
        self.records: dict[str, ItemRecord] = {}  # warm-up states, as last read
        self._rows: dict[str, _Row] = {}
        self._texts: dict[str, np.ndarray] = {}  # text vectors, by text
        self._encoder: TextEncoder | None = None
        self._encoder_checked = False
        self._warned: set[str] = set()  # model versions warned about a missing encoder
        self._lock = threading.Lock()  # one build at a time (the follower, a model swap)

    def apply(self, entry: ItemEntry, record_ts: int) -> bool:
        """Takes one record of the items topic; False when it changes nothing (an implicit
        registration of an item already known). `record_ts` stands in for an absent ts."""
        with self._lock:  # publish may run on another thread (a model swap)
            if entry.implicit and entry.item_id in self.entries:
                return False
            self.registered_ms.setdefault(entry.item_id, entry.ts or record_ts)
            self.entries[entry.item_id] = entry
            return True

    def apply_records(self, records: Iterable[ItemRecord]) -> None:
        with self._lock:
            self._apply_records(records)

    def _apply_records(self, records: Iterable[ItemRecord]) -> None:
        for record in records:
            stored = self.records.get(record.item_id)
            if stored is None or record.state_version > stored.state_version:
                self.records[record.item_id] = record

    def summary(self, model: ServingModel, item_id: str) -> ItemSummary | None:
        """The item's state, or None when neither the model nor the catalogue has it."""
        entry = self.entries.get(item_id)
        registered = self.registered_ms.get(item_id, 0)
        if item_id in model.item_index:
            return ItemSummary(item_id, "trained", 0, registered, entry)
        if entry is None:
            return None
        record = self.records.get(item_id)
        count = record.count if record else 0
        return ItemSummary(item_id, "warming" if count else "cold", count, registered, entry)

    def counts(self, model: ServingModel) -> dict[str, int]:
        """Items by state: trained (and available), cold, warming, retired."""
        counts = dict.fromkeys(("trained", "cold", "warming", "retired"), 0)
        for item_id, entry in self.entries.items():
            if not entry.available:
                counts["retired"] += 1
            elif item_id not in model.item_index:
                record = self.records.get(item_id)
                counts["warming" if record and record.count else "cold"] += 1
        counts["trained"] = len(model.item_ids) - sum(
            1 for i, e in self.entries.items() if i in model.item_index and not e.available
        )
        return counts

    def publish(self, model: ServingModel) -> None:
        """Builds the model's live rows from the catalogue and swaps them in. A model that
        reads text has its encoder loaded here, at the first publish (before the replica
        serves), not at the first registration, which would wait seconds for it."""
        with self._lock:
            if model.text_dim:
                self._encoder_for(model)
            live = [e for i, e in self.entries.items() if i not in model.item_index]
            rows = self._built_rows(model, live)
            ids = [entry.item_id for entry in live]
            size = len(model.item_ids)
            retired = [
                model.item_index[i]
                for i, e in self.entries.items()
                if not e.available and i in model.item_index
            ]
            retired += [size + row for row, entry in enumerate(live) if not entry.available]
            vectors, bias, first = model.with_rows(rows)
            model.live = LiveItems(
                ids=ids,
                index={item_id: row for row, item_id in enumerate(ids)},
                vectors=vectors,
                bias=bias,
                registered_ms=np.array([self.registered_ms[i] for i in ids], np.int64),
                hidden=np.array(sorted(retired), np.intp),
                first=first,
            )

    def _built_rows(self, model: ServingModel, live: list[ItemEntry]) -> np.ndarray:
        """(L, d + 1) the live items' rows: kept where nothing they depend on changed,
        built in one batch for the others."""
        stale = [
            entry
            for entry in live
            if not _still(
                self._rows.get(entry.item_id), model, entry, self.records.get(entry.item_id)
            )
        ]
        if stale:
            self._build(model, stale)
        out = np.zeros((len(live), model.dim + 1), np.float32)
        for row, entry in enumerate(live):
            out[row] = self._rows[entry.item_id].row
        return out

    def _build(self, model: ServingModel, entries: list[ItemEntry]) -> None:
        hot = np.stack([self._hot(model, entry) for entry in entries])
        text = self._text_vectors(model, entries)
        records = [self.records.get(entry.item_id) for entry in entries]
        current = [
            r if r is not None and r.model_version == model.version else None for r in records
        ]
        pulls = np.array([r.pulls if r else 0 for r in current], np.int64)
        sums = np.stack([r.pull_sum if r else np.zeros(model.dim, np.float32) for r in current])
        rows = model.item_rows(hot, text, pulls, sums.astype(np.float32))
        for entry, record, row in zip(entries, records, rows, strict=True):
            self._rows[entry.item_id] = _Row(model.version, entry, record, row)

    def _hot(self, model: ServingModel, entry: ItemEntry) -> np.ndarray:
        """The entry's features under this model; none that it reads when it names a
        feature the model does not know (a record another model accepted)."""
        try:
            return model.item_hot(entry)
        except InvalidEvent as error:
            logger.warning("item %r: %s; started without features", entry.item_id, error)
            return np.zeros(len(model.item_columns), np.float32)

    def _text_vectors(self, model: ServingModel, entries: list[ItemEntry]) -> np.ndarray:
        """(N, T) the entries' text vectors under the model's encoder; zeros (no text known)
        where the model reads no text or its encoder is not installed."""
        width = model.text_dim
        out = np.zeros((len(entries), width), np.float32)
        encoder = self._encoder_for(model) if width else None
        if encoder is None:
            return out
        missing = sorted({e.text for e in entries if e.text.strip() and e.text not in self._texts})
        if missing:
            self._texts.update(zip(missing, encoder.encode(missing), strict=True))
        for row, entry in enumerate(entries):
            if entry.text.strip():
                out[row] = self._texts[entry.text]
        return out

    def _encoder_for(self, model: ServingModel) -> TextEncoder | None:
        if not self._encoder_checked:
            self._encoder_checked = True
            self._encoder = load_encoder()
        if self._encoder is None or self._encoder.describe() != model.text_encoder:
            if model.version not in self._warned:
                self._warned.add(model.version)
                logger.warning(
                    "the model embeds item text with %s, which is not installed: new items "
                    "start from their other features",
                    model.text_encoder,
                )
            return None
        return self._encoder


def _still(
    built: _Row | None, model: ServingModel, entry: ItemEntry, record: ItemRecord | None
) -> bool:
    return (
        built is not None
        and built.model_version == model.version
        and built.entry is entry
        and built.record is record
    )
