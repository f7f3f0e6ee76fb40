"""Integration: user profiles end to end, on a real tansu broker and a real redis-server.

A profile given by UpsertUser (or on events) shapes every adaptation: the vector the
consumer stores equals the trainer's own offline adaptation of the same support with the
same features, and Recommend uses the profile without features in the request. A profile
update and an event batch racing for one user lose neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc

from service.app import Service
from service.applier import EventApplier, SourcedEvent
from service.localstack import LocalStack
from service.metrics import Metrics
from service.model import ServingModel
from service.profiles import ProfileWriter
from service.settings import Settings
from service.state import UserRecord
from service.store import UserStore
from service.topics import create_topic
from tests.helpers.tiny_model import write_tiny_model
from tests.helpers.user_events import event
from tests.helpers.waiting import eventually
from trainer import artifact
from trainer.data import Dataset, load_dataset
from trainer.split import Support, protocol_order, user_feature_matrix

TOPIC = "events.profiles"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    """A tiny model whose feature embeddings matter (as a trained model's do), and its data."""
    root = tmp_path_factory.mktemp("profiles")
    loaded = artifact.load(write_tiny_model(root))
    torch.manual_seed(1)
    with torch.no_grad():
        for table in loaded.model.user_feature_embeddings:
            table.weight.normal_()
    data = load_dataset(root / "data")
    artifact.save(loaded.model, data, root / "featured", {"seed": 0})
    return root / "featured", data


@pytest.fixture(scope="module")
def running(world: tuple[Path, Dataset], stack: LocalStack) -> Iterator[Service]:
    create_topic(stack.kafka_bootstrap, TOPIC, 2)
    settings = Settings(
        model=world[0],
        kafka_bootstrap=stack.kafka_bootstrap,
        redis_url=stack.redis_url,
        topic=TOPIC,
        consumer_group="profiles",
        grpc_host="127.0.0.1",
        grpc_port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        model_reload_s=0,
    )
    with Service(settings) as service:
        yield service


def a_user_with_every_feature_known(data: Dataset) -> int:
    return int(np.flatnonzero(user_feature_matrix(data).all(axis=1))[0])


def test_a_profile_then_events_adapt_the_user_as_the_trainer_does(
    running: Service, world: tuple[Path, Dataset]
) -> None:
    data = world[1]
    user = a_user_with_every_feature_known(data)
    user_id = data.user_ids[user]
    profile = data.profile(user)  # as the data file holds it
    model = running.model
    assert model is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    try:
        upserted = stub.UpsertUser(
            recommender_pb2.UpsertUserRequest(user_id=user_id, features=profile), timeout=5
        )
        assert dict(upserted.profile) == profile
        assert list(upserted.features_used) == sorted(profile)

        cold = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=5), timeout=5)
        assert cold.state == recommender_pb2.COLD
        assert list(cold.features_used) == sorted(profile)
        expected = [item for item, _ in model.top_k(model.cold_vector(profile), 5)]
        assert [item.item_id for item in cold.items] == expected
        bare = [item for item, _ in model.top_k(model.prior.numpy(), 5)]
        assert expected != bare  # the profile changed the cold answer

        seqs = protocol_order(data, 0)
        items = seqs.of(user)[:3]
        ratings = seqs.ratings[seqs.offsets[user] : seqs.offsets[user] + 3]
        events = [
            event_pb2.Event(
                event_id=f"p{n}",
                user_id=user_id,
                item_id=data.item_ids[item],
                type=event_pb2.RATING,
                value=float(rating),
                ts=time.time_ns() // 1_000_000,
            )
            for n, (item, rating) in enumerate(zip(items, ratings, strict=True))
        ]
        assert stub.RecordEvents(iter(events), timeout=10).accepted == 3

        request = recommender_pb2.RecommendRequest(user_id=user_id, k=5)
        eventually(
            lambda: stub.Recommend(request, timeout=5).interactions_used == 3, 30, "3 events"
        )
        adapted = stub.Recommend(request, timeout=5)
        assert adapted.state == recommender_pb2.ADAPTED
        assert list(adapted.features_used) == sorted(profile)
        state = stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id=user_id))
        assert dict(state.profile) == profile
    finally:
        channel.close()

    stored = running.recommender.store.get(user_id)
    support = Support(
        items=torch.from_numpy(items.astype(np.int64))[None],
        mask=torch.ones(1, 3),
        ratings=torch.from_numpy(ratings.astype(np.float32))[None],
        rated=torch.ones(1, 3),
        user_features=torch.from_numpy(user_feature_matrix(data)[[user]]),
    )
    with torch.no_grad():
        offline = artifact.load(world[0]).model.adapt(support)[0].numpy()
    np.testing.assert_allclose(stored.vector, offline, rtol=1e-5, atol=1e-5)


