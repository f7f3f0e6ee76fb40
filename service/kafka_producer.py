"""Produces accepted events to the events topic as JSON, keyed by user id (kafka-python):
the `service.ingest.EventSink` of a running service."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from service.errors import IngestUnavailable
from service.events import Event

logger = logging.getLogger(__name__)


class KafkaEventSink:
    """Produces events as JSON to the topic, keyed by user id (kafka-python).

    The producer is created on first use, so the server starts (and answers
    Recommend) while the broker is still coming up.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout_s: float = 10.0,
        client_options: Mapping[str, Any] | None = None,  # SASL, TLS: kafka_options()
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self.client_options = dict(client_options or {})
        self._producer: KafkaProducer | None = None
        self._installing = threading.Lock()

    def _get(self) -> KafkaProducer:
        """The one producer. Concurrent first calls each create one (outside the lock: with
        Kafka down that takes timeout_s, and waiting in turn would take it once per caller);
        the first installed is shared and the others are closed, not leaked unflushed."""
        if self._producer is not None:
            return self._producer
        created = self._create()
        with self._installing:
            if self._producer is None:
                self._producer = created
                return created
        created.close(timeout=0)
        return self._producer

    def _create(self) -> KafkaProducer:
        try:
            return KafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id="coldstart-ingest",
                acks="all",
                linger_ms=2,
                max_block_ms=int(self.timeout_s * 1000),
                bootstrap_timeout_ms=int(self.timeout_s * 1000),  # default 30 s
                **self.client_options,
            )
        except KafkaError as error:
            raise IngestUnavailable(f"cannot reach Kafka at {self.bootstrap}: {error}") from None

    def send(self, event: Event) -> Callable[[], None]:
        return self.send_record(event.user_id.encode(), event.to_json())

    def send_record(self, key: bytes, value: bytes) -> Callable[[], None]:
        """Queues one record; the returned check raises IngestUnavailable unless the broker
        confirmed it (call it after flush())."""
        try:
            future = self._get().send(self.topic, key=key, value=value)
        except KafkaError as error:
            raise IngestUnavailable(f"cannot produce to {self.topic}: {error}") from None

        def check() -> None:
            if not future.is_done:
                raise IngestUnavailable(f"Kafka did not confirm it within {self.timeout_s:g} s")
            if future.failed():
                raise IngestUnavailable(str(future.exception))

        return check

    def flush(self) -> None:
        """Waits up to timeout_s for the queued events; each one's check then says whether
        the broker confirmed it, so a broker outage rejects events instead of failing the call."""
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=self.timeout_s)
        except KafkaError as error:
            logger.warning("Kafka did not confirm every event: %s", error)

    def close(self) -> None:
        if self._producer is None:
            return
        try:
            self._producer.close(timeout=self.timeout_s)
        except KafkaError as error:  # a broker outage must not stop a shutdown
            logger.warning("closing the ingest producer: %s", error)
        finally:
            self._producer = None
