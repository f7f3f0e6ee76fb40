"""A gRPC service started in-process on a real Redis and broker, and helpers to call it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import numpy as np
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc

from service.app import serving_redis
from service.grpc_server import GrpcServer, start_server
from service.history import History, HistoryEntry
from service.ingest import Ingestor
from service.item_registry import ItemRegistry
from service.item_store import ItemStore
from service.kafka_producer import KafkaEventSink
from service.live_catalogue import LiveCatalogue
from service.localstack import LocalStack
from service.metrics import Metrics
from service.model import ServingModel
from service.profiles import ProfileWriter
from service.recommend import Recommender
from service.servicer import RecommenderServicer
from service.state import UserRecord
from service.store import UserStore

TOPIC = "coldstart.events.servertest"  # the events topic of the `service` fixture
ITEMS_TOPIC = "coldstart.items.servertest"
N_ITEMS = 40  # items of the tiny model (write_tiny_model's default)
NOT_UTF8_REQUEST = bytes.fromhex("0a02fffe1005")  # field 1, a string, holds bytes ff fe


@dataclass
class Running:
    stub: recommender_pb2_grpc.RecommenderStub
    channel: grpc.Channel
    server: GrpcServer
    metrics: Metrics
    store: UserStore


@contextmanager
def running(
    model: ServingModel,
    stack: LocalStack,
    redis_url: str,
    max_events: int = 1000,
    max_streams: int = 2,
    sink: KafkaEventSink | None = None,
    register_unknown_items: bool = True,
    **limits: int,
) -> Iterator[Running]:
    """A started server (its sink: the stack's broker unless given); `limits` are
    start_server's port (0 unless given), max_concurrent_rpcs and max_message_bytes."""
    metrics = Metrics()
    store = UserStore(serving_redis(redis_url, timeout_s=0.25))
    sink = sink or KafkaEventSink(stack.kafka_bootstrap, TOPIC)
    item_sink = KafkaEventSink(stack.kafka_bootstrap, ITEMS_TOPIC)
    items = ItemRegistry(model, LiveCatalogue(), item_sink, ItemStore(store.client), metrics)
    servicer = RecommenderServicer(
        Recommender(model, store, metrics),
        Ingestor(model, sink, metrics, max_events, max_streams, register_unknown_items),
        ProfileWriter(model, store, metrics),
        metrics,
        items,
    )
    try:
        server = start_server(servicer, host="127.0.0.1", workers=4, **limits)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Running(
                recommender_pb2_grpc.RecommenderStub(channel), channel, server, metrics, store
            )
        finally:
            channel.close()
            server.stop(0.5)
    finally:
        sink.close()
        item_sink.close()
        store.close()


def adapted_user(
    service: Running, model: ServingModel, user_id: str, items: list[str], version: str = ""
) -> UserRecord:
    """Writes a stored state for `user_id` with a random vector and `items` as history."""
    rng = np.random.default_rng(abs(hash(user_id)) % 2**32)
    record = UserRecord(
        user_id=user_id,
        vector=rng.normal(size=model.dim).astype(np.float32),
        history=History(HistoryEntry(item, 4.0 if n % 2 else None) for n, item in enumerate(items)),
        model_version=version or model.version,
        state_version=1,
        watermarks={("events", 0): 7},
        updated_at_ms=1_700_000_000_000,
    )
    assert service.store.put_many([record]) == {user_id}
    return record


def recommend(service: Running, **fields) -> recommender_pb2.RecommendResponse:
    return service.stub.Recommend(recommender_pb2.RecommendRequest(**fields), timeout=5)


def ids(response: recommender_pb2.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


def event(n: int, **overrides) -> event_pb2.Event:
    fields = {
        "event_id": f"e{n}",
        "user_id": f"ingest-{n % 2}",
        "item_id": f"i{n % N_ITEMS}",
        "type": event_pb2.CLICK,
        "value": 1.0,
        "ts": 1_700_000_000_000 + n,
    }
    return event_pb2.Event(**{**fields, **overrides})


def held_stream(first: int, release: threading.Event) -> Iterator[event_pb2.Event]:
    """A RecordEvents stream that sends one event, then stays open until `release`."""
    yield event(first)  # a first message, so the call surely reaches the server (no corking)
    release.wait(15)
    yield event(first + 1)
