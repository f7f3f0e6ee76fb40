"""The Kafka adapter of the event path: poll a micro-batch, validate it, hand the valid
events to `service.applier`, dead-letter the rest (`service.dead_letters`), and only then
commit the offsets. `coldstart serve` runs one beside the gRPC server.

Why it is built this way (DESIGN.md, Events and the stream):
- At-least-once from Kafka: offsets are committed only after the states their events
  produced are in Redis; the applier's watermarks make a record seen again a no-op.
- Nothing stops the loop: an invalid record goes to the dead-letter topic, and so do the
  events of a user whose stored state cannot be read (reason `unreadable_state`), which
  no retry could apply; Redis or broker trouble rewinds to the batch's first offsets and
  retries it with backoff.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from service.applier import EventApplier, SourcedEvent
from service.catalogue import ItemEntry, implicit_key
from service.dead_letters import DeadLetters
from service.errors import (
    ConflictError,
    IngestUnavailable,
    InvalidEvent,
    ItemStateError,
    StoreError,
    StoreUnavailable,
)
from service.events import UNREADABLE_STATE, check_key, check_known, parse_event
from service.item_store import ItemStore
from service.item_warmup import ItemWarmup
from service.kafka_producer import KafkaEventSink
from service.model import ServingModel
from service.observer import StreamObserver
from service.state import now_ms
from service.store import UserStore

logger = logging.getLogger(__name__)

MAX_REGISTERED_KEPT = 100_000  # ids registered at their first event, remembered until known


def listening(bootstrap: str, timeout_s: float) -> bool:
    """Whether any "host:port" of `bootstrap` accepts a TCP connection (host may be an
    [IPv6] literal)."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except OSError:
            continue
        return True
    return False


@dataclass
class ConsumerConfig:
    """How the consumer talks to Kafka."""

    bootstrap: str  # Kafka bootstrap servers, "host:port[,host:port]"
    topic: str = "coldstart.events"  # the events topic; dead letters go to "<topic>.dlq"
    group_id: str = "coldstart"  # consumer group: partitions (and so users) are spread over it
    max_records: int = 500  # records per poll: the micro-batch size at most
    poll_timeout_ms: int = 100  # how long a poll waits for records
    session_timeout_ms: int = 6000  # tansu joins a group slowly with the clients' defaults
    retry_backoff_s: float = 0.2  # first wait before retrying a failed batch; doubles
    max_backoff_s: float = 5.0  # longest wait between retries
    dlq_max_request_bytes: int = 4 * 2**20  # producer limit: whole original records fit
    client_id: str = "coldstart-consumer"
    items_topic: str = "coldstart.items"  # the catalogue's log, where unknown items register
    # True: an unknown item is registered at its event (the service's default, --unknown-items);
    # False: its events are dead-lettered (unknown_item).
    register_unknown_items: bool = False
    # Security options for every client (service.connections.kafka_options): SASL, TLS.
    client_options: dict[str, Any] = field(default_factory=dict)

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Nothing to commit here: process() commits each batch before the next poll, and a
        # rebalance only happens inside a poll (kafka-python runs this listener on its IO
        # thread, where a blocking commit() would raise).
        for tp in revoked:
            self.owner.observer.on_revoked(tp.partition)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("assigned partitions %s", sorted(tp.partition for tp in assigned))


