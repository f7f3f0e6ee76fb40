"""Keeps this replica's catalogue in step with the items topic and the items' warm-up
state: what makes an item registered on one replica recommendable on all of them.

Why it reads the whole topic, outside any consumer group: every replica needs every
item, where the events topic spreads users over replicas. The topic is compacted and
keyed by item id, so reading it from the start gives each item's last record: a replica
that starts (or restarts) has the whole live catalogue before it serves, with no
retrain and no other store. Warm-up states change in Redis (`service.item_store`); each
cycle reads the ids its change feed stamped since the last look (less a margin for the
writers' clocks), then those records, and publishes the serving model's live rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from service.catalogue import parse_item
from service.errors import InvalidEvent, ItemStateError, StoreUnavailable
from service.item_store import ItemStore
from service.kafka_consumer import listening
from service.live_catalogue import LiveCatalogue
from service.metrics import Metrics
from service.model import ServingModel
from service.state import now_ms

logger = logging.getLogger(__name__)

CLOCK_MARGIN_MS = 2_000  # writers' clocks may lag this one's by this much


class CatalogueFollower:
    """`catch_up()` once, then `run()` until stopped."""

    def __init__(
        self,
        catalogue: LiveCatalogue,
        model: Callable[[], ServingModel],  # the model serving now
        items: ItemStore,
        bootstrap: str,
        topic: str,
        metrics: Metrics,
        *,
        client_options: dict[str, Any] | None = None,
        refresh_s: float = 0.2,
    ) -> None:
        self.catalogue = catalogue
        self.model = model
        self.items = items
        self.bootstrap = bootstrap
        self.topic = topic
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.client_options = dict(client_options or {})
        self._consumer: KafkaConsumer | None = None  # made once a broker listens
        self._assigned: list[TopicPartition] = []
        self._looked_ms = 0  # the change feed is read from here on, less the margin
        self._published: ServingModel | None = None  # the model last given live rows
        self._dirty = True  # the catalogue changed since the last publish
        self._catching_up = False  # old records are not fresh: no freshness observed

    def catch_up(self, timeout_s: float) -> bool:
        """Reads the topic to its end (as it was when called) and publishes; False when
        the end was not reached in time, or no broker or topic is there yet (the replica
        serves, and catches up after: Recommend needs no Kafka)."""
        deadline = time.monotonic() + timeout_s
        if not self._assign():
            logger.warning("items topic %s not readable yet: followed once it is", self.topic)
            return False
        assert self._consumer is not None
        ends = self._consumer.end_offsets(self._assigned)
        self._catching_up = True
        try:
            while time.monotonic() < deadline:
                self.step(poll_ms=200)
                if all(self._consumer.position(tp) >= end for tp, end in ends.items()):
                    return True
        finally:
            self._catching_up = False
        logger.warning(
            "the items topic %s was not read to its end in %.0f s", self.topic, timeout_s
        )
        return False

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                if not self.step(poll_ms=int(self.refresh_s * 1000)):
                    stopping.wait(self.refresh_s)  # no topic to wait on yet
            except (KafkaError, StoreUnavailable) as error:
                logger.warning("catalogue not refreshed (%s); retrying", error)
                stopping.wait(1.0)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        self.items.close()

    def step(self, poll_ms: int) -> bool:
        """One cycle: new item records, then changed warm-up states, then publish; False
        when there was no topic to read (nothing waited)."""
        reading = bool(self._assigned) or self._assign()
        fresh = self._read_topic(poll_ms) if reading else []
        self._dirty |= bool(fresh)
        looked = now_ms()
        if self._looked_ms:
            changed = self.items.changed_since(self._looked_ms - CLOCK_MARGIN_MS)
        else:
            changed = list(self.catalogue.entries)  # the first look: every item's state
        wanted = [i for i in {*changed, *fresh} if i in self.catalogue.entries]
        self._dirty |= self._read_states(wanted) > 0
        self._looked_ms = looked  # only once read: a failed read is looked at again
        model = self.model()
        if self._dirty or model is not self._published:
            self.catalogue.publish(model)
            self._published, self._dirty = model, False
            self.metrics.set_catalogue(self.catalogue.counts(model))
        return reading

    def _assign(self) -> bool:
        """Takes every partition of the topic, from the start; False while no broker
        listens or the topic has no partitions."""
        if self._consumer is None:
            if not listening(self.bootstrap, timeout_s=2.0):
                return False
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,  # no group: this replica reads every partition
                client_id="coldstart-catalogue",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self.client_options,
            )
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            return False
        self._assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._assigned)
        self._consumer.seek_to_beginning(*self._assigned)
        return True

    def _read_topic(self, poll_ms: int) -> list[str]:
        """Applies the records polled; the ids of the items they changed."""
        assert self._consumer is not None
        batches = self._consumer.poll(timeout_ms=poll_ms, max_records=10_000)
        changed, now = [], now_ms()
        for records in batches.values():
            for record in records:
                try:
                    entry = parse_item(record.value)
                except InvalidEvent as invalid:
                    logger.warning(
                        "items topic %s:%s@%s skipped: %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        invalid,
                    )
                    self.metrics.on_item_record_invalid(invalid.reason)
                    continue
                if self.catalogue.apply(entry, max(record.timestamp or 0, 0)):
                    changed.append(entry.item_id)
                    if not self._catching_up:
                        seconds = (now - (entry.ts or now)) / 1000
                        self.metrics.on_item_freshness("catalogue", seconds)
        return changed

    def _read_states(self, item_ids: list[str]) -> int:
        """Takes the items' stored warm-up states; how many were newer than those held."""
        while True:
            try:
                records = self.items.get_many(item_ids)
                break
            except ItemStateError as error:  # one unreadable record: the others still count
                logger.warning("%s", error)
                item_ids = [i for i in item_ids if i != error.item_id]
        now, newer = now_ms(), []
        for record in records.values():
            known = self.catalogue.records.get(record.item_id)
            if known is None or record.state_version > known.state_version:
                newer.append(record)
                if not self._catching_up:
                    seconds = max(0, now - record.updated_at_ms) / 1000
                    self.metrics.on_item_freshness("warmup", seconds)
        self.catalogue.apply_records(newer)
        return len(newer)
