"""The gRPC server: the `coldstart.v1.Recommender` servicer, health and reflection.

Two layers, so the protobuf stays at the edge:
- `Recommender` and `Ingestor` are the domain: they take plain values, check
  them, read the user's state (one Redis round trip), score (one matrix-vector
  product and a top-k) or validate and produce events, and raise the errors of
  `service.errors` (or the model's and the event parser's own).
- `RecommenderServicer` translates protobuf to those calls and back, and
  nothing else. Every method runs under `_rpc`, the one place where a domain
  error becomes a gRPC status (the `STATUS` table) and where each call is timed
  and counted by method and code.

A Recommend never fails because Redis does: the user is scored from the
meta-learned prior and the answer says `DEGRADED`. A state adapted under an
older model is re-adapted from its stored history on read (the consumer
rewrites it on the user's next event), so a deploy loses no personalisation.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from kafka import KafkaProducer
from kafka.errors import KafkaError

from service.errors import IngestUnavailable, InvalidRequest, StreamTooLong, TooManyStreams
from service.events import (
    MAX_ID_CHARS,
    UNDECODABLE,
    Event,
    InvalidEvent,
    check_id,
    check_item,
    event_from_mapping,
)
from service.history import HistoryError
from service.metrics import Metrics
from service.model import ServingModel, UnknownFeatureError, item_indices
from service.store import REDIS_ERRORS, StoreError, UserRecord

logger = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
MAX_K = 1000  # items per Recommend
MAX_CANDIDATES = 10_000  # candidate_item_ids per Recommend
MAX_REJECTIONS = 100  # rejection entries listed in a RecordEvents response
STREAM_CAP = "stream_cap"  # rejection reason of the event that overflowed a stream
PRODUCE_FAILED = "produce_failed"  # rejection reason of an event the broker did not take

# The one table from domain error to gRPC status; the first matching class wins.
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownFeatureError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidEvent, grpc.StatusCode.INVALID_ARGUMENT),
    (StreamTooLong, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TooManyStreams, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (IngestUnavailable, grpc.StatusCode.UNAVAILABLE),
)


class StateReader(Protocol):
    """What serving needs of service.store.UserStore."""

    def get(self, user_id: str) -> UserRecord | None: ...


class EventSink(Protocol):
    """Where accepted events go: the events topic, keyed by user id."""

    def send(self, event: Event) -> Callable[[], None]:
        """Queue `event`; returns a function that raises if it was not delivered."""
        ...

    def flush(self) -> None: ...


# --- the domain --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    k: int
    include_seen: bool = False
    features: Mapping[str, str] = field(default_factory=dict)
    candidates: Sequence[str] = ()


@dataclass(frozen=True)
class Recommendation:
    items: list[tuple[str, float]]  # (item id, score), best first
    model_version: str
    state: str  # "cold", "adapted" or "degraded"
    interactions_used: int = 0
    state_version: int = 0


@dataclass(frozen=True)
class UserSummary:
    user_id: str
    state: str  # "cold", "adapted" or "degraded"
    history_length: int = 0
    state_version: int = 0
    model_version: str = ""
    updated_at_ms: int = 0


def check_user_id(user_id: str) -> None:
    try:
        check_id("user_id", user_id)
    except InvalidEvent as error:
        raise InvalidRequest(error.message) from None


class ThrottledWarning:
    """At most one warning line per interval, counting those held back. During a Redis
    outage every Recommend degrades: at 1,000 requests a second a line each would flood
    the log, and the metrics already count every one."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._next = 0.0  # time.monotonic() from which the next line may be written
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                return
            held, self._held, self._next = self._held, 0, now + self.interval_s
        if held:
            message += f" ({held} more such answers since the last line)"
        logger.warning(message, *args)


