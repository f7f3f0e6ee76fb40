"""Integration, the live catalogue: two service replicas in one consumer group on a real
tansu broker and a real redis-server, driven by a client that knows the API only from
server reflection.

An item registered through one replica's UpsertItems is recommended by both (under a
candidate restriction, and in the top 20 of a user whose vector favours its features);
its first events warm it on both; retiring it removes it from both; nothing about it is
dead-lettered; and an event on an item no catalogue holds registers it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from service.app import Service
from service.catalogue import ItemEntry
from service.history import History, HistoryEntry
from service.localstack import LocalStack
from service.model import ServingModel
from service.settings import Settings
from service.state import UserRecord, now_ms
from service.store import UserStore
from service.topics import create_topic
from tests.helpers.reflected import ReflectedClient
from tests.helpers.waiting import eventually
from trainer import artifact

TOPIC = "events.live"
ITEMS = "items.live"
NEW = "launch-1"
FEATURES = {"genre": {"values": ["Drama", "War"]}, "year": {"values": ["1996"]}}


@pytest.fixture(scope="module")
def replicas(
    stack: LocalStack, stream_model_dir: Path
) -> Iterator[list[tuple[Service, ReflectedClient]]]:
    for topic, partitions in ((TOPIC, 4), (f"{TOPIC}.dlq", 1)):
        create_topic(stack.kafka_bootstrap, topic, partitions)
    create_topic(stack.kafka_bootstrap, ITEMS, 1, compacted=True)
    settings = Settings(
        model=stream_model_dir,
        kafka_bootstrap=stack.kafka_bootstrap,
        redis_url=stack.redis_url,
        grpc_port=0,
        metrics_port=0,
        topic=TOPIC,
        items_topic=ITEMS,
        consumer_group="live",
        model_reload_s=0,
    )
    services = [Service(settings), Service(settings)]
    channels = []
    try:
        for service in services:
            service.start()
            channels.append(grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}"))
        yield [(s, ReflectedClient(c)) for s, c in zip(services, channels, strict=True)]
    finally:
        for channel in channels:
            channel.close()
        for service in services:
            service.stop()


def recommended(client: ReflectedClient, user: str, **request: object) -> dict[str, float]:
    answer = client.call("Recommend", {"user_id": user, **request})
    return {item["item_id"]: item["score"] for item in answer["items"]}


def favouring_user(stack: LocalStack, model: ServingModel, user: str) -> None:
    """Stores a user whose vector points along what sets the new item's start apart from
    the catalogue's average item: a user who favours its genres and era."""
    entry = ItemEntry(NEW, {"genre": ("Drama", "War"), "year": ("1996",)})
    hot = model.item_hot(entry)[None]
    text = np.zeros((1, model.text_dim), np.float32)
    start = model.item_rows(hot, text, np.zeros(1, np.int64), np.zeros((1, model.dim), np.float32))
    apart = start[0, :-1] - model.tables.vectors.numpy().mean(axis=0)
    vector = apart / np.linalg.norm(apart) * 20.0
    history = History([HistoryEntry(model.item_ids[0], None)])  # a user with a history is adapted
    record = UserRecord(user, vector.astype(np.float32), history, model.version, 1)
    store = UserStore.from_url(stack.redis_url)
    try:
        assert store.put_many([record]) == {user}
    finally:
        store.close()


