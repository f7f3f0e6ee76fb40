"""Integration, scale-out: two `coldstart serve` processes in one consumer group over a topic
of 4 partitions, against a real tansu broker and a real redis-server.

Both take partitions and apply events (each process's own metrics say so), while a
client registers new items through UpsertItems, a fifth of the events naming them.
Mid-stream one replica is SIGKILLed; the other takes over its partitions and finishes
the topic. Every event is then applied exactly once: each user's stored history is
exactly the sequence of events produced for them (nothing lost, nothing twice), its
watermark is the user's last offset, and its vector is the one adaptation gives for that
history; each new item's warm-up counts exactly its events. No acknowledged registration
is lost: the survivor and a replica started afterwards (which rebuilds its catalogue
from the items topic) both hold every one.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from service.events import Event
from service.item_store import ItemStore
from service.localstack import LocalStack
from service.model import ServingModel
from service.state import now_ms
from service.store import UserStore
from service.topics import create_topic
from tests.helpers.reflected import ReflectedClient
from tests.helpers.replica import Replica
from tests.helpers.waiting import eventually
from trainer import artifact

TOPIC = "events.scale"
ITEMS_TOPIC = "items.scale"
NEW_ITEMS = [f"new-{n}" for n in range(20)]
GROUP = "scale"
PARTITIONS = 4
USERS = 120
EVENTS_PER_USER = 30  # below the history bound (50): the whole sequence stays checkable
EVENTS = USERS * EVENTS_PER_USER


def events_by_user(item_ids: list[str]) -> list[Event]:
    """A fifth of the events name a new item."""
    rng = random.Random(0)
    item_ids = item_ids + NEW_ITEMS * max(1, len(item_ids) // (4 * len(NEW_ITEMS)))
    events = []
    for n in range(EVENTS):
        user = f"s{rng.randrange(USERS)}" if n >= USERS else f"s{n}"  # every user has one
        rated = rng.random() < 0.5
        kind, value = ("rating", float(rng.randint(1, 5))) if rated else ("click", 1.0)
        events.append(Event(f"e{n}", user, rng.choice(item_ids), kind, value, now_ms()))
    return events


def produce(bootstrap: str, events: list[Event], per_s: float) -> dict[str, tuple[int, int]]:
    """Sends `events` at about `per_s`; returns each user's (partition, last offset)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = []
    started = time.monotonic()
    try:
        for n, event in enumerate(events):
            futures.append(
                (
                    event.user_id,
                    producer.send(TOPIC, key=event.user_id.encode(), value=event.to_json()),
                )
            )
            time.sleep(max(0.0, started + n / per_s - time.monotonic()))
        producer.flush(timeout=30)
    finally:
        producer.close()
    last: dict[str, tuple[int, int]] = {}
    for user, future in futures:
        metadata = future.get(timeout=10)
        last[user] = (metadata.partition, metadata.offset)
    return last


def register(replicas: list[Replica], registered: list[str]) -> None:
    """Registers the new items one call each, on the first replica that answers: a client
    whose replica dies retries on another. `registered` gets each acknowledged one."""
    for item in NEW_ITEMS:
        request = {"items": [{"item_id": item, "features": {"genre": {"values": ["Drama"]}}}]}
        for server in replicas:
            port = server.grpc_port()
            if port is None or server.process.poll() is not None:
                continue
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    ReflectedClient(channel).call("UpsertItems", request)
                except grpc.RpcError:
                    continue
            registered.append(item)
            break
        time.sleep(0.1)


def item_genre(server: Replica, item: str) -> list[str] | None:
    """The item's genres on that replica; None while it does not hold the item."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port()}") as channel:
        try:
            state = ReflectedClient(channel).call("GetItemState", {"item_id": item})
        except grpc.RpcError:
            return None
    return state["features"].get("genre", {}).get("values")


def committed(bootstrap: str) -> int:
    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP)
    try:
        return sum(probe.committed(TopicPartition(TOPIC, p)) or 0 for p in range(PARTITIONS))
    finally:
        probe.close()


def test_two_replicas_share_the_partitions_and_a_killed_ones_are_taken_over(
    stack: LocalStack, stream_model_dir: Path, tmp_path: Path
) -> None:
    create_topic(stack.kafka_bootstrap, TOPIC, PARTITIONS)
    create_topic(stack.kafka_bootstrap, ITEMS_TOPIC, 1, compacted=True)
    model = ServingModel(artifact.load(stream_model_dir))
    events = events_by_user(model.item_ids)
    first, second = events[: EVENTS // 2], events[EVENTS // 2 :]

    def replica(n: int) -> Replica:
        log = tmp_path / f"replica-{n}.log"
        return Replica(
            stream_model_dir,
            stack.kafka_bootstrap,
            stack.redis_url,
            log,
            topic=TOPIC,
            group=GROUP,
            batch=100,
            items_topic=ITEMS_TOPIC,
        )

    replicas = [replica(0), replica(1)]
    registered: list[str] = []
    try:
        victim, survivor = replicas

        def shared() -> bool:
            owned = [r.partitions() for r in replicas]
            return all(owned) and owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == 4

        eventually(shared, 120, "both replicas own partitions", every_s=0.2)
        last = produce(stack.kafka_bootstrap, first, per_s=2000)
        eventually(
            lambda: all(r.applied() > 0 for r in replicas),
            60,
            "both replicas apply events",
            every_s=0.2,
        )

        # Mid-stream: the rest arrives, and new items are registered, while the victim is killed.
        late: dict[str, tuple[int, int]] = {}
        sending = threading.Thread(
            target=lambda: late.update(produce(stack.kafka_bootstrap, second, per_s=600))
        )
        registering = threading.Thread(target=register, args=(replicas, registered))
        sending.start()
        registering.start()
        time.sleep(1.0)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        sending.join(timeout=60)
        registering.join(timeout=60)
        last.update(late)
        eventually(
            lambda: survivor.partitions() == set(range(PARTITIONS)), 120, "takeover", every_s=0.2
        )
        eventually(
            lambda: committed(stack.kafka_bootstrap) == EVENTS,
            120,
            "the topic drained",
            every_s=0.2,
        )
        assert len(registered) == len(NEW_ITEMS)
        restarted = replica(2)
        replicas.append(restarted)
        eventually(lambda: restarted.grpc_port() is not None, 120, "a restart", every_s=0.2)
        for server in (survivor, restarted):  # every registration on both, by reflection
            eventually(
                lambda s=server: all(item_genre(s, item) == ["Drama"] for item in registered),
                10,
                "every acknowledged registration",
            )
        restarted.process.send_signal(signal.SIGTERM)
        survivor.process.send_signal(signal.SIGTERM)
        assert survivor.process.wait(timeout=30) == 0, survivor.text()[-3000:]
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()

    store = UserStore.from_url(stack.redis_url)
    stored = store.get_many(f"s{n}" for n in range(USERS))
    assert len(stored) == USERS
    for user, record in stored.items():
        produced = [(e.item_id, e.rating) for e in events if e.user_id == user]
        assert [(h.item_id, h.rating) for h in record.history] == produced, user
        partition, offset = last[user]
        assert dict(record.watermarks) == {(TOPIC, partition): offset}, user
    warmed = ItemStore(store.client).get_many(NEW_ITEMS)
    for item in NEW_ITEMS:
        assert warmed[item].count == sum(1 for e in events if e.item_id == item), item
    histories = [model.interactions(record.history) for record in stored.values()]
    expected = model.adapt(histories).numpy()
    actual = np.stack([record.vector for record in stored.values()])
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    store.close()
