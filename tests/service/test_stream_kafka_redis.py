"""Integration: the event consumer against a real tansu broker and a real redis-server.

Both are started by the local stack; nothing is mocked. A tiny untrained model
is enough here: these tests check the plumbing (what reaches Redis, what is
dead-lettered, what a replay or a Redis outage does), not recommendation quality.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from service.dead_letters import MAX_KEY_BYTES
from service.events import MAX_PAYLOAD_BYTES, UNREADABLE_STATE, Event, parse_event
from service.history import History, HistoryEntry
from service.kafka_consumer import ConsumerConfig, EventConsumer
from service.localstack import LocalStack, free_port, redis_answers, redis_server_binary
from service.model import ServingModel
from service.observer import StreamObserver
from service.replay import replay, replay_order
from service.state import UserRecord
from service.store import UserStore, user_key
from service.topics import create_topic
from tests.helpers.user_events import assert_adapted_from_history, event
from tests.helpers.waiting import eventually
from trainer.data import load_dataset
from trainer.split import protocol_order, split_users
from trainer.synth import write_synthetic

PARTITIONS = 2
ONE_MB = 1_000_000


class Recorder(StreamObserver):
    """Counts what the consumer reports."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()

    def on_consumed(self, n: int) -> None:
        self.counts["consumed"] += n

    def on_event_applied(self, n: int) -> None:
        self.counts["applied"] += n

    def on_dead_letter(self, reason: str) -> None:
        self.dead[reason] += 1

    def on_redis_error(self) -> None:
        self.counts["redis_errors"] += 1

    def on_replayed(self, n: int) -> None:
        self.counts["replayed"] += n

    def on_hit(self, hit: bool) -> None:
        self.counts["judged"] += 1


@pytest.fixture(scope="module")
def model(stream_model: ServingModel) -> ServingModel:
    """The event path's model: more users and items than the default tiny one."""
    return stream_model


@pytest.fixture(scope="module")
def producer(stack: LocalStack) -> Iterator[KafkaProducer]:
    started = KafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, acks="all", max_request_size=4 * 2**20
    )
    yield started
    started.close()


def send(producer: KafkaProducer, topic: str, key: str, value: bytes) -> None:
    producer.send(topic, key=key.encode(), value=value).get(timeout=10)


class Running:
    """An EventConsumer in a thread, stopped (batch finished, offsets committed) on exit."""

    def __init__(self, consumer: EventConsumer) -> None:
        self.consumer = consumer
        self.thread = threading.Thread(target=consumer.run, daemon=True)

    def __enter__(self) -> EventConsumer:
        self.thread.start()
        return self.consumer

    def __exit__(self, *exc: object) -> None:
        self.consumer.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


def consumer_for(
    model: ServingModel, url: str, stack: LocalStack, topic: str, group: str, observer: Recorder
) -> EventConsumer:
    config = ConsumerConfig(stack.kafka_bootstrap, topic, group, max_records=50)
    return EventConsumer(model, UserStore.from_url(url), config, observer)


def committed_everything(stack: LocalStack, topic: str, group: str) -> bool:
    """Whether `group` has committed the end offset of every partition of `topic`."""
    probe = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group)
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = probe.end_offsets(partitions)
        return all((probe.committed(tp) or 0) == ends[tp] for tp in partitions)
    finally:
        probe.close()


def dead_letters(stack: LocalStack, topic: str, expected: int) -> list:
    """The records of a topic (here, dead letters), read without a group, once `expected`
    are there."""
    reader = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest")
    records: list = []
    try:
        eventually(lambda: reader.partitions_for_topic(topic), 10, f"{topic} exists")
        reader.assign([TopicPartition(topic, p) for p in reader.partitions_for_topic(topic)])
        deadline = time.monotonic() + 15
        while len(records) < expected and time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=200).values():
                records += batch
    finally:
        reader.close()
    return records


