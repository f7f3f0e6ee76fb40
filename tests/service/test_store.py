"""The Redis user store: encodings (pure), and reads and compare-and-set writes.

The write path is a Lua script, which only a real Redis runs faithfully, so the
store tests start the local stack's redis-server (a static binary, ~50 ms to
start), and three of them as a Redis Cluster; no broker is involved.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from service.connections import redis_client
from service.errors import StoreError, StoreUnavailable
from service.history import History, HistoryEntry
from service.localstack import LocalStack, free_port, redis_server_binary
from service.settings import Settings
from service.state import UserRecord
from service.store import (
    CHUNK,
    UserStore,
    decode_record,
    decode_watermarks,
    encode_watermarks,
    user_key,
)
from tests.helpers.waiting import eventually
from trainer.errors import ColdstartError

DIM = 64  # the default model size: the 1 KiB target is about this


def history(n: int, rated: bool = True) -> History:
    """n entries with MovieLens-like ids ("1".."3952") and ratings."""
    return History(
        HistoryEntry(str(1000 + 37 * k % 2952), float(1 + k % 5) if rated else None)
        for k in range(n)
    )


PROFILE = {"age": "34", "gender": "F", "occupation": "technician"}


def record(user_id: str = "u1", version: int = 1, n: int = 50) -> UserRecord:
    rng = np.random.default_rng(version)
    return UserRecord(
        user_id=user_id,
        vector=rng.normal(size=DIM).astype(np.float32),
        history=history(n),
        model_version="0123456789abcdef",
        state_version=version,
        watermarks={("coldstart.events", 0): 100 + version, ("coldstart.events", 3): 7},
        updated_at_ms=1_700_000_000_000 + version,
    )


def assert_same(a: UserRecord, b: UserRecord) -> None:
    assert np.array_equal(a.vector, b.vector) and a.vector.dtype == np.float32
    assert (a.user_id, a.history, a.model_version) == (b.user_id, b.history, b.model_version)
    assert (a.state_version, dict(a.watermarks), a.updated_at_ms, dict(a.profile)) == (
        b.state_version,
        dict(b.watermarks),
        b.updated_at_ms,
        dict(b.profile),
    )


# Encodings


def test_watermarks_round_trip() -> None:
    marks = {("coldstart.events", 0): 5, ("coldstart.events", 12): 1_234_567_890, ("b-2", 0): 3}
    assert decode_watermarks(encode_watermarks(marks)) == marks
    assert decode_watermarks(encode_watermarks({})) == {}


@pytest.mark.parametrize("raw", [b"7", b"0:7", b"a:b:0:7", b"t:x:7", b"t:0:7,"])
def test_a_malformed_watermark_does_not_decode(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_watermarks(raw)


def test_the_key_carries_a_cluster_hash_tag() -> None:
    assert user_key("42") == "coldstart:user:{42}"


# Against a real redis-server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with LocalStack(kafka=False, redis=True) as stack:
        yield stack.redis_url


@pytest.fixture
def store(redis_url: str) -> Iterator[UserStore]:
    store = UserStore.from_url(redis_url)
    store.client.flushdb()
    yield store
    store.close()


def test_get_returns_none_for_an_unknown_user(store: UserStore) -> None:
    assert store.get("nobody") is None
    assert store.get_many(["nobody", "nobody-else"]) == {}


def test_a_record_is_stored_in_fields_of_at_most_a_chunk(store: UserStore) -> None:
    original = record("chunked", n=50)
    store.put_many([original])
    fields = store.client.hgetall(user_key("chunked"))
    assert all(len(value) <= CHUNK for value in fields.values())
    assert {b"v0", b"v3", b"h0", b"h5", b"w0", b"m", b"s", b"t"} <= set(fields)
    assert_same(decode_record("chunked", fields), original)


def test_put_then_get_round_trips(store: UserStore) -> None:
    assert store.put_many([record("u1"), record("u2", version=3)]) == {"u1", "u2"}
    assert_same(store.get("u1"), record("u1"))
    both = store.get_many(["u2", "u1", "u3", "u1"])
    assert set(both) == {"u1", "u2"}
    assert_same(both["u2"], record("u2", version=3))


def test_writes_never_go_backwards(store: UserStore) -> None:
    assert store.put_many([record("u1", version=5)]) == {"u1"}
    assert store.put_many([record("u1", version=5), record("u1", version=4)]) == set()
    assert store.get("u1").state_version == 5
    assert store.put_many([record("u1", version=6), record("u2", version=1)]) == {"u1", "u2"}
    assert_same(store.get("u1"), record("u1", version=6))


def test_a_write_replaces_the_whole_record(store: UserStore) -> None:
    store.put_many([record("u1", version=1, n=50)])
    store.put_many([record("u1", version=2, n=2)])
    assert store.get("u1").history == history(2)


def test_a_long_history_of_long_ids_round_trips(store: UserStore) -> None:
    """About 600 KB: more fields than Lua's unpack() can pass to one HSET."""
    entries = History(HistoryEntry(f"{n:0200d}", 4.0) for n in range(3000))
    long = replace(record("long"), history=entries)
    assert store.put_many([long]) == {"long"}
    assert_same(store.get("long"), long)


