"""RecordEvents as a domain call: validate streamed events against the event schema and the
catalogue, then hand the valid ones to a sink (`service.kafka_producer` in the service).

A bad event is counted and explained; it does not end the stream. An open stream holds a
gRPC worker thread for as long as its client keeps it open, so at most `max_streams` run
at once: the other workers stay free for Recommend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.errors import IngestUnavailable, InvalidEvent, StreamTooLong, TooManyStreams
from service.events import MAX_ID_CHARS, Event, check_known, event_from_mapping
from service.metrics import Metrics
from service.model import ServingModel

MAX_REJECTIONS = 100  # rejection entries listed in a RecordEvents response
STREAM_CAP = "stream_cap"  # rejection reason of the event that overflowed a stream
PRODUCE_FAILED = "produce_failed"  # rejection reason of an event the broker did not take


class EventSink(Protocol):
    """Where accepted events go: the events topic, keyed by user id."""

    def send(self, event: Event) -> Callable[[], None]:
        """Queue `event`; returns a function that raises if it was not delivered."""
        ...

    def flush(self) -> None: ...


@dataclass
class IngestResult:
    accepted: int = 0
    rejected: int = 0
    rejections: list[tuple[int, str, str]] = field(default_factory=list)  # index, event id, why

    def reject(self, index: int, event_id: str, reason: str) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REJECTIONS:
            self.rejections.append((index, event_id, reason))


class Ingestor:
    """Checks each event of a stream and produces the valid ones."""

    def __init__(
        self,
        model: ServingModel,
        sink: EventSink,
        metrics: Metrics,
        max_events: int,
        max_streams: int,
        register_unknown_items: bool = True,
    ) -> None:
        self.model = model  # replaced on a model swap
        self.register_unknown_items = register_unknown_items  # else unknown_item refuses
        self.sink = sink
        self.metrics = metrics
        self.max_events = max_events
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)

    def ingest(self, documents: Iterable[Mapping[str, Any] | InvalidEvent]) -> IngestResult:
        """Each document is an event's fields, or the InvalidEvent of one that could not
        even be read (rejected like any other bad event)."""
        if not self._streams.acquire(blocking=False):
            raise TooManyStreams(
                f"{self.max_streams} RecordEvents streams are already open on this replica, "
                "as many as may be: retry with backoff, or produce to the Kafka topic directly"
            )
        try:
            return self._ingest(documents)
        finally:
            self._streams.release()

    def _ingest(self, documents: Iterable[Mapping[str, Any] | InvalidEvent]) -> IngestResult:
        result = IngestResult()
        pending: list[tuple[int, str, Callable[[], None]]] = []
        for index, document in enumerate(documents):
            if index >= self.max_events:
                self._settle(pending, result)
                self.metrics.on_rejected(STREAM_CAP)
                raise StreamTooLong(
                    f"a RecordEvents stream may carry {self.max_events} events; the first "
                    f"{self.max_events} were processed ({result.accepted} accepted, "
                    f"{result.rejected} rejected): send the rest in a new stream"
                )
            if isinstance(document, InvalidEvent):  # not even readable: no event id to name
                self._reject(result, index, "", document)
                continue
            try:
                event = event_from_mapping(document)
                model = self.model
                known = None if self.register_unknown_items else model.knows
                check_known(event, known, model.feature_names)
            except InvalidEvent as error:
                self._reject(result, index, str(document.get("event_id", "")), error)
                continue
            pending.append((index, event.event_id, self.sink.send(event)))
        self._settle(pending, result)
        return result

    def _reject(self, result: IngestResult, index: int, event_id: str, error: InvalidEvent) -> None:
        self.metrics.on_rejected(error.reason)
        result.reject(index, event_id[:MAX_ID_CHARS], str(error))

    def _settle(
        self, pending: list[tuple[int, str, Callable[[], None]]], result: IngestResult
    ) -> None:
        """Waits until the broker has every queued event; counts what it refused."""
        if not pending:
            return
        self.sink.flush()
        for index, event_id, check in pending:
            try:
                check()
            except IngestUnavailable as error:
                self.metrics.on_rejected(PRODUCE_FAILED)
                result.reject(index, event_id, f"{PRODUCE_FAILED}: {error}")
            else:
                result.accepted += 1
                self.metrics.on_ingested()
        pending.clear()