def test_events_reach_redis_invalid_ones_are_dead_lettered_and_a_replay_changes_nothing(
    stack: LocalStack, model: ServingModel, producer: KafkaProducer
) -> None:
    topic = "events.main"
    create_topic(stack.kafka_bootstrap, topic, PARTITIONS)
    store = UserStore.from_url(stack.redis_url)
    # A user stored under another model version, with a history and an item this model lacks.
    old = [HistoryEntry("i1", 4.0), HistoryEntry("retired", None), HistoryEntry("i2", None)]
    store.put_many([UserRecord("old", np.ones(3, np.float32), History(old), "older-model", 7)])

    users = [f"user{n}" for n in range(6)] + ["old"]
    sent: dict[str, list[Event]] = {user: [] for user in users}
    malformed = {  # reason: (record key, record value)
        "bad_json": ("user0", b'{"event_id": "x", '),
        "missing_field": ("user0", json.dumps({"event_id": "x", "user_id": "user0"}).encode()),
        "wrong_type": (
            "user0",
            event("user0", 99, "i3").to_json().replace(b'"value":1.0', b'"value":"1"'),
        ),
        "unknown_item": ("user1", event("user1", 99, "no-such-item").to_json()),
        "payload_too_large": ("user2", b'{"pad": "' + b"x" * ONE_MB + b'"}'),
        "key_mismatch": ("user3", event("user2", 99, "i3").to_json()),
        "unknown_feature": (
            "user4",
            replace(event("user4", 99, "i3"), features={"shoe_size": "9"}).to_json(),
        ),
        "bad_feature": (
            "user4",
            replace(event("user4", 98, "i3"), features={"age": "2" * 10_000}).to_json(),
        ),
    }
    for round_ in range(4):
        for u, user in enumerate(users):
            sourced = event(user, round_, f"i{(7 * u + 3 * round_) % 100}", 1.0 + (u + round_) % 5)
            sent[user].append(sourced)
            send(producer, topic, user, sourced.to_json())
        if round_ == 1:  # the bad records sit between good ones: the loop must go on
            for key, value in malformed.values():
                send(producer, topic, key, value)

    observer = Recorder()
    consumer = consumer_for(model, stack.redis_url, stack, topic, "main", observer)
    with Running(consumer):
        eventually(lambda: observer.counts["applied"] == 4 * len(users), 30, "all events applied")
    assert committed_everything(stack, topic, "main")
    assert observer.dead == Counter(dict.fromkeys(malformed, 1))
    assert observer.counts["judged"] >= len(users) - 1  # "old" has no top-k under this model

    stored = store.get_many(users)
    for user in users[:-1]:
        record = stored[user]
        assert [e.item_id for e in record.history] == [e.item_id for e in sent[user]]
        assert [e.rating for e in record.history] == [e.value for e in sent[user]]
        assert record.state_version >= 1
        assert_adapted_from_history(model, record)
    # Re-adapted under this model from the old history plus the new events; "retired" kept.
    upgraded = stored["old"]
    assert upgraded.history[:3] == tuple(old) and len(upgraded.history) == 7
    assert upgraded.state_version > 7
    assert_adapted_from_history(model, upgraded)

    letters = dead_letters(stack, f"{topic}.dlq", len(malformed))
    by_reason = {dict(r.headers)["reason"].decode(): r for r in letters}
    assert set(by_reason) == set(malformed)
    for reason, (key, value) in malformed.items():
        headers = dict(by_reason[reason].headers)
        assert by_reason[reason].value == value
        assert by_reason[reason].key == key.encode()
        assert headers["detail"] and int(headers["source_offset"]) >= 0
        assert int(headers["source_partition"]) in range(PARTITIONS)

    # A fresh group reads everything again from offset 0: every record is below a watermark.
    replayer = Recorder()
    with Running(consumer_for(model, stack.redis_url, stack, topic, "replay", replayer)):
        eventually(lambda: committed_everything(stack, topic, "replay"), 30, "replay committed")
    again = store.get_many(users)
    assert replayer.counts["applied"] == 0
    assert replayer.counts["replayed"] == 4 * len(users)  # skipped, and counted as such
    for user in users:
        assert again[user].state_version == stored[user].state_version
        assert again[user].updated_at_ms == stored[user].updated_at_ms
    store.close()


