"""The event consumer: Kafka micro-batches -> batched re-adaptation -> Redis -> offset commit.

Why it is built this way (DESIGN.md, Events and the stream):
- At-least-once from Kafka, exactly-once effect on user state. Offsets are
  committed only after the states they produced are in Redis, and every user
  record keeps the highest applied offset per topic and partition, so a record
  seen again (after a crash, a rebalance, or a fresh consumer group) is
  dropped, while a new topic's records, whose offsets start again at 0, are
  not mistaken for applied ones.
- A user's vector is re-adapted from the model's initialisation over the
  user's whole stored (bounded) history, never stepped on from the stored
  vector: the state is then a function of the history alone, so a replay
  converges to the state a fault-free run would have, and a state stored
  under another model version is simply re-adapted under the new one.
- One poll is one micro-batch: all touched users are loaded in one pipelined
  read, adapted in one batched call of the trainer's inner loop, and written
  in one pipeline of compare-and-set scripts.
- Nothing stops the loop: an invalid record goes to the dead-letter topic
  (`<topic>.dlq`, the original bytes, headers `reason`, `detail`,
  `source_partition`, `source_offset`), and so do the events of a user whose
  stored state cannot be read (reason `unreadable_state`), which no retry
  could apply; Redis or broker trouble rewinds to the first uncommitted
  offsets and retries the batch with backoff.

`EventApplier` is the state logic (no Kafka in it); `EventConsumer` is the
Kafka adapter around it; `coldstart serve` runs one beside the gRPC server.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from service.events import (
    MAX_ID_CHARS,
    MAX_PAYLOAD_BYTES,
    UNREADABLE_STATE,
    Event,
    InvalidEvent,
    check_item,
    check_key,
    parse_event,
)
from service.history import History, HistoryEntry, HistoryError, Interaction
from service.model import ServingModel
from service.store import (
    LEGACY_TOPIC,
    REDIS_ERRORS,
    Source,
    StoreError,
    UserRecord,
    UserStore,
    now_ms,
)
from trainer.adapt import scores
from trainer.errors import ColdstartError

logger = logging.getLogger(__name__)

MAX_KEY_BYTES = 4 * MAX_ID_CHARS  # a user id's UTF-8 bytes at most: the key a letter keeps


class StreamObserver(Protocol):
    """What the consumer reports; `service.metrics` implements it for Prometheus."""

    def on_consumed(self, n: int) -> None:
        """A batch of `n` records is done (applied, dead-lettered or skipped) and its commit
        attempted; a batch that is retried is counted once, when it is done."""

    def on_batch(self, size: int, seconds: float) -> None:
        """One batched adaptation: `size` users re-adapted in `seconds`."""

    def on_event_applied(self, n: int) -> None:
        """`n` events were applied to user state (written to Redis)."""

    def on_dead_letter(self, reason: str) -> None:
        """One record went to the dead-letter topic; `reason` is a code of events.REASONS."""

    def on_replayed(self, n: int) -> None:
        """`n` valid events were at or below their users' applied offsets, so not applied."""

    def on_freshness(self, seconds: float) -> None:
        """One applied event: from its event time to its user's state being written."""

    def on_redis_error(self) -> None:
        """A Redis call failed; the batch will be retried."""

    def on_lag(self, partition: int, lag: int) -> None:
        """Records in `partition` not yet applied (high watermark minus position)."""

    def on_revoked(self, partition: int) -> None:
        """`partition` moved to another consumer: its lag is no longer this one's to report."""

    def on_hit(self, hit: bool) -> None:
        """Whether an event's item was in its user's current top-k before it was applied."""


class NoopObserver:
    """The default observer: reports nothing."""

    def on_consumed(self, n: int) -> None:
        pass

    def on_batch(self, size: int, seconds: float) -> None:
        pass

    def on_event_applied(self, n: int) -> None:
        pass

    def on_dead_letter(self, reason: str) -> None:
        pass

    def on_replayed(self, n: int) -> None:
        pass

    def on_freshness(self, seconds: float) -> None:
        pass

    def on_redis_error(self) -> None:
        pass

    def on_lag(self, partition: int, lag: int) -> None:
        pass

    def on_revoked(self, partition: int) -> None:
        pass

    def on_hit(self, hit: bool) -> None:
        pass