def test_a_registered_item_reaches_both_replicas_warms_and_retires(
    replicas: list[tuple[Service, ReflectedClient]], stack: LocalStack, stream_model_dir: Path
) -> None:
    clients = [client for _, client in replicas]
    model = ServingModel(artifact.load(stream_model_dir))
    favourite = "fan-1"
    favouring_user(stack, model, favourite)

    answer = clients[0].call(
        "UpsertItems", {"items": [{"item_id": NEW, "features": FEATURES, "text": "A launch"}]}
    )
    assert (answer["accepted"], answer["registered"]) == (1, 1)
    for client in clients:  # each replica, restricted to the item, and in a top 20
        eventually(
            lambda c=client: NEW in recommended(c, favourite, candidate_item_ids=[NEW]),
            5,
            "registered",
        )
        assert NEW in recommended(client, favourite, k=20)
        state = client.call("GetItemState", {"item_id": NEW})
        assert (state["state"], state["interactions"]) == ("ITEM_STATE_COLD", 0)
        assert state["features"]["year"]["values"] == ["1996"] and state["available"]
    cold_score = recommended(clients[1], favourite, candidate_item_ids=[NEW])[NEW]

    events = [event(f"live-{n}", f"watcher-{n}", NEW) for n in range(5)]
    assert clients[0].stream("RecordEvents", events)["accepted"] == 5
    for client in clients:
        eventually(
            lambda c=client: c.call("GetItemState", {"item_id": NEW})["interactions"] == 5,
            15,
            "five events applied to the item",
        )
        assert client.call("GetItemState", {"item_id": NEW})["state"] == "ITEM_STATE_WARMING"
        eventually(
            lambda c=client: recommended(c, favourite, candidate_item_ids=[NEW])[NEW] != cold_score,
            5,
            "the warmed vector on every replica",
        )

    clients[1].call("UpsertItems", {"items": [{"item_id": NEW, "available": False}]})
    for client in clients:
        eventually(
            lambda c=client: NEW not in recommended(c, favourite, candidate_item_ids=[NEW]),
            5,
            "retired on every replica",
        )
        assert NEW not in recommended(client, favourite, k=100)
        assert client.call("GetItemState", {"item_id": NEW})["available"] is False
    assert dead_letters_naming(stack, NEW) == []


def test_an_event_on_an_item_no_catalogue_holds_registers_it(
    replicas: list[tuple[Service, ReflectedClient]], stack: LocalStack
) -> None:
    clients = [client for _, client in replicas]
    clients[1].stream("RecordEvents", [event("surprise-0", "walker", "surprise")])
    for client in clients:
        eventually(
            lambda c=client: _state(c, "surprise").get("interactions") == 1,
            15,
            "the item registered at its first event",
        )
    assert dead_letters_naming(stack, "surprise") == []


def test_bad_items_are_refused_with_what_is_wrong(
    replicas: list[tuple[Service, ReflectedClient]],
) -> None:
    client = replicas[0][1]
    cases = {
        "x" * 300: {},
        "bad-feature": {"features": {"colour": {"values": ["red"]}}},
        "bad-year": {"features": {"year": {"values": ["nineteen"]}}},
        "long-text": {"text": "y" * 100_000},
        "never-seen": {"available": False},
    }
    expected = (
        "characters, more than",
        "unknown item feature colour",
        "year must be one whole number",
        "text has 100000 characters",
        "nothing to retire",
    )
    for (item_id, fields), message in zip(cases.items(), expected, strict=True):
        with pytest.raises(grpc.RpcError) as refused:
            client.call("UpsertItems", {"items": [{"item_id": item_id, **fields}]})
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        client.call("GetItemState", {"item_id": "never-seen"})
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert _state(client, "never-seen") == {}


def _state(client: ReflectedClient, item_id: str) -> dict:
    try:
        return client.call("GetItemState", {"item_id": item_id})
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return {}


def event(event_id: str, user: str, item_id: str) -> dict:
    return {
        "event_id": event_id,
        "user_id": user,
        "item_id": item_id,
        "type": "CLICK",
        "ts": now_ms(),
    }


def dead_letters_naming(stack: LocalStack, item_id: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, consumer_timeout_ms=1000)
    try:
        partition = TopicPartition(f"{TOPIC}.dlq", 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        deadline = time.monotonic() + 3
        found = []
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                found += [r.value for r in records if item_id.encode() in (r.value or b"")]
        return found
    finally:
        consumer.close()
