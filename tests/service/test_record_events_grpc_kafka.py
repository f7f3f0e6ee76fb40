"""Integration: RecordEvents through gRPC into a real tansu broker: valid events produced,
bad ones rejected with a reason, stream caps, and a broker that cannot be reached."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from coldstart.v1 import event_pb2, recommender_pb2
from kafka import KafkaConsumer, TopicPartition

from service.grpc_server import SERVICE_NAME
from service.kafka_producer import KafkaEventSink
from service.localstack import LocalStack, free_port
from service.model import ServingModel
from tests.helpers.grpc_service import (
    TOPIC,
    Running,
    event,
    held_stream,
    recommend,
    running,
)

Code = grpc.StatusCode


def test_record_events_produces_valid_events_and_explains_rejections(
    service: Running, stack: LocalStack
) -> None:
    # Users of this test alone: the topic is the module's, and other tests write to it too.
    events = [
        event(0, user_id="produce-0"),
        event(1, user_id="produce-1", type=event_pb2.RATING, value=4.0),
        event(2, item_id="not-an-item"),
        event(3, user_id=""),
        event(4, type=event_pb2.EVENT_TYPE_UNSPECIFIED),
    ]
    response = service.stub.RecordEvents(iter(events), timeout=15)
    assert (response.accepted, response.rejected) == (2, 3)
    reasons = {r.index: (r.event_id, r.reason) for r in response.rejections}
    assert reasons[2] == ("e2", "item 'not-an-item' is not in the catalogue")
    assert reasons[3] == ("e3", "user_id is empty")
    assert reasons[4][1].startswith("type 'unspecified' is not one of")
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    produced: dict[str, dict] = {}
    try:
        consumer.assign([TopicPartition(TOPIC, p) for p in (0, 1)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 10
        while len(produced) < 2 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                produced |= {r.key.decode(): json.loads(r.value) for r in batch}
            produced = {key: value for key, value in produced.items() if key.startswith("produce-")}
    finally:
        consumer.close()
    assert produced["produce-0"]["event_id"] == "e0"
    assert produced["produce-1"] == {
        "event_id": "e1",
        "user_id": "produce-1",
        "item_id": "i1",
        "type": "rating",
        "value": 4.0,
        "ts": 1_700_000_000_001,
    }


def test_an_event_that_is_not_valid_protobuf_is_one_rejection_in_its_stream(
    service: Running,
) -> None:
    """The events before and after it are produced and counted: the client learns exactly
    which one to fix, and resends nothing that was accepted."""
    raw = service.channel.stream_unary(
        f"/{SERVICE_NAME}/RecordEvents",
        response_deserializer=recommender_pb2.RecordEventsResponse.FromString,
    )
    not_utf8 = bytes.fromhex("1202fffe")  # user_id (field 2) = ff fe
    stream = [event(0).SerializeToString(), not_utf8, event(1).SerializeToString()]
    response = raw(iter(stream), timeout=15)
    assert (response.accepted, response.rejected) == (2, 1)
    (rejection,) = response.rejections
    assert rejection.index == 1 and "not a valid Event" in rejection.reason


def test_an_event_type_of_a_newer_api_version_is_a_rejection(service: Running) -> None:
    response = service.stub.RecordEvents(iter([event(0, type=99)]), timeout=15)
    assert (response.accepted, response.rejected) == (0, 1)
    assert response.rejections[0].reason.startswith("type '99' is not one of")


def test_record_events_caps_a_stream(service: Running) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.RecordEvents(iter([event(n) for n in range(8)]), timeout=15)
    assert raised.value.code() == Code.RESOURCE_EXHAUSTED
    assert "may carry 5 events; the first 5 were processed (5 accepted" in raised.value.details()


def test_open_record_streams_leave_workers_for_recommend(
    model: ServingModel, stack: LocalStack
) -> None:
    release = threading.Event()
    # 4 workers, at most 2 streams: without the cap, 4 held streams would take every worker
    # and Recommend would wait for one of them to end.
    with running(model, stack, stack.redis_url, max_streams=2) as started:
        held = [
            started.stub.RecordEvents.future(held_stream(2 * n, release), timeout=20)
            for n in range(4)
        ]
        refused = []
        deadline = time.monotonic() + 10
        while len(refused) < 2 and time.monotonic() < deadline:
            refused = [call for call in held if call.done()]
            time.sleep(0.05)
        assert recommend(started, user_id="beside-streams", k=3).state == recommender_pb2.COLD
        release.set()
        assert len(refused) == 2
        for call in refused:
            assert call.exception().code() == Code.RESOURCE_EXHAUSTED
            assert "2 RecordEvents streams are already open" in call.exception().details()
        open_ones = [call for call in held if call not in refused]
        assert [call.result().accepted for call in open_ones] == [2, 2]
        # Both slots are free again once the streams have ended.
        assert started.stub.RecordEvents(iter([event(9)]), timeout=15).accepted == 1


def test_record_events_with_kafka_unreachable_is_unavailable_quickly(
    model: ServingModel, stack: LocalStack
) -> None:
    dead = KafkaEventSink(f"127.0.0.1:{free_port()}", TOPIC, timeout_s=1.0)
    with running(model, stack, stack.redis_url, sink=dead) as started:
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            started.stub.RecordEvents(iter([event(0)]), timeout=15)
        assert refused.value.code() == Code.UNAVAILABLE
        assert "cannot reach Kafka" in refused.value.details()
        assert time.monotonic() - began < 5
        assert recommend(started, user_id="no-kafka", k=3).state == recommender_pb2.COLD


def test_concurrent_first_ingest_calls_share_one_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Created side by side (with Kafka down each creation takes the timeout, and callers
    must not wait for it in turn); the extras are closed, not leaked with unflushed events."""
    created, closed = [], []
    counting, running, most_running = threading.Lock(), [0], [0]

    class SlowProducer:  # KafkaProducer's constructor blocks while it bootstraps
        def __init__(self, **options: object) -> None:
            with counting:
                running[0] += 1
                most_running[0] = max(most_running[0], running[0])
            time.sleep(0.2)
            with counting:
                running[0] -= 1
            created.append(self)

        def close(self, timeout: float | None = None) -> None:
            closed.append(self)

    monkeypatch.setattr("service.kafka_producer.KafkaProducer", SlowProducer)
    sink = KafkaEventSink("127.0.0.1:1", TOPIC)
    got = []
    callers = [threading.Thread(target=lambda: got.append(sink._get())) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert most_running[0] > 1
    assert len(got) == 4 and all(producer is got[0] for producer in got)
    assert got[0] not in closed and len(closed) == len(created) - 1