class ConflictError(ColdstartError):
    """User writes kept losing compare-and-set races; the batch is retried."""


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
        store: UserStore,
        observer: StreamObserver | None = None,
        *,
        hit_k: int = 10,
        hit_sample: int = 64,
        max_conflicts: int = 3,
    ) -> None:
        self.model = model
        self.store = store
        self.observer = observer or NoopObserver()
        self.hit_k = hit_k  # the top-k of the online hit rate
        self.hit_sample = hit_sample  # users judged per batch at most
        self.max_conflicts = max_conflicts  # compare-and-set retries per batch

    def apply(self, events: Sequence[SourcedEvent]) -> int:
        """Applies the events; returns how many were new. Redis errors propagate, and so
        does the StoreError of a user whose stored state cannot be read or written: raised
        before any write or after writes that the watermarks make idempotent, so the batch
        can be applied again without that user's events."""
        pending = group_by_user(events)
        applied, hits = 0, None
        for _ in range(self.max_conflicts + 1):
            updates = self._updates(pending)
            if hits is None:  # judged on the states as they were before this batch
                hits = self._judge_hits(updates)
            written = self._write(updates) if updates else set()
            applied += sum(len(updates[user].events) for user in written)
            # Reported as each user is written: a batch that fails is retried, and a user
            # not yet written would otherwise be judged twice, one already written never.
            for user in written & hits.keys():
                self.observer.on_hit(hits[user])
            pending = {user: pending[user] for user in updates if user not in written}
            if not pending:
                return applied
            logger.info("%s users changed under us; re-reading them", len(pending))
        raise ConflictError(f"{len(pending)} users kept losing compare-and-set races")

    def _updates(self, pending: Mapping[str, list[SourcedEvent]]) -> dict[str, _Update]:
        """Loads the users (one round trip) and keeps only events above their watermarks."""
        stored = self.store.get_many(pending)
        updates, replayed = {}, 0
        for user, events in pending.items():
            record = stored.get(user)
            marks = record.watermarks if record else {}
            fresh = [e for e in events if e.offset > applied_offset(marks, e.source)]
            replayed += len(events) - len(fresh)
            if fresh:
                updates[user] = self._update(user, record, fresh)
        if replayed:
            # Expected after a restart or a rebalance. Without one, the marks are ahead of the
            # log: the topic was deleted and created again under the same name, and new events
            # are being lost (README, Scale out).
            logger.info("%d events at or below their users' applied offsets skipped", replayed)
            self.observer.on_replayed(replayed)
        return updates

    def _update(self, user: str, stored: UserRecord | None, events: list[SourcedEvent]) -> _Update:
        """The user's next record (history and watermarks advanced) and its interactions."""
        added = (HistoryEntry(e.event.item_id, e.event.rating) for e in events)
        history = (stored.history if stored else History()).extended(
            added, self.store.history_limit
        )
        marks = dict(stored.watermarks) if stored else {}
        for sourced in events:
            marks[sourced.source] = max(applied_offset(marks, sourced.source), sourced.offset)
            marks.pop((LEGACY_TOPIC, sourced.partition), None)  # now held under its topic
        record = UserRecord(
            user_id=user,
            vector=stored.vector if stored else self.model.prior.numpy(),
            history=history,
            model_version=self.model.version,
            state_version=(stored.state_version if stored else 0) + 1,
            watermarks=marks,
        )
        return _Update(stored, events, record, self._interactions(record))

    def _write(self, updates: Mapping[str, _Update]) -> set[str]:
        """Re-adapts every updated user in one call and writes them in one pipeline."""
        records = [update.record for update in updates.values()]
        histories = [update.interactions for update in updates.values()]
        started = time.perf_counter()
        vectors = self.model.adapt(histories).numpy()  # (B, d)
        self.observer.on_batch(len(records), time.perf_counter() - started)
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
                self.observer.on_freshness(max(0.0, (written_at - sourced.event.ts) / 1000))
        return written

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
        A random sample of at most `hit_sample` users per batch is judged: the rate is
        an estimate either way, and scoring every touched user's catalogue took a
        tenth of the consumer's time.
        """
        candidates = [
            (user, update.stored, update.events[0].event.item_id)
            for user, update in updates.items()
            if update.stored is None or self.model.is_current(update.stored)
        ]
        if len(candidates) > self.hit_sample:
            candidates = random.sample(candidates, self.hit_sample)
        judged = [
            (user, stored, item_id, seen)
            for user, stored, item_id in candidates
            if (seen := [] if stored is None else self.model.seen(stored.history)) is not None
        ]
        if not judged:
            return {}
        vectors = torch.stack(
            [
                torch.from_numpy(stored.vector) if stored is not None else self.model.prior
                for _, stored, _, _ in judged
            ]
        )
        with torch.no_grad():
            ranked = scores(vectors, self.model.tables)  # (B, I)
        for row, (*_, seen) in enumerate(judged):
            ranked[row, seen] = -torch.inf
        top = torch.topk(ranked, min(self.hit_k, ranked.shape[1])).indices.tolist()
        index = self.model.item_index
        return {
            user: index[item_id] in best
            for (user, _, item_id, _), best in zip(judged, top, strict=True)
        }


def _listening(bootstrap: str, timeout_s: float) -> bool:
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


def applied_offset(marks: Mapping[Source, int], source: Source) -> int:
    """The last offset applied from `source`, -1 if none. A mark written before marks named
    their topic counts for every topic, as it did then, until the user's next write from
    that partition replaces it: the upgrade re-applies nothing (README, Scale out)."""
    legacy = marks.get((LEGACY_TOPIC, source[1]), -1)
    return max(marks.get(source, -1), legacy)


def group_by_user(events: Iterable[SourcedEvent]) -> dict[str, list[SourcedEvent]]:
    """Events by user id, each user's list in the order given (partition order)."""
    grouped: dict[str, list[SourcedEvent]] = {}
    for sourced in events:
        grouped.setdefault(sourced.event.user_id, []).append(sourced)
    return grouped


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
    ) -> None:
        self.config = config
        self.observer = observer or NoopObserver()
        self.applier = EventApplier(model, store, self.observer)
        self.item_index = model.item_index
        self._stopping = stopping or threading.Event()
        self._backoff_s = 0.0
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._dead_lettered: set[tuple[int, int]] = set()  # (partition, offset) sent this batch
        self._pending: dict[tuple[int, int], _Letter] = {}  # queued, delivery not yet confirmed
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
        delays ingestion rather than ending the replica, as the client's 30 s bootstrap
        timeout used to. Looked for with a bare TCP connect: a kafka-python client whose
        bootstrap fails leaves its IO thread behind, one per attempt. A broker that listens
        but refuses the client (TLS, SASL) still fails connect(), loudly, as before."""
        while not self._stopping.is_set():
            if _listening(self.config.bootstrap, timeout_s=2.0):
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
        self._producer = KafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            client_id=f"{cfg.client_id}-dlq",
            acks="all",
            max_request_size=cfg.dlq_max_request_bytes,
            **cfg.client_options,
        )
        logger.info("consuming %s at %s as group %s", cfg.topic, cfg.bootstrap, cfg.group_id)

    def close(self) -> None:
        if self._consumer is None and self._producer is None:
            return
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        if self._producer is not None:
            self._producer.close(timeout=5)
        self._consumer = self._producer = None
        logger.info("consumer closed")

    def use_model(self, model: ServingModel) -> None:
        """Apply the next batches with `model` (thread-safe: the swap happens between batches)."""
        self._next_model = model

    def step(self) -> int:
        """Poll one micro-batch and apply it; returns the number of records polled."""
        model = self._next_model
        if model is not None and model is not self.applier.model:
            self.applier.model, self.item_index = model, model.item_index
        records = self._poll()
        if records:
            self.process(records)
        self._report_lag()
        return len(records)

    def process(self, records: Sequence[ConsumerRecord]) -> None:
        """Validate, dead-letter, apply, and only then commit; on failure rewind and back off."""
        try:
            self._apply(self._validate(records), records)
            self._flush_dead_letters()
        except (*REDIS_ERRORS, KafkaError, ConflictError) as error:
            if isinstance(error, REDIS_ERRORS):
                self.observer.on_redis_error()
            self._retry_later(records, error)
            return
        self._backoff_s = 0.0
        self._commit(_next_offsets(records))
        self._dead_lettered.clear()
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
            except StoreError as error:
                lost = [s for s in valid if s.event.user_id == error.user_id]
                if not lost:  # not a user of this batch: nothing to set aside
                    raise
                logger.error("dead-lettering the events of an unreadable user: %s", error)
                unreadable = InvalidEvent(UNREADABLE_STATE, str(error))
                for sourced in lost:
                    self._dead_letter(source[sourced.partition, sourced.offset], unreadable)
                valid = [s for s in valid if s.event.user_id != error.user_id]

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
        valid = []
        for record in records:
            try:
                event = parse_event(record.value)
                check_key(event, record.key)
                check_item(event, self.item_index)
            except InvalidEvent as invalid:
                self._dead_letter(record, invalid)
                continue
            valid.append(SourcedEvent(record.topic, record.partition, record.offset, event))
        return valid

    def _dead_letter(self, record: ConsumerRecord, invalid: InvalidEvent) -> None:
        """Queues the record for the dead-letter topic; _flush_dead_letters waits for them all
        at once (one blocking send per record cost 0.6 ms each against a local broker, and a
        replicated acks=all round trip each on a real one)."""
        source = (record.partition, record.offset)
        if source in self._dead_lettered or source in self._pending:  # an earlier try sent it
            return
        logger.info(
            "dead-lettering %s:%s:%s: %s", record.topic, record.partition, record.offset, invalid
        )
        headers = [
            ("reason", invalid.reason.encode()),
            ("detail", invalid.message.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        try:
            sent = self._send(record, headers)
        except MessageSizeTooLargeError:  # too large for the producer: known at once
            sent = self._send(record, headers, truncated=True)
        self._pending[source] = _Letter(record, headers, invalid.reason, sent)

    def _send(
        self, record: ConsumerRecord, headers: list[tuple[str, bytes]], truncated: bool = False
    ) -> FutureRecordMetadata:
        """Sends the original bytes, or, for a record too large for the producer or the
        broker, its first MAX_PAYLOAD_BYTES with a `truncated_from` header, and a key cut to
        the longest a user id can be (with `key_truncated_from` when it was longer): a huge
        key alone would keep the letter too large, and its batch retrying forever."""
        assert self._producer is not None, "connect() first"
        value, key = record.value or b"", record.key
        if truncated:
            headers = list(headers)
            if len(value) > MAX_PAYLOAD_BYTES:
                headers.append(("truncated_from", str(len(value)).encode()))
                value = value[:MAX_PAYLOAD_BYTES]
            if key is not None and len(key) > MAX_KEY_BYTES:
                headers.append(("key_truncated_from", str(len(key)).encode()))
                key = key[:MAX_KEY_BYTES]
        return self._producer.send(self.config.dlq_topic, key=key, value=value, headers=headers)

    def _flush_dead_letters(self) -> None:
        """Waits until every queued dead letter is on the broker; a failure raises, and the
        batch is retried, queueing again only the letters not yet delivered."""
        if not self._pending:
            return
        assert self._producer is not None, "connect() first"
        self._producer.flush(timeout=10)
        for source in list(self._pending):
            letter = self._pending.pop(source)
            try:
                letter.sent.get(timeout=10)
            except MessageSizeTooLargeError:  # too large for the broker: known on delivery
                self._send(letter.record, letter.headers, truncated=True).get(timeout=10)
            self._dead_lettered.add(source)
            self.observer.on_dead_letter(letter.reason)

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


@dataclass(frozen=True)
class _Letter:
    """A dead letter on its way: what to resend truncated if the broker refuses its size."""

    record: ConsumerRecord
    headers: list[tuple[str, bytes]]
    reason: str
    sent: FutureRecordMetadata


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