def test_events_of_a_user_whose_state_is_unreadable_are_dead_lettered_and_the_rest_applied(
    stack: LocalStack, model: ServingModel, producer: KafkaProducer
) -> None:
    topic = "events.unreadable"
    create_topic(stack.kafka_bootstrap, topic, PARTITIONS)
    store = UserStore.from_url(stack.redis_url)
    item = model.item_ids[0]
    torn = UserRecord("torn", np.ones(model.dim, np.float32), History(), model.version, 1)
    store.put_many([torn])
    store.client.hset(user_key("torn"), "h0", f"{item}\x1ffour")  # an unreadable rating
    store.client.hset(user_key("gutted"), mapping={"s": b"1"})  # no vector, no history
    store.client.set(user_key("flat"), b"a string, not a hash")  # every hash command: WRONGTYPE
    users = ["torn", "gutted", "flat", "fine0", "fine1"]
    for n in range(3):
        for user in users:
            send(producer, topic, user, event(user, n, model.item_ids[n]).to_json())

    observer = Recorder()
    with Running(consumer_for(model, stack.redis_url, stack, topic, "unreadable", observer)):
        eventually(lambda: committed_everything(stack, topic, "unreadable"), 30, "all committed")
    assert observer.counts["applied"] == 6
    assert observer.dead == Counter({UNREADABLE_STATE: 9})
    assert 2 <= observer.counts["judged"] <= 6  # only fine0's and fine1's events, each once
    stored = store.get_many(["fine0", "fine1"])
    assert [len(stored[user].history) for user in ("fine0", "fine1")] == [3, 3]
    letters = dead_letters(stack, f"{topic}.dlq", 9)
    assert sorted(r.key.decode() for r in letters) == ["flat"] * 3 + ["gutted"] * 3 + ["torn"] * 3
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["reason"] == UNREADABLE_STATE.encode()
        assert b"user '" + letter.key + b"'" in headers["detail"]
    # The corrupt records are left as they were, for a person to repair.
    assert store.client.hget(user_key("torn"), "h0") == f"{item}\x1ffour".encode()
    store.close()


def test_a_burst_of_bad_records_is_dead_lettered_and_one_too_large_to_forward_goes_truncated(
    stack: LocalStack, model: ServingModel, producer: KafkaProducer
) -> None:
    """The dead letters of a batch are sent together and confirmed once, before the commit;
    a record larger than the dead-letter producer may send goes as its first 64 KiB, and a
    key too large to send is cut to the longest user id."""
    topic = "events.burst"
    create_topic(stack.kafka_bootstrap, topic, PARTITIONS)
    huge = b'{"pad": "' + b"x" * ONE_MB + b'"}'
    send(producer, topic, "big", huge)
    for n in range(120):
        send(producer, topic, f"user{n % 7}", b"not json %d" % n)
    send(producer, topic, "k" * 2**19, b"not json, under a huge key")
    observer = Recorder()
    config = ConsumerConfig(stack.kafka_bootstrap, topic, "burst", dlq_max_request_bytes=2**19)
    with Running(EventConsumer(model, UserStore.from_url(stack.redis_url), config, observer)):
        eventually(lambda: committed_everything(stack, topic, "burst"), 30, "all committed")
    assert observer.dead == Counter({"payload_too_large": 1, "bad_json": 121})
    letters = dead_letters(stack, f"{topic}.dlq", 122)
    assert len(letters) == 122
    (big,) = [r for r in letters if r.key == b"big"]
    assert big.value == huge[:MAX_PAYLOAD_BYTES]
    assert dict(big.headers)["truncated_from"] == str(len(huge)).encode()
    (keyed,) = [r for r in letters if r.key.startswith(b"kkk")]
    assert keyed.key == b"k" * MAX_KEY_BYTES and keyed.value == b"not json, under a huge key"
    assert dict(keyed.headers)["key_truncated_from"] == str(2**19).encode()
    assert "truncated_from" not in dict(keyed.headers)  # its value went whole
    rest = [r for r in letters if r.key.startswith(b"user")]
    assert sorted(int(r.value.split()[-1]) for r in rest) == list(range(120))


