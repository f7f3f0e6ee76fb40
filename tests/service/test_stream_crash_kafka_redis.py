"""Integration, crash safety: SIGKILL a consumer process mid-stream against real tansu and Redis.

20,000 events are consumed twice: once by a consumer that is never disturbed,
and once by service processes (`coldstart serve`) killed with
SIGKILL at several points and restarted. Every user's final state must be the
same in both: the same history and watermarks, the same vector within float
tolerance. Nothing lost (offsets are committed only after Redis has the state)
and nothing applied twice (the per-partition watermark drops what was applied
but not committed).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from service.events import Event
from service.localstack import LocalStack
from service.state import now_ms
from service.store import UserStore
from service.topics import create_topic
from tests.helpers.replica import Replica
from tests.helpers.waiting import eventually
from trainer import artifact

TOPIC = "events.crash"
PARTITIONS = 2
EVENTS = 20_000
USERS = 300  # about 67 events each: histories overflow their bound of 50
KILLS = 3
MAX_RECORDS = 200


def produce(bootstrap: str, item_ids: list[str]) -> None:
    rng = random.Random(0)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        for n in range(EVENTS):
            user = f"u{rng.randrange(USERS)}"
            rated = rng.random() < 0.5
            kind, value = ("rating", float(rng.randint(1, 5))) if rated else ("click", 1.0)
            event = Event(f"e{n}", user, rng.choice(item_ids), kind, value, now_ms())
            producer.send(TOPIC, key=user.encode(), value=event.to_json())
        producer.flush(timeout=30)
    finally:
        producer.close()


class Watch:
    """Reads a group's committed offsets and what Redis holds, with one open probe."""

    def __init__(self, stack: LocalStack, group: str, url: str) -> None:
        self.probe = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group)
        self.store = UserStore.from_url(url)

    def committed(self) -> dict[int, int]:
        return {p: self.probe.committed(TopicPartition(TOPIC, p)) or 0 for p in range(PARTITIONS)}

    def total(self) -> int:
        return sum(self.committed().values())

    def applied_beyond_commit(self) -> bool:
        """Whether Redis holds events whose offsets are not committed: a replay will follow."""
        applied: dict[int, int] = {}
        for record in self.store.get_many(f"u{n}" for n in range(USERS)).values():
            for (_, partition), offset in record.watermarks.items():
                applied[partition] = max(applied.get(partition, -1), offset)
        committed = self.committed()
        return any(offset + 1 > committed[p] for p, offset in applied.items())

    def close(self) -> None:
        self.probe.close()
        self.store.close()


def start_consumer(
    stream_model_dir: Path, stack: LocalStack, url: str, group: str, log: Path
) -> Replica:
    return Replica(
        stream_model_dir,
        stack.kafka_bootstrap,
        url,
        log,
        topic=TOPIC,
        group=group,
        batch=MAX_RECORDS,
    )


def drain_and_stop(replica: Replica, watch: Watch) -> None:
    """Wait until this consumer has joined its group and every event is committed, then
    SIGTERM: a clean exit. (A SIGTERM while Python is still importing would end the
    process before any handler exists.)"""
    eventually(replica.partitions, 60, "the consumer joins its group", every_s=0.2)
    eventually(lambda: watch.total() == EVENTS, 120, "the consumer drains the topic", every_s=0.2)
    replica.process.send_signal(signal.SIGTERM)
    assert replica.process.wait(timeout=20) == 0, replica.text()[-3000:]


def clean_run(stream_model_dir: Path, stack: LocalStack, url: str, logs: Path) -> None:
    """The reference: one consumer process, never disturbed."""
    watch = Watch(stack, "clean", url)
    try:
        drain_and_stop(
            start_consumer(stream_model_dir, stack, url, "clean", logs / "clean.log"), watch
        )
    finally:
        watch.close()


def kill_when(replica: Replica, watch: Watch, in_window: bool) -> bool:
    """SIGKILL after some progress: between a state write and its offset commit
    (`in_window`), else at a random moment. True if Redis was ahead after the kill.
    A fast consumer may have drained the topic already: then the kill lands on an idle,
    joined consumer, which must be just as harmless."""
    before = watch.total()
    progressed = lambda: watch.total() > before or watch.total() == EVENTS  # noqa: E731
    eventually(progressed, 60, "progress before a kill", every_s=0.05)
    if in_window:
        stop_in_window(replica.process, watch)
    else:
        time.sleep(random.Random(before).uniform(0.0, 0.3))
    os.kill(replica.process.pid, signal.SIGKILL)
    replica.process.wait()
    return watch.applied_beyond_commit()


def stop_in_window(process: subprocess.Popen, watch: Watch, timeout_s: float = 10) -> None:
    """Freeze the consumer (SIGSTOP) at moments until one finds Redis ahead of the committed
    offsets, and leave it frozen there. The window lasts milliseconds per batch: looking
    while the process runs, it has usually closed by the time a kill arrives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and watch.total() < EVENTS:
        os.kill(process.pid, signal.SIGSTOP)
        if watch.applied_beyond_commit():
            return
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(random.uniform(0.0, 0.02))  # not in step with the batches


def crashing_run(stream_model_dir: Path, stack: LocalStack, url: str, logs: Path) -> int:
    """Consumer processes killed KILLS times and restarted; returns how many kills left
    state in Redis beyond the committed offsets (so that a replay had to be a no-op)."""
    watch = Watch(stack, "crashy", url)
    replays = 0
    try:
        for kill in range(KILLS):
            replica = start_consumer(
                stream_model_dir, stack, url, "crashy", logs / f"killed-{kill}.log"
            )
            replays += kill_when(replica, watch, in_window=kill % 2 == 0)
            time.sleep(7)  # the dead member's session (6 s) expires: the next joins an empty group
        drain_and_stop(
            start_consumer(stream_model_dir, stack, url, "crashy", logs / "last.log"), watch
        )
    finally:
        watch.close()
    return replays


def test_sigkilled_consumers_end_in_the_same_state_as_a_fault_free_run(
    stack: LocalStack, stream_model_dir: Path, tmp_path: Path
) -> None:
    create_topic(stack.kafka_bootstrap, TOPIC, PARTITIONS)
    produce(stack.kafka_bootstrap, artifact.load(stream_model_dir).item_ids)
    base = stack.redis_url.rsplit("/", 1)[0]
    clean_url, crashy_url = f"{base}/1", f"{base}/2"
    clean_run(stream_model_dir, stack, clean_url, tmp_path)
    replays = crashing_run(stream_model_dir, stack, crashy_url, tmp_path)
    # The in-window kills (the first and the third) leave applied events above the
    # committed offsets, so the restarted consumer must drop a replay, not apply it twice.
    assert replays >= 1, "no kill landed between a state write and its commit"

    users = [f"u{n}" for n in range(USERS)]
    clean = UserStore.from_url(clean_url).get_many(users)
    crashy = UserStore.from_url(crashy_url).get_many(users)
    assert set(clean) == set(crashy) == set(users)
    for user in users:
        assert crashy[user].history == clean[user].history, user
        assert dict(crashy[user].watermarks) == dict(clean[user].watermarks), user
        np.testing.assert_allclose(crashy[user].vector, clean[user].vector, rtol=1e-4, atol=1e-5)
    assert max(len(r.history) for r in clean.values()) == 50