def test_put_many_and_get_many_serve_many_users_at_once(store: UserStore) -> None:
    records = [record(f"u{n}") for n in range(200)]
    assert store.put_many(records) == {f"u{n}" for n in range(200)}
    assert len(store.get_many(f"u{n}" for n in range(200))) == 200


def test_ttl_is_set_when_configured(redis_url: str) -> None:
    store = UserStore.from_url(redis_url, ttl_s=60)
    try:
        store.put_many([record("ttl-user")])
        assert 0 < store.client.ttl(user_key("ttl-user")) <= 60
    finally:
        store.close()


def test_a_user_with_50_events_takes_at_most_1_kib(store: UserStore) -> None:
    store.put_many([record("user-000123", n=50)])
    assert store.client.memory_usage(user_key("user-000123"), samples=0) <= 1024


def test_a_user_with_a_3_feature_profile_and_50_events_takes_at_most_1_kib(
    store: UserStore,
) -> None:
    profiled = replace(record("user-000124", n=50), profile=PROFILE)
    store.put_many([profiled])
    assert_same(store.get("user-000124"), profiled)
    assert store.client.memory_usage(user_key("user-000124"), samples=0) <= 1024


@pytest.mark.parametrize("raw", [b"age", b"age\x1f23\x1fx", b"\x1e"])
def test_a_malformed_profile_is_an_unreadable_record(store: UserStore, raw: bytes) -> None:
    store.put_many([replace(record("torn-profile"), profile=PROFILE)])
    store.client.hset(user_key("torn-profile"), "p0", raw)
    with pytest.raises(StoreError, match="'torn-profile': stored record is unreadable"):
        store.get("torn-profile")


def test_an_unreadable_record_is_a_clear_error(store: UserStore) -> None:
    store.client.hset(user_key("broken"), mapping={"s": b"1"})
    with pytest.raises(StoreError, match="'broken': stored record is unreadable") as raised:
        store.get("broken")
    assert raised.value.user_id == "broken"


@pytest.mark.parametrize("version", ["1_0", "\uff11"])
def test_a_state_version_the_write_script_cannot_compare_is_unreadable(
    store: UserStore, version: str
) -> None:
    """Python's int() reads these; the script's tonumber() does not, and every write of the
    user would fail: unreadable now, so the consumer sets the user's events aside."""
    store.put_many([record("odd-version")])
    store.client.hset(user_key("odd-version"), "s", version)
    with pytest.raises(StoreError, match="'odd-version': stored record is unreadable"):
        store.get("odd-version")


def test_a_key_that_is_not_a_hash_is_that_users_unreadable_record(store: UserStore) -> None:
    store.client.set(user_key("overwritten"), b"not a hash")
    store.put_many([record("intact")])
    unreadable = r"'overwritten': stored record is unreadable .*WRONGTYPE"
    with pytest.raises(StoreError, match=unreadable):
        store.get("overwritten")
    with pytest.raises(StoreError, match=unreadable):
        store.get_many(["intact", "overwritten"])
    assert set(store.get_many(["intact"])) == {"intact"}


def test_writing_over_a_key_that_is_not_a_hash_is_that_users_unreadable_record(
    store: UserStore,
) -> None:
    """The key changed type between the consumer's read and its write: that user's events
    are set aside (a StoreError), not the whole batch retried forever."""
    store.client.set(user_key("overwritten"), b"not a hash")
    with pytest.raises(StoreError, match="'overwritten': stored record is unreadable") as raised:
        store.put_many([record("before"), record("overwritten"), record("after")])
    assert raised.value.user_id == "overwritten"
    assert set(store.get_many(["before", "after"])) == {"before", "after"}


