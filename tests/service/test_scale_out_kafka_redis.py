"""Integration, scale-out: two `coldstart serve` processes in one consumer group over a topic
of 4 partitions, against a real tansu broker and a real redis-server.

Both take partitions and apply events (each process's own metrics say so). Mid-stream one
is SIGKILLed; the other takes over its partitions and finishes the topic. Every event is
then applied exactly once: each user's stored history is exactly the sequence of events
produced for them (nothing lost, nothing twice), its watermark is the user's last offset,
and its vector is the one adaptation gives for that history.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from service.events import Event
from service.localstack import LocalStack
from service.model import ServingModel
from service.state import now_ms
from service.store import UserStore
from service.topics import create_topic
from tests.helpers.replica import Replica
from tests.helpers.waiting import eventually
from trainer import artifact

TOPIC = "events.scale"
GROUP = "scale"
PARTITIONS = 4
USERS = 120
EVENTS_PER_USER = 30  # below the history bound (50): the whole sequence stays checkable
EVENTS = USERS * EVENTS_PER_USER


def events_by_user(item_ids: list[str]) -> list[Event]:
    rng = random.Random(0)
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
    model = ServingModel(artifact.load(stream_model_dir))
    events = events_by_user(model.item_ids)
    first, second = events[: EVENTS // 2], events[EVENTS // 2 :]
    replicas = [
        Replica(
            stream_model_dir,
            stack.kafka_bootstrap,
            stack.redis_url,
            tmp_path / f"replica-{n}.log",
            topic=TOPIC,
            group=GROUP,
            batch=100,
        )
        for n in (0, 1)
    ]
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

        # Mid-stream: the rest arrives while the victim is killed.
        late: dict[str, tuple[int, int]] = {}
        sending = threading.Thread(
            target=lambda: late.update(produce(stack.kafka_bootstrap, second, per_s=600))
        )
        sending.start()
        time.sleep(1.0)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        sending.join(timeout=60)
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
        survivor.process.send_signal(signal.SIGTERM)
        assert survivor.process.wait(timeout=30) == 0, survivor.text()[-3000:]
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()

    store = UserStore.from_url(stack.redis_url)
    stored = store.get_many(f"s{n}" for n in range(USERS))
    store.close()
    assert len(stored) == USERS
    for user, record in stored.items():
        produced = [(e.item_id, e.rating) for e in events if e.user_id == user]
        assert [(h.item_id, h.rating) for h in record.history] == produced, user
        partition, offset = last[user]
        assert dict(record.watermarks) == {(TOPIC, partition): offset}, user
    histories = [model.interactions(record.history) for record in stored.values()]
    expected = model.adapt(histories).numpy()
    actual = np.stack([record.vector for record in stored.values()])
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