class EventConsumer:
    """The consumer loop: `run()` until `stop()`; each poll is one micro-batch."""

    def __init__(
        self,
        model: ServingModel,
        store: UserStore,
        config: ConsumerConfig,
        observer: StreamObserver | None = None,
        stopping: threading.Event | None = None,  # set by stop(), or by a caller's own handler
        items: ItemStore | None = None,  # registered items' warm-up state; None: users only
    ) -> None:
        self.config = config
        self.observer = observer or StreamObserver()
        warmup = None if items is None else ItemWarmup(items, self.observer)
        self.applier = EventApplier(model, store, self.observer, items=warmup)
        self._registrations: KafkaEventSink | None = None
        self._registered: set[str] = (
            set()
        )  # items this consumer registered, until the model knows them
        self._stopping = stopping or threading.Event()
        self._backoff_s = 0.0
        self._consumer: KafkaConsumer | None = None
        self._dead_letters: DeadLetters | None = None
        self._next_model: ServingModel | None = None  # use_model's, swapped in between batches

    def run(self) -> None:
        """Consume until stop(); the batch in flight when stop() comes is finished and committed."""
        self._connect_when_reachable()
        try:
            while not self._stopping.is_set():
                self.step()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask run() to return after the batch in flight (safe from a signal handler)."""
        self._stopping.set()

    def _connect_when_reachable(self) -> None:
        """connect() once a bootstrap address accepts connections; until then (or stop())
        wait and look again. Recommend needs no Kafka, so a broker that is down at start-up
        delays ingestion rather than ending the replica. Looked for with a bare TCP
        connect: a kafka-python client whose bootstrap fails leaves its IO thread behind,
        one per attempt. A broker that listens but refuses the client (TLS, SASL) still
        fails connect(), loudly."""
        while not self._stopping.is_set():
            if listening(self.config.bootstrap, timeout_s=2.0):
                self._backoff_s = 0.0
                self.connect()
                return
            self._back_off(f"no Kafka broker listens at {self.config.bootstrap}")

    def connect(self) -> None:
        """Join the consumer group and open the dead-letter producer."""
        cfg = self.config
        self._consumer = KafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=cfg.group_id,
            client_id=cfg.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.session_timeout_ms // 3,
            max_poll_records=cfg.max_records,
            **cfg.client_options,
        )
        self._consumer.subscribe([cfg.topic], listener=_Rebalance(self))
        self._dead_letters = DeadLetters(
            cfg.bootstrap,
            cfg.dlq_topic,
            self.observer,
            client_id=f"{cfg.client_id}-dlq",
            max_request_bytes=cfg.dlq_max_request_bytes,
            client_options=cfg.client_options,
        )
        if cfg.register_unknown_items:
            self._registrations = KafkaEventSink(
                cfg.bootstrap, cfg.items_topic, client_options=cfg.client_options
            )
        logger.info("consuming %s at %s as group %s", cfg.topic, cfg.bootstrap, cfg.group_id)

    def close(self) -> None:
        if self._consumer is None and self._dead_letters is None:
            return
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        if self._dead_letters is not None:
            self._dead_letters.close()
        if self._registrations is not None:
            self._registrations.close()
        self._consumer = self._dead_letters = self._registrations = None
        logger.info("consumer closed")

    def use_model(self, model: ServingModel) -> None:
        """Apply the next batches with `model` (thread-safe: the swap happens between batches)."""
        self._next_model = model

    def step(self) -> int:
        """Poll one micro-batch and apply it; returns the number of records polled."""
        model = self._next_model
        if model is not None and model is not self.applier.model:
            self.applier.model = model
        records = self._poll()
        if records:
            self.process(records)
        self._report_lag()
        return len(records)

    def process(self, records: Sequence[ConsumerRecord]) -> None:
        """Validate, dead-letter, apply, and only then commit; on failure rewind and back off."""
        assert self._dead_letters is not None, "connect() first"
        try:
            valid = self._validate(records)
            self._register(valid)
            self._apply(valid, records)
            self._dead_letters.flush()
        except (StoreUnavailable, KafkaError, ConflictError, IngestUnavailable) as error:
            if isinstance(error, StoreUnavailable):
                self.observer.on_redis_error()
            self._retry_later(records, error)
            return
        self._backoff_s = 0.0
        self._commit(_next_offsets(records))
        self._dead_letters.batch_committed()
        self.observer.on_consumed(len(records))

    def _apply(self, valid: list[SourcedEvent], records: Sequence[ConsumerRecord]) -> None:
        """Applies the events. A user whose stored state cannot be read would fail every
        retry of the batch (and every restart): their events go to the dead-letter topic,
        to be replayed once the state is repaired or deleted, and the batch goes on."""
        source = {(r.partition, r.offset): r for r in records}
        while True:
            try:
                self.applier.apply(valid)
                return
            except (StoreError, ItemStateError) as error:
                lost = [s for s in valid if _names(s, error)]
                if not lost:  # not a user or item of this batch: nothing to set aside
                    raise
                logger.error("dead-lettering the events of an unreadable state: %s", error)
                unreadable = InvalidEvent(UNREADABLE_STATE, str(error))
                for sourced in lost:
                    self._dead_letter(source[sourced.partition, sourced.offset], unreadable)
                valid = [s for s in valid if not _names(s, error)]

    def _register(self, valid: Sequence[SourcedEvent]) -> None:
        """Registers, on the items topic, each item of the batch that the catalogue lacks
        (with no features: an implicit registration, which a given record always
        overrides), and waits for the broker: committed events never name an item that
        no replica will ever hear of."""
        if self._registrations is None:
            return
        model, checks = self.applier.model, {}
        for sourced in valid:
            item_id = sourced.event.item_id
            if model.knows(item_id) or item_id in self._registered or item_id in checks:
                continue
            entry = ItemEntry(item_id, ts=sourced.event.ts or now_ms(), implicit=True)
            key = implicit_key(item_id)
            checks[item_id] = self._registrations.send_record(key, entry.to_json())
        if checks:
            self._registrations.flush()
            for check in checks.values():
                check()  # a refusal raises: the batch is retried, these registrations too
            self._registered.update(checks)
            for _ in checks:
                self.observer.on_item_registered(implicit=True)
        if len(self._registered) > MAX_REGISTERED_KEPT:
            self._registered = {i for i in self._registered if not model.knows(i)}

    def _commit(self, next_offsets: dict[TopicPartition, int]) -> None:
        """Commit the offsets after the applied records."""
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in next_offsets.items()}
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as error:
            # The state is in Redis with its watermarks: whoever reads these records again
            # drops them, so a lost commit costs a re-read, not a double application.
            logger.warning("commit of %s failed: %s", _describe(offsets), error)

    def _poll(self) -> list[ConsumerRecord]:
        assert self._consumer is not None, "connect() first"
        batches = self._consumer.poll(
            timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_records
        )
        return [record for tp in sorted(batches) for record in batches[tp]]

    def _validate(self, records: Sequence[ConsumerRecord]) -> list[SourcedEvent]:
        """The valid events; the others are sent to the dead-letter topic."""
        valid, model = [], self.applier.model
        for record in records:
            try:
                # A record's timestamp (the producer's clock) stands in for an absent ts;
                # a record of the oldest message format has none.
                stamp = record.timestamp if record.timestamp and record.timestamp > 0 else None
                event = parse_event(record.value, stamp)
                check_key(event, record.key)
                known = None if self.config.register_unknown_items else model.knows
                check_known(event, known, model.feature_names)
            except InvalidEvent as invalid:
                self._dead_letter(record, invalid)
                continue
            valid.append(SourcedEvent(record.topic, record.partition, record.offset, event))
        return valid

    def _dead_letter(self, record: ConsumerRecord, invalid: InvalidEvent) -> None:
        assert self._dead_letters is not None, "connect() first"
        self._dead_letters.queue(record, invalid)

    def _retry_later(self, records: Sequence[ConsumerRecord], error: Exception) -> None:
        """Rewind to the batch's first offsets, so the next poll returns it again; back off."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, offset in _first_offsets(records).items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
        self._back_off(f"batch of {len(records)} records not applied ({error})")

    def _back_off(self, what: str) -> None:
        """Wait before a retry, unless stop() comes first: retry_backoff_s at first, doubling
        on each failure in a row up to max_backoff_s."""
        self._backoff_s = min(
            self.config.max_backoff_s, max(self.config.retry_backoff_s, 2 * self._backoff_s)
        )
        logger.warning("%s; retrying in %.1f s", what, self._backoff_s)
        self._stopping.wait(self._backoff_s)

    def _report_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            # timeout 0: a partition without a position yet (just assigned) would otherwise
            # make position() ask the coordinator, blocking the loop while the broker is down.
            highwater, position = consumer.highwater(tp), consumer.position(tp, timeout_ms=0)
            if highwater is not None and position is not None:
                self.observer.on_lag(tp.partition, max(0, highwater - position))


def _names(sourced: SourcedEvent, error: StoreError | ItemStateError) -> bool:
    """Whether the event is one of the unreadable state's: its user's, or its item's."""
    if isinstance(error, StoreError):
        return sourced.event.user_id == error.user_id
    return sourced.event.item_id == error.item_id


def _first_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    first: dict[TopicPartition, int] = {}
    for record in records:
        first.setdefault(TopicPartition(record.topic, record.partition), record.offset)
    return first


def _next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """Per partition, the offset after the last record: what a commit stores."""
    return {TopicPartition(record.topic, record.partition): record.offset + 1 for record in records}


def _describe(offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}:{tp.partition}@{o.offset}" for tp, o in sorted(offsets.items()))
