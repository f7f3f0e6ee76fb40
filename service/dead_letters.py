"""The dead-letter topic: where a record that cannot be applied goes, with why.

A letter is the original record's bytes under its original key, with headers `reason`,
`detail`, `source_partition` and `source_offset`. Letters are queued as a batch is
validated and delivered all at once before the batch commits: one blocking send per
record would cost a broker round trip each. A letter the broker will not take whole is
sent cut short rather than retried forever.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import MessageSizeTooLargeError
from kafka.producer.future import FutureRecordMetadata

from service.errors import InvalidEvent
from service.events import MAX_ID_CHARS, MAX_PAYLOAD_BYTES
from service.observer import StreamObserver

logger = logging.getLogger(__name__)

MAX_KEY_BYTES = 4 * MAX_ID_CHARS  # a user id's UTF-8 bytes at most: the key a letter keeps


@dataclass(frozen=True)
class _Letter:
    """A dead letter on its way: what to resend truncated if the broker refuses its size."""

    record: ConsumerRecord
    headers: list[tuple[str, bytes]]
    reason: str
    sent: FutureRecordMetadata


class DeadLetters:
    """Sends a batch's dead letters to `topic`, each record once however often the batch is
    retried, until `batch_committed()` starts the next batch."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        observer: StreamObserver,
        *,
        client_id: str,
        max_request_bytes: int,
        client_options: Mapping[str, Any],
    ) -> None:
        self.topic = topic
        self.observer = observer
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            max_request_size=max_request_bytes,
            **client_options,
        )
        self._delivered: set[tuple[int, int]] = set()  # (partition, offset) sent this batch
        self._pending: dict[tuple[int, int], _Letter] = {}  # queued, delivery not yet confirmed

    def queue(self, record: ConsumerRecord, invalid: InvalidEvent) -> None:
        """Queues the record's letter, unless an earlier try of this batch sent it."""
        source = (record.partition, record.offset)
        if source in self._delivered or source in self._pending:
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

    def flush(self) -> None:
        """Waits until every queued letter is on the broker; a failure raises, and the batch
        is retried, queueing again only the letters not yet delivered."""
        if not self._pending:
            return
        self._producer.flush(timeout=10)
        for source in list(self._pending):
            letter = self._pending.pop(source)
            try:
                letter.sent.get(timeout=10)
            except MessageSizeTooLargeError:  # too large for the broker: known on delivery
                self._send(letter.record, letter.headers, truncated=True).get(timeout=10)
            self._delivered.add(source)
            self.observer.on_dead_letter(letter.reason)

    def batch_committed(self) -> None:
        """The batch is done: its records will not be seen again by this consumer."""
        self._delivered.clear()

    def close(self) -> None:
        self._producer.close(timeout=5)

    def _send(
        self, record: ConsumerRecord, headers: list[tuple[str, bytes]], truncated: bool = False
    ) -> FutureRecordMetadata:
        """Sends the original bytes, or, for a record too large for the producer or the
        broker, its first MAX_PAYLOAD_BYTES with a `truncated_from` header, and a key cut to
        the longest a user id can be (with `key_truncated_from` when it was longer): a huge
        key alone would keep the letter too large, and its batch retrying forever."""
        value, key = record.value or b"", record.key
        if truncated:
            headers = list(headers)
            if len(value) > MAX_PAYLOAD_BYTES:
                headers.append(("truncated_from", str(len(value)).encode()))
                value = value[:MAX_PAYLOAD_BYTES]
            if key is not None and len(key) > MAX_KEY_BYTES:
                headers.append(("key_truncated_from", str(len(key)).encode()))
                key = key[:MAX_KEY_BYTES]
        return self._producer.send(self.topic, key=key, value=value, headers=headers)
