"""Integration: the gRPC server against a real redis-server (and a real tansu broker for
RecordEvents), both started by LocalStack, with a tiny untrained model from an artifact.

Covers the Recommend paths (cold, adapted, re-adapted after a model change, seen-item
filtering, candidates), every INVALID_ARGUMENT case and its message, DEGRADED when Redis is
gone (never UNKNOWN), GetUserState, RecordEvents into the topic, health, reflection, and a
property test over RecommendRequest fields that never sees UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import grpc
import numpy as np
import pytest
import torch
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition
from tiny_model import write_tiny_model

from service import model as service_model
from service.app import serving_redis
from service.history import History, HistoryEntry
from service.localstack import LocalStack, free_port
from service.metrics import Metrics
from service.model import ServingModel
from service.server import (
    SERVICE_NAME,
    GrpcServer,
    Ingestor,
    KafkaEventSink,
    Recommender,
    RecommenderServicer,
    ThrottledWarning,
    start_server,
)
from service.store import UserRecord, UserStore, user_key
from service.topics import create_topic
from trainer import artifact

TOPIC = "coldstart.events.servertest"
N_ITEMS = 40
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    model_dir = write_tiny_model(tmp_path_factory.mktemp("server"), items=N_ITEMS)
    return ServingModel(artifact.load(model_dir))


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(kafka=True, redis=True) as started:
        create_topic(started.kafka_bootstrap, TOPIC, 2)
        yield started


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
    **limits: int,
) -> Iterator[Running]:
    """A started server (its sink: the stack's broker unless given); `limits` are
    start_server's port (0 unless given), max_concurrent_rpcs and max_message_bytes."""
    metrics = Metrics()
    store = UserStore(serving_redis(redis_url, timeout_s=0.25))
    sink = sink or KafkaEventSink(stack.kafka_bootstrap, TOPIC)
    servicer = RecommenderServicer(
        Recommender(model, store, metrics),
        Ingestor(model.item_index, sink, metrics, max_events, max_streams),
        metrics,
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
        store.close()


@pytest.fixture(scope="module")
def service(model: ServingModel, stack: LocalStack) -> Iterator[Running]:
    with running(model, stack, stack.redis_url, max_events=5) as started:
        yield started


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


def test_unknown_user_is_cold_from_the_prior(service: Running, model: ServingModel) -> None:
    response = recommend(service, user_id="nobody", k=10)
    assert response.state == recommender_pb2.COLD
    assert response.model_version == model.version
    assert (response.interactions_used, response.state_version) == (0, 0)
    assert ids(response) == [item for item, _ in model.top_k(model.prior, 10)]
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)


def test_cold_user_with_features_is_conditioned_on_them(
    service: Running, model: ServingModel
) -> None:
    features = {name: "x" for name in model.feature_names}
    features[model.feature_names[0]] = next(iter(model._codes[0]))  # a known value
    response = recommend(service, user_id="newcomer", k=5, features=features)
    expected = model.top_k(model.cold_vector(features), 5)
    assert response.state == recommender_pb2.COLD
    assert ids(response) == [item for item, _ in expected]


def test_adapted_user_is_scored_from_the_stored_vector_without_seen_items(
    service: Running, model: ServingModel
) -> None:
    seen = model.item_ids[:3]
    record = adapted_user(service, model, "adapted-1", seen)
    response = recommend(service, user_id="adapted-1", k=N_ITEMS)
    assert response.state == recommender_pb2.ADAPTED
    assert (response.interactions_used, response.state_version) == (3, 1)
    assert not set(ids(response)) & set(seen)
    assert len(response.items) == N_ITEMS - 3
    expected = model.top_k(torch.from_numpy(record.vector), 10, exclude=[0, 1, 2])
    # Compared by score: items with equal scores may come in either order.
    returned = [item.score for item in response.items[:10]]
    np.testing.assert_allclose(returned, [score for _, score in expected], rtol=1e-5)
    scores = model.scores(torch.from_numpy(record.vector))
    for item in response.items[:10]:
        assert item.score == pytest.approx(float(scores[model.item_index[item.item_id]]), rel=1e-5)


def test_include_seen_returns_history_items_too(service: Running, model: ServingModel) -> None:
    adapted_user(service, model, "adapted-2", model.item_ids[:3])
    response = recommend(service, user_id="adapted-2", k=N_ITEMS, include_seen=True)
    assert response.state == recommender_pb2.ADAPTED
    assert set(ids(response)) == set(model.item_ids)


def test_candidates_restrict_the_ranking_and_still_drop_seen(
    service: Running, model: ServingModel
) -> None:
    adapted_user(service, model, "adapted-3", model.item_ids[:2])
    candidates = model.item_ids[:6]
    response = recommend(service, user_id="adapted-3", k=10, candidate_item_ids=candidates)
    assert sorted(ids(response)) == sorted(candidates[2:])
    cold = recommend(service, user_id="cold-3", k=3, candidate_item_ids=candidates)
    assert len(cold.items) == 3 and set(ids(cold)) <= set(candidates)


def test_candidates_the_model_does_not_know_are_ignored(
    service: Running, model: ServingModel
) -> None:
    known = model.item_ids[:3]
    response = recommend(service, user_id="cold-4", k=10, candidate_item_ids=[*known, "new-item"])
    assert sorted(ids(response)) == sorted(known)
    assert recommend(service, user_id="cold-4", k=10, candidate_item_ids=["new-item"]).items == []


def count_adaptations(model: ServingModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gains an entry at each call of model.adapt (for this test only)."""
    adapt, calls = model.adapt, []
    monkeypatch.setattr(model, "adapt", lambda histories: calls.append(1) or adapt(histories))
    return calls


def test_state_of_another_model_version_is_re_adapted_from_its_history(
    service: Running, model: ServingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = adapted_user(service, model, "old-model-user", model.item_ids[5:9], version="old")
    adapted = model.adapt([model.interactions(record.history)])[0]
    expected = model.top_k(adapted, 10, exclude=[5, 6, 7, 8])
    calls = count_adaptations(model, monkeypatch)
    for _ in range(2):  # the second read is served from the first's re-adaptation
        response = recommend(service, user_id="old-model-user", k=10)
        assert response.state == recommender_pb2.ADAPTED
        assert response.interactions_used == 4
        assert ids(response) == [item for item, _ in expected]
    assert len(calls) == 1
    # A new write of the user (still from the old model) is adapted afresh.
    newer = replace(
        record, history=History([HistoryEntry(model.item_ids[9], None)]), state_version=2
    )
    assert service.store.put_many([newer]) == {"old-model-user"}
    response = recommend(service, user_id="old-model-user", k=10)
    assert (response.interactions_used, response.state_version, len(calls)) == (1, 2, 2)
    assert model.item_ids[9] not in ids(response)


def test_re_adapted_vectors_are_kept_for_a_bounded_number_of_users(
    model: ServingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_model, "READAPTED_CACHE", 2)
    calls = count_adaptations(model, monkeypatch)
    stale = [
        UserRecord(
            f"b{n}", np.zeros(model.dim, np.float32), History([HistoryEntry(item, None)]), "old", 1
        )
        for n, item in enumerate(model.item_ids[:3])
    ]
    for record in [*stale, stale[2], stale[0]]:
        model.vector(record, model.interactions(record.history))
    assert len(calls) == 4  # b2 was kept; b0, the oldest of three, was not


def test_an_unreadable_stored_state_answers_degraded_from_the_prior(
    service: Running, model: ServingModel
) -> None:
    adapted_user(service, model, "torn", model.item_ids[:2])
    adapted_user(service, model, "torn-older", model.item_ids[:2], version="older")  # re-adapts
    for user_id in ("torn", "torn-older"):
        service.store.client.hset(user_key(user_id), "h0", f"{model.item_ids[0]}\x1ffour")
    service.store.client.hset(user_key("no-vector"), mapping={"s": b"1"})
    for user_id in ("torn", "torn-older", "no-vector"):
        response = recommend(service, user_id=user_id, k=5)
        assert response.state == recommender_pb2.DEGRADED
        assert ids(response) == [item for item, _ in model.top_k(model.prior, 5)]
        state = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id=user_id))
        assert state.state == recommender_pb2.DEGRADED
    torn = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="torn"))
    assert (torn.history_length, torn.state_version) == (1, 1)  # the stored, corrupt entry


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": "u", "k": 0}, "k must be between 1 and 1000, got 0"),
        ({"user_id": "u", "k": -3}, "k must be between 1 and 1000, got -3"),
        ({"user_id": "u", "k": 1001}, "k must be between 1 and 1000, got 1001"),
        ({"user_id": "", "k": 5}, "user_id is empty"),
        ({"user_id": "u" * 257, "k": 5}, "user_id has 257 characters, more than the limit of 256"),
        ({"user_id": "u\tv", "k": 5}, "user_id contains a control character"),
        (
            {"user_id": "u", "k": 5, "candidate_item_ids": ["i1"] * 10_001},
            "candidate_item_ids has 10001 ids, more than the limit of 10000",
        ),
        ({"user_id": "u", "k": 5, "features": {"shoe_size": "9"}}, "unknown feature shoe_size"),
        (  # a detail this long would be over gRPC's 16 KiB limit: RESOURCE_EXHAUSTED instead
            {"user_id": "u", "k": 5, "features": {f"f{n:03d}" + "x" * 96: "1" for n in range(200)}},
            f"f004{'x' * 36}... and 195 more; this model knows",
        ),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_message(
    service: Running, fields: dict, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        recommend(service, **fields)
    assert raised.value.code() == Code.INVALID_ARGUMENT
    assert message in raised.value.details()
    assert len(raised.value.details()) < 1024


def test_get_user_state_summarises_stored_and_unknown_users(
    service: Running, model: ServingModel
) -> None:
    adapted_user(service, model, "state-user", model.item_ids[:4])
    stored = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="state-user"))
    assert stored.state == recommender_pb2.ADAPTED
    assert (stored.history_length, stored.state_version) == (4, 1)
    assert (stored.model_version, stored.updated_at_ms) == (model.version, 1_700_000_000_000)
    unknown = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="ghost"))
    assert unknown.state == recommender_pb2.COLD
    assert (unknown.history_length, unknown.state_version, unknown.updated_at_ms) == (0, 0, 0)
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id=""))
    assert raised.value.code() == Code.INVALID_ARGUMENT


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


# A RecommendRequest whose user_id (field 1) is the bytes ff fe, which are not UTF-8, and k 5.
NOT_UTF8_REQUEST = bytes.fromhex("0a02fffe1005")


def test_a_request_that_is_not_valid_protobuf_is_invalid_argument_and_counted(
    service: Running,
) -> None:
    raw = service.channel.unary_unary(f"/{SERVICE_NAME}/Recommend")  # bytes in, bytes out
    labels = {"method": "Recommend", "code": "INVALID_ARGUMENT"}
    count = lambda: service.metrics.registry.get_sample_value(  # noqa: E731
        "coldstart_grpc_requests_total", labels
    )
    before = count() or 0.0
    with pytest.raises(grpc.RpcError) as raised:
        raw(NOT_UTF8_REQUEST, timeout=5)
    assert raised.value.code() == Code.INVALID_ARGUMENT
    assert "not a valid RecommendRequest" in raised.value.details()
    assert "bad UTF-8" in raised.value.details()
    assert count() == before + 1


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


def held_stream(first: int, release: threading.Event) -> Iterator[event_pb2.Event]:
    """A RecordEvents stream that sends one event, then stays open until `release`."""
    yield event(first)  # a first message, so the call surely reaches the server (no corking)
    release.wait(15)
    yield event(first + 1)


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


def test_rpcs_beyond_the_concurrency_limit_are_refused_at_once(
    model: ServingModel, stack: LocalStack
) -> None:
    release = threading.Event()
    with running(model, stack, stack.redis_url, max_concurrent_rpcs=1) as started:
        # The stream holds the only RPC slot until released.
        held = started.stub.RecordEvents.future(held_stream(0, release), timeout=20)
        # Probing at once could take the slot first and get the stream itself refused.
        time.sleep(0.3)
        deadline = time.monotonic() + 10
        code = Code.OK
        while code is not Code.RESOURCE_EXHAUSTED and time.monotonic() < deadline:
            assert not held.done(), f"the held stream ended early: {held.exception()}"
            try:
                recommend(started, user_id="waiting", k=3)
            except grpc.RpcError as refused:
                code = refused.code()
        release.set()
        assert code is Code.RESOURCE_EXHAUSTED
        assert held.result().accepted == 2  # the RPC holding the slot was not disturbed
        # The server frees the slot just after the client has its answer: poll for it.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert recommend(started, user_id="after", k=3).state == recommender_pb2.COLD
                break
            except grpc.RpcError as refused:
                assert refused.code() is Code.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the slot was not freed"
                time.sleep(0.01)


def test_a_message_over_the_size_limit_is_resource_exhausted(
    model: ServingModel, stack: LocalStack
) -> None:
    with running(model, stack, stack.redis_url, max_message_bytes=1024) as started:
        assert recommend(started, user_id="small", k=3).state == recommender_pb2.COLD
        with pytest.raises(grpc.RpcError) as refused:
            recommend(started, user_id="big", k=3, candidate_item_ids=["i1"] * 1000)
    assert refused.value.code() == Code.RESOURCE_EXHAUSTED


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


def test_health_answers_serving(service: Running) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_services(service: Running) -> None:
    database = ProtoReflectionDescriptorDatabase(service.channel)
    services = database.get_services()
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(services)
    described = database.FindFileContainingSymbol(SERVICE_NAME)
    assert described.package == "coldstart.v1"
    assert "coldstart/v1/event.proto" in described.dependency


names = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user_id=st.one_of(names, st.sampled_from(["adapted-1", "old-model-user", "nobody"])),
    k=st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 1002)),
    include_seen=st.booleans(),
    features=st.dictionaries(
        st.one_of(st.sampled_from(["age", "gender", "occupation"]), names),
        names,
        max_size=4,
    ),
    candidates=st.lists(
        st.one_of(st.sampled_from([f"i{n}" for n in range(50)]), names), max_size=20
    ),
)
def test_no_request_sees_unknown_or_internal(
    service: Running, user_id: str, k: int, include_seen: bool, features: dict, candidates: list
) -> None:
    request = recommender_pb2.RecommendRequest(
        user_id=user_id,
        k=k,
        include_seen=include_seen,
        features=features,
        candidate_item_ids=candidates,
    )
    try:
        response = service.stub.Recommend(request, timeout=5)
    except grpc.RpcError as error:
        assert error.code() == Code.INVALID_ARGUMENT, error.details()
        assert error.details()
        return
    assert response.state in (recommender_pb2.COLD, recommender_pb2.ADAPTED)
    assert len(response.items) <= k  # fewer when the candidates are all seen
    if candidates:
        assert set(ids(response)) <= set(candidates)


def test_redis_stopped_answers_degraded_never_unknown(
    model: ServingModel, stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.server")
    with LocalStack(kafka=False, redis=True) as own, running(model, stack, own.redis_url) as svc:
        adapted_user(svc, model, "will-degrade", model.item_ids[:3])
        assert recommend(svc, user_id="will-degrade", k=5).state == recommender_pb2.ADAPTED
        own.stop()  # the Redis process is gone; the pooled connection breaks
        for _ in range(3):
            started = time.perf_counter()
            response = recommend(svc, user_id="will-degrade", k=5)
            assert time.perf_counter() - started < 1.0
            assert response.state == recommender_pb2.DEGRADED
            assert ids(response) == [item for item, _ in model.top_k(model.prior, 5)]
        state = svc.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="will-degrade"))
        assert state.state == recommender_pb2.DEGRADED
        values = svc.metrics.values()
        assert values["coldstart_redis_errors_total"] >= 4
        assert values['coldstart_recommend_responses_total{state="degraded"}'] == 3
    degraded_lines = [r for r in caplog.records if "answering from the prior" in r.getMessage()]
    assert len(degraded_lines) == 1  # four degraded answers, one line: an outage is not a flood


def test_a_throttled_warning_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.server")
    warn = ThrottledWarning(interval_s=0.2)
    for n in range(5):
        warn("degraded %s", n)
    time.sleep(0.25)
    warn("degraded %s", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "degraded 0",
        "degraded 5 (4 more such answers since the last line)",
    ]


def test_metrics_count_requests_by_method_and_code_and_pass_promtool(
    service: Running, model: ServingModel
) -> None:
    """Makes its own traffic of each kind counted, so it passes alone or in any order."""
    adapted_user(service, model, "metrics-user", model.item_ids[:3])
    recommend(service, user_id="metrics-user", k=3)
    with pytest.raises(grpc.RpcError):
        recommend(service, user_id="metrics-user", k=0)
    service.stub.RecordEvents(iter([event(0, item_id="not-an-item")]), timeout=15)
    with pytest.raises(grpc.RpcError):  # more events than the stream cap of 5
        service.stub.RecordEvents(iter([event(n) for n in range(8)]), timeout=15)
    values = service.metrics.values()
    assert values['coldstart_grpc_requests_total{code="OK",method="Recommend"}'] > 0
    assert values['coldstart_grpc_requests_total{code="INVALID_ARGUMENT",method="Recommend"}'] > 0
    assert values['coldstart_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="RecordEvents"}']
    assert values['coldstart_events_rejected_total{reason="unknown_item"}'] >= 1
    assert values['coldstart_recommend_responses_total{state="adapted"}'] > 0
    assert not any("UNKNOWN" in name or "INTERNAL" in name for name in values)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=service.metrics.scrape(), capture_output=True
    )
    assert checked.stdout + checked.stderr == b""
    assert checked.returncode == 0


def test_not_serving_after_shutdown_begins(model: ServingModel, stack: LocalStack) -> None:
    with running(model, stack, stack.redis_url) as svc:
        svc.server.not_serving()
        health = health_pb2_grpc.HealthStub(svc.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


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

    monkeypatch.setattr("service.server.KafkaProducer", SlowProducer)
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


def test_a_port_another_program_holds_is_an_error_naming_the_flags(
    model: ServingModel, stack: LocalStack
) -> None:
    """(Replicas share a port through SO_REUSEPORT; a program without it blocks the port.)"""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = f"127.0.0.1:{port} \\(--grpc-host / --grpc-port\\)"
        with pytest.raises(OSError, match=flags), running(model, stack, stack.redis_url, port=port):
            pass