def test_a_vector_that_is_not_finite_is_unreadable(store: UserStore) -> None:
    store.put_many([record("nan")])
    store.client.hset(user_key("nan"), "v0", np.full(16, np.nan, dtype="<f4").tobytes())
    with pytest.raises(StoreError, match=r"'nan': stored record is unreadable .*NaN or infinity"):
        store.get("nan")


def test_redis_errors_leave_the_store_as_store_unavailable(redis_url: str) -> None:
    store = UserStore.from_url("redis://127.0.0.1:1/0")
    for call in (lambda: store.get("u1"), lambda: store.get_many(["u1"])):
        with pytest.raises(StoreUnavailable, match="ConnectionError"):
            call()
    with pytest.raises(StoreUnavailable):
        store.put_many([record("u1")])


# Against a real three-node Redis Cluster


@contextmanager
def running_cluster(work: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """Three redis-server nodes in cluster mode, the 16384 slots split between them."""
    ports = [cluster_port() for _ in range(3)]
    processes = []
    for port in ports:
        (work / str(port)).mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(work / str(port))]
        processes.append(subprocess.Popen([str(redis_server_binary()), *args]))
    try:
        nodes = [redis.Redis(port=port) for port in ports]
        eventually(lambda: all(_answers(node) for node in nodes), 15, "every node answers")
        for n, node in enumerate(nodes):
            node.execute_command("CLUSTER ADDSLOTS", *range(n * 16384 // 3, (n + 1) * 16384 // 3))
            node.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
        eventually(
            lambda: all(node.cluster("info")["cluster_state"] == "ok" for node in nodes),
            15,
            "the Redis Cluster is up",
        )
        yield f"redis://127.0.0.1:{ports[0]}/0", processes
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as (url, _):
        yield url


def cluster_port() -> int:
    """A free port that leaves room for its cluster bus port (port + 10000 <= 65535)."""
    port = free_port()
    while port > 55535:
        port = free_port()
    return port


def _answers(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except redis.ConnectionError:
        return False


def test_the_store_works_unchanged_on_a_redis_cluster(cluster_url: str) -> None:
    client = redis_client(cluster_url, 2.0, Settings(model=Path("."), redis_cluster=True))
    store = UserStore(client)
    users = [f"c{n}" for n in range(60)]
    assert store.put_many([record(user) for user in users]) == set(users)
    assert store.put_many([record("c1", version=1), record("c2", version=2)]) == {"c2"}
    stored = store.get_many(users)
    assert set(stored) == set(users)
    assert_same(stored["c2"], record("c2", version=2))
    assert_same(store.get("c3"), record("c3"))
    per_node = [node.redis_connection.dbsize() for node in client.get_primaries()]
    assert len(per_node) == 3 and all(per_node), per_node  # users spread over every node
    store.close()


def test_a_cluster_down_at_start_up_is_a_one_line_error() -> None:
    """A cluster client reads the slot map as it is made: no node answering stops start-up
    with an error the CLI prints in one line (exit 2), the password masked."""
    settings = Settings(model=Path("."), redis_cluster=True)
    with pytest.raises(ColdstartError, match=r"cannot reach the Redis Cluster at .*:\*\*\*@") as e:
        redis_client("redis://user:hunter2@127.0.0.1:1/0", 0.5, settings)
    assert "hunter2" not in str(e.value) and "\n" not in str(e.value)


def test_a_cluster_that_stops_answering_is_store_unavailable(tmp_path: Path) -> None:
    """What serving degrades on and the consumer retries on, though a cluster client with no
    node left to ask raises outside redis.RedisError."""
    with running_cluster(tmp_path) as (url, processes):
        client = redis_client(url, 0.5, Settings(model=Path("."), redis_cluster=True))
        store = UserStore(client)
        store.put_many([record("gone")])
        for process in processes:
            process.kill()
            process.wait(timeout=10)
        for read in (lambda: store.get("gone"), lambda: store.get_many(["gone", "other"])):
            with pytest.raises(StoreUnavailable, match="Cluster"):
                read()