def test_redis_down_holds_offsets_and_nothing_is_lost_when_it_returns(
    stack: LocalStack, model: ServingModel, producer: KafkaProducer, tmp_path: Path
) -> None:
    topic = "events.outage"
    create_topic(stack.kafka_bootstrap, topic, PARTITIONS)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    command = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]

    def start_redis() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        eventually(lambda: redis_answers(url, 0.2), 10, "redis-server answers")
        return server

    server = start_redis()
    observer = Recorder()
    try:
        with Running(consumer_for(model, url, stack, topic, "outage", observer)):
            send(producer, topic, "before", event("before", 0, "i5").to_json())
            eventually(lambda: observer.counts["applied"] == 1, 30, "first event applied")
            server.terminate()
            server.wait(timeout=10)
            for n in range(10):
                send(producer, topic, f"during{n % 3}", event(f"during{n % 3}", n, "i6").to_json())
            eventually(lambda: observer.counts["redis_errors"] >= 2, 15, "retries while down")
            assert observer.counts["applied"] == 1
            assert not committed_everything(stack, topic, "outage")
            server = start_redis()  # an empty Redis: the lost user comes back from new events
            eventually(lambda: observer.counts["applied"] == 11, 30, "backlog applied")
        assert committed_everything(stack, topic, "outage")
        assert observer.counts["consumed"] == 11  # each record once, however often retried
        states = UserStore.from_url(url).get_many(["during0", "during1", "during2"])
        assert sorted(len(r.history) for r in states.values()) == [3, 3, 4]
    finally:
        server.terminate()
        server.wait(timeout=10)


class Forwarder:
    """A TCP port that forwards each connection to `upstream` ("host:port"): a broker that
    appears at an address only once the test opens it."""

    def __init__(self, port: int, upstream: str) -> None:
        host, upstream_port = upstream.rsplit(":", 1)
        self.upstream = (host, int(upstream_port))
        self.listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.upstream)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_a_broker_down_at_start_up_is_waited_for_and_then_consumed(
    stack: LocalStack,
    model: ServingModel,
    producer: KafkaProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = "events.late-broker"
    create_topic(stack.kafka_bootstrap, topic, PARTITIONS)
    port = free_port()
    config = ConsumerConfig(
        f"127.0.0.1:{port}",
        topic,
        "late-broker",
        client_id="late-broker",
        retry_backoff_s=0.1,
        max_backoff_s=0.2,
    )
    observer = Recorder()
    running = Running(EventConsumer(model, UserStore.from_url(stack.redis_url), config, observer))
    with caplog.at_level(logging.WARNING, logger="service.kafka_consumer"), running:
        eventually(
            lambda: caplog.text.count("no Kafka broker listens at 127.0.0.1") >= 2,
            30,
            "two failed connection attempts",
        )
        assert running.thread.is_alive()
        # No client was built yet, so none left an IO thread behind.
        assert "kafka-io-late-broker" not in {t.name for t in threading.enumerate()}
        forwarder = Forwarder(port, stack.kafka_bootstrap)
        try:
            send(producer, topic, "late", event("late", 0, "i5").to_json())
            eventually(lambda: observer.counts["applied"] == 1, 30, "the event applied")
        finally:
            forwarder.close()
    assert len(UserStore.from_url(stack.redis_url).get("late").history) == 1


def test_replay_produces_test_users_events_in_protocol_order(
    stack: LocalStack, tmp_path: Path
) -> None:
    write_synthetic(tmp_path, n_users=60, n_items=50, seed=3)
    topic = "events.replayed"
    create_topic(stack.kafka_bootstrap, topic, PARTITIONS)
    result = replay(tmp_path, stack.kafka_bootstrap, topic, users=5, rate=None, seed=0)
    data = load_dataset(tmp_path)
    chosen, order = replay_order(data, 0, 5)
    assert result.users == len(chosen) == 5 and result.events == len(order)

    received = dead_letters(stack, topic, result.events)  # any topic reads the same way
    assert len(received) == result.events
    by_user: dict[str, list[str]] = {}
    for record in sorted(received, key=lambda r: (r.partition, r.offset)):
        event = parse_event(record.value)
        assert record.key == event.user_id.encode() and event.type == "rating"
        by_user.setdefault(event.user_id, []).append(event.item_id)
    seqs = protocol_order(data, 0)
    test_users = set(split_users(data, 0).test.tolist())
    for user in chosen:
        assert int(user) in test_users
        expected = [data.item_ids[i] for i in seqs.of(int(user))]
        assert by_user[data.user_ids[int(user)]] == expected