def test_profile_rpcs_refuse_bad_input_with_a_message(running: Service) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    cases = [
        ({"shoe_size": "9"}, "unknown feature shoe_size"),
        ({"age": "2" * 10_000}, "feature 'age' has 10000 characters"),
        ({}, "features is empty"),
    ]
    try:
        for features, message in cases:
            request = recommender_pb2.UpsertUserRequest(user_id="bad-profile", features=features)
            with pytest.raises(grpc.RpcError) as raised:
                stub.UpsertUser(request, timeout=5)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in raised.value.details()
    finally:
        channel.close()


def test_an_empty_value_removes_a_feature_and_an_unknown_value_is_kept_and_counted(
    running: Service,
) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    try:
        first = {"age": "23", "gender": "F", "occupation": "astronaut"}
        request = recommender_pb2.UpsertUserRequest(user_id="changing", features=first)
        response = stub.UpsertUser(request, timeout=5)
        assert list(response.features_used) == ["age", "gender"]  # no astronauts in training
        # An empty value removes a feature, even one this model does not know.
        removals = {"gender": "", "zip": ""}
        request = recommender_pb2.UpsertUserRequest(user_id="changing", features=removals)
        response = stub.UpsertUser(request, timeout=5)
        assert dict(response.profile) == {"age": "23", "occupation": "astronaut"}
    finally:
        channel.close()
    unknown = running.metrics.values()[
        'coldstart_unknown_feature_values_total{feature="occupation"}'
    ]
    assert unknown >= 2


def test_get_model_info_describes_the_features_and_how_values_are_read(running: Service) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    try:
        info = recommender_pb2_grpc.RecommenderStub(channel).GetModelInfo(
            recommender_pb2.GetModelInfoRequest(), timeout=5
        )
    finally:
        channel.close()
    assert info.model_version == running.model.version and info.items == 40
    features = {feature.name: feature for feature in info.user_features}
    assert list(features) == ["age", "gender", "occupation"]
    assert "lower edge of its bracket: 1 (under 18), 18 (18-24)" in features["age"].rule
    assert features["gender"].rule == "trimmed and case-folded"
    assert "<unk>" not in features["gender"].values and features["gender"].values


class Interleaved:
    """A store whose first read runs `between` once it has read: another writer's write
    lands between this writer's read and its compare-and-set."""

    def __init__(self, store: UserStore, between: Callable[[], object]) -> None:
        self.store, self.between, self.history_limit = store, between, store.history_limit

    def _once(self) -> None:
        between, self.between = self.between, None
        if between is not None:
            between()

    def get(self, user_id: str) -> UserRecord | None:
        stored = self.store.get(user_id)
        self._once()
        return stored

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserRecord]:
        stored = self.store.get_many(user_ids)
        self._once()
        return stored

    def put_many(self, records: Iterable[UserRecord]) -> set[str]:
        return self.store.put_many(records)


@pytest.mark.parametrize("second", ["profile", "events"])
def test_a_profile_update_and_an_event_batch_racing_for_a_user_lose_neither(
    world: tuple[Path, Dataset], stack: LocalStack, second: str
) -> None:
    """One side reads, the other writes, then the first writes: its compare-and-set fails,
    it reads again and merges. `second` names the side whose write lands in between."""
    model = ServingModel(artifact.load(world[0]))
    store = UserStore.from_url(stack.redis_url)
    user, items = f"race-{second}", model.item_ids
    batch = [SourcedEvent("t", 0, n, event(user, n, items[n])) for n in range(2)]
    try:
        if second == "events":
            applier = EventApplier(model, store)
            racing = Interleaved(store, lambda: applier.apply(batch))
            ProfileWriter(model, racing, Metrics()).upsert(user, {"age": "30"})
        else:
            writer = ProfileWriter(model, store, Metrics())
            racing = Interleaved(store, lambda: writer.upsert(user, {"age": "30"}))
            assert EventApplier(model, racing).apply(batch) == 2
        record = store.get(user)
    finally:
        store.close()
    assert [entry.item_id for entry in record.history] == items[:2]
    assert record.profile == {"age": "30"}
    assert record.state_version == 2  # the one in between, then the loser's retry
    expected = model.adapt([model.interactions(record.history)], [record.profile])[0]
    np.testing.assert_allclose(record.vector, expected.numpy(), rtol=1e-5, atol=1e-6)