class Recommender:
    """Top-k for a user from their stored state, the prior, or (Redis down) the prior.

    `model` may be replaced while serving (service.reload); each call reads it once, so
    one answer never mixes two models."""

    def __init__(self, model: ServingModel, store: StateReader, metrics: Metrics) -> None:
        self.model = model
        self.store = store
        self.metrics = metrics
        self._warn_degraded = ThrottledWarning(interval_s=10.0)

    def recommend(self, query: RecommendQuery) -> Recommendation:
        model = self.model
        candidates = self._check(query, model)
        model.check_features(query.features)  # raises UnknownFeatureError
        record, state = self._read(query.user_id)
        if record is not None:
            try:
                return self._personal(query, model, record, candidates)
            except HistoryError as error:  # one user's history is unreadable: the others are fine
                self._warn_degraded("user %r: answering from the prior: %s", query.user_id, error)
                state = "degraded"
        items = model.top_k(model.cold_vector(query.features), query.k, candidates=candidates)
        self.metrics.on_response(state)
        return Recommendation(items, model.version, state)

    def user_state(self, user_id: str) -> UserSummary:
        check_user_id(user_id)
        record, state = self._read(user_id)
        if record is None:
            return UserSummary(user_id, state)
        return UserSummary(
            user_id,
            "adapted" if self.model.seen(record.history) is not None else "degraded",
            len(record.history),
            record.state_version,
            record.model_version,
            record.updated_at_ms,
        )

    def _personal(
        self,
        query: RecommendQuery,
        model: ServingModel,
        record: UserRecord,
        candidates: list[int] | None,
    ) -> Recommendation:
        vector, known = _vector(model, record)
        seen = () if query.include_seen else known
        items = model.top_k(vector, query.k, exclude=seen, candidates=candidates)
        self.metrics.on_response("adapted")
        return Recommendation(items, model.version, "adapted", len(known), record.state_version)

    def _check(self, query: RecommendQuery, model: ServingModel) -> list[int] | None:
        """Validates the request; the candidates' item indices, None when unrestricted."""
        check_user_id(query.user_id)
        if not 1 <= query.k <= MAX_K:
            raise InvalidRequest(f"k must be between 1 and {MAX_K}, got {query.k}")
        if not query.candidates:
            return None
        if len(query.candidates) > MAX_CANDIDATES:
            raise InvalidRequest(
                f"candidate_item_ids has {len(query.candidates)} ids, "
                f"more than the limit of {MAX_CANDIDATES}"
            )
        # Ids the model does not know are left out, as the API promises: a catalogue grows
        # between model versions, and a client's new items must not fail its requests.
        index = model.item_index
        return [index[item] for item in query.candidates if item in index]

    def _read(self, user_id: str) -> tuple[UserRecord | None, str]:
        """The stored record (one Redis round trip) and the state kind when there is none."""
        try:
            record = self.store.get(user_id)
        except REDIS_ERRORS as error:
            self.metrics.on_redis_error()
            self._warn_degraded("Redis unavailable, answering from the prior: %s", error)
            return None, "degraded"
        except StoreError as error:  # one user's record is unreadable: the others are fine
            self._warn_degraded("answering from the prior: %s", error)
            return None, "degraded"
        return record, "cold"


def _vector(model: ServingModel, record: UserRecord) -> tuple[np.ndarray, list[int]]:
    """The user's vector and the indices of their history items this model knows."""
    interactions = model.interactions(record.history)
    return model.vector(record, interactions), item_indices(interactions)


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
    """Validates streamed events against the event schema and the catalogue, then produces
    the valid ones. A bad event is counted and explained; it does not end the stream.

    An open stream holds a gRPC worker thread for as long as its client keeps it open, so
    at most max_streams run at once: the other workers stay free for Recommend."""

    def __init__(
        self,
        item_index: Mapping[str, int],
        sink: EventSink,
        metrics: Metrics,
        max_events: int,
        max_streams: int,
    ) -> None:
        self.item_index = item_index
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
                check_item(event, self.item_index)
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
        try:
            future = self._get().send(self.topic, key=event.user_id.encode(), value=event.to_json())
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


# --- the gRPC edge ---------------------------------------------------------------------

STATE_KIND = {
    "cold": recommender_pb2.COLD,
    "adapted": recommender_pb2.ADAPTED,
    "degraded": recommender_pb2.DEGRADED,
}
Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class Undecodable:
    """A request message that is not valid protobuf, e.g. a string field that is not UTF-8."""

    reason: str


def _lenient(message: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def parse(raw: bytes) -> Message | Undecodable:
        try:
            return message.FromString(raw)
        except DecodeError as error:
            return Undecodable(f"the request is not a valid {message.DESCRIPTOR.name}: {error}")

    return parse


def _add_servicer(servicer: RecommenderServicer, server: grpc.Server) -> None:
    """What the generated add_RecommenderServicer_to_server does, but with requests read by
    _lenient: a message gRPC cannot decode otherwise fails inside gRPC as INTERNAL, before
    _rpc can count it, and mid-stream it ends RecordEvents without saying which of the
    earlier events were produced, so a client resending them applies them twice. Here it
    is INVALID_ARGUMENT, and in a stream one rejected event."""
    service = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
    handlers = {}
    for method in service.methods:
        if method.server_streaming:  # none yet; each kind of method needs its own handler
            raise TypeError(f"{method.name}: a server-streaming method needs a handler here")
        kind = grpc.unary_unary_rpc_method_handler
        if method.client_streaming:
            kind = grpc.stream_unary_rpc_method_handler
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=_lenient(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(
                method.output_type
            ).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def status_for(error: Exception) -> grpc.StatusCode:
    """The gRPC status of a domain error (INTERNAL for anything unexpected)."""
    for kind, code in STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _rpc(method: str) -> Callable[[Handler], Handler]:
    """Times and counts a servicer method by code, and turns domain errors into statuses."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def call(self: RecommenderServicer, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, Undecodable):
                    raise InvalidRequest(request.reason)
                return handler(self, request, context)
            except Exception as error:
                code = status_for(error)
                if code is grpc.StatusCode.INTERNAL:
                    if not context.is_active():
                        code = grpc.StatusCode.CANCELLED
                        raise
                    logger.exception("%s failed", method)
                    context.abort(code, f"internal error in {method}")
                context.abort(code, str(error))
            finally:
                self.metrics.observe_request(method, code.name, time.perf_counter() - started)

        return call  # type: ignore[return-value]

    return decorate


# The JSON type of each EventType number. proto3 keeps a number it does not know (a newer
# client's), which stays a number here, for the parser to reject as unknown_type.
_EVENT_TYPES = {number: name.lower() for name, number in event_pb2.EventType.items()}
_EVENT_TYPES[0] = "unspecified"


def _event_document(event: event_pb2.Event | Undecodable) -> dict[str, Any] | InvalidEvent:
    """A protobuf Event as the JSON mapping the event parser checks."""
    if isinstance(event, Undecodable):
        return InvalidEvent(UNDECODABLE, event.reason)
    kind = _EVENT_TYPES.get(event.type, str(event.type))
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": kind,
        "value": event.value,
        "ts": event.ts,
    }


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    """Protobuf in, domain call, protobuf out."""

    def __init__(self, recommender: Recommender, ingestor: Ingestor, metrics: Metrics) -> None:
        self.recommender = recommender
        self.ingestor = ingestor
        self.metrics = metrics

    @_rpc("Recommend")
    def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        answer = self.recommender.recommend(
            RecommendQuery(
                user_id=request.user_id,
                k=request.k,
                include_seen=request.include_seen,
                features=dict(request.features),
                candidates=list(request.candidate_item_ids),
            )
        )
        return recommender_pb2.RecommendResponse(
            items=[recommender_pb2.ScoredItem(item_id=i, score=s) for i, s in answer.items],
            model_version=answer.model_version,
            state=STATE_KIND[answer.state],
            interactions_used=answer.interactions_used,
            state_version=answer.state_version,
        )

    @_rpc("RecordEvents")
    def RecordEvents(
        self, request_iterator: Iterator[event_pb2.Event], context: grpc.ServicerContext
    ) -> recommender_pb2.RecordEventsResponse:
        result = self.ingestor.ingest(_event_document(event) for event in request_iterator)
        return recommender_pb2.RecordEventsResponse(
            accepted=result.accepted,
            rejected=result.rejected,
            rejections=[
                recommender_pb2.EventRejection(index=i, event_id=e, reason=r)
                for i, e, r in result.rejections
            ],
        )

    @_rpc("GetUserState")
    def GetUserState(
        self, request: recommender_pb2.GetUserStateRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.UserState:
        summary = self.recommender.user_state(request.user_id)
        return recommender_pb2.UserState(
            user_id=summary.user_id,
            state=STATE_KIND[summary.state],
            history_length=summary.history_length,
            state_version=summary.state_version,
            model_version=summary.model_version,
            updated_at_ms=summary.updated_at_ms,
        )


@dataclass
class GrpcServer:
    """A started gRPC server, its health service and the port it listens on."""

    server: grpc.Server
    health: health.HealthServicer
    port: int

    def not_serving(self) -> None:
        """Tell health checks to stop sending traffic (the first step of a shutdown)."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace_s: float) -> None:
        """Refuse new RPCs, give in-flight ones `grace_s`, then cancel them; returns when done."""
        self.not_serving()
        self.server.stop(grace_s).wait(grace_s + 1.0)


def start_server(
    servicer: RecommenderServicer,
    *,
    host: str = "[::]",
    port: int = 0,
    workers: int = 16,
    max_concurrent_rpcs: int = 256,
    max_message_bytes: int = 4 * 1024 * 1024,
    credentials: grpc.ServerCredentials | None = None,
) -> GrpcServer:
    """Starts the Recommender with health (SERVING) and reflection; port 0 picks a free one.
    With `credentials` the port speaks TLS only."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A client that vanished without closing its stream is found within about 80 s
            # (a ping a minute, 20 s to answer) and its RPC cancelled, freeing its worker and
            # RecordEvents slot, rather than after gRPC's default of two hours.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ],
    )
    _add_servicer(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    try:  # grpcio returns 0 or, since 1.60, raises RuntimeError when it cannot bind
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(
            f"cannot listen for gRPC on {host}:{port} (--grpc-host / --grpc-port): "
            "the port is taken or the address is not this machine's"
        )
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tls = "off" if credentials is None else "on"
    logger.info("gRPC %s on %s:%s (TLS %s; health, reflection on)", SERVICE_NAME, host, bound, tls)
    return GrpcServer(server, health_servicer, bound)
