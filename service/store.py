"""User state in Redis: one small hash per user, written only by compare-and-set.

Why this shape (DESIGN.md, User state in Redis):
- One hash per user at `coldstart:user:{<user_id>}`. The braces are a Redis
  Cluster hash tag, and every script call touches that one key, so the store
  works unchanged on a cluster (`--redis-cluster`): a pipeline of many users is
  split by the client into one pipeline per node.
- The record holds what serving and re-adaptation need and no more: the
  adapted vector (float32 bytes), the bounded recent history as raw item ids
  with their rating (so a new model, whose item indices differ, can re-adapt
  the user from it), the profile as raw feature values (so a new model reads
  them its own way), the model version, a state version, the highest applied
  Kafka offset per topic and partition (so a replayed event is recognised and
  dropped, and a new topic's offsets, which start again at 0, are not), and
  the time of the write. A 64-dimensional user with 50 events of history
  takes well under 1 KiB (`MEMORY USAGE`), which is a standing target.
- Writes go through one Lua script per user that applies the record only if
  its state version is greater than the stored one: two writers that race, or
  a writer replaying old events, can never move a user backwards. All of a
  batch's scripts travel in one pipeline (one round trip).

Encodings are compact but plain: the history as `service.history` writes it;
the watermark is "topic:partition:offset" triples joined by commas (Kafka topic
names cannot hold ':' or ','); the profile as "name<US>value" pairs joined by <RS>
(feature names and values cannot hold control characters, service.events).

Every Redis failure leaves this module as `StoreUnavailable`, so the code that decides
what to do about one (serving degrades, the consumer retries) needs no redis import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from service.errors import StoreError, StoreUnavailable
from service.history import History
from service.state import Source, UserRecord

logger = logging.getLogger(__name__)

# What an unreachable Redis raises. A cluster client that finds no node answering raises
# RedisClusterException, which redis-py does not derive from RedisError.
REDIS_ERRORS = (redis.RedisError, RedisClusterException)

KEY_PREFIX = "coldstart:user:"
HISTORY_LIMIT = 50  # events kept per user, newest last

# Hash fields: one letter each, since field names are stored once per user.
VECTOR, HISTORY, MODEL, STATE, WATERMARK, UPDATED, PROFILE = "v", "h", "m", "s", "w", "t", "p"
_RECORD_SEP, _UNIT_SEP = "\x1e", "\x1f"
# Blob fields (vector, history, watermark) are split into fields of at most CHUNK bytes, so
# that Redis keeps the whole hash in its compact ziplist/listpack encoding (values up to
# hash-max-ziplist-value = 64 bytes by default): about half the memory of a hashtable.
CHUNK = 64

# KEYS[1]: the user's hash. ARGV: the new state version, the TTL in seconds (0: none), the
# chunk size, the number of blobs, (name, blob) pairs, then (field, value) pairs: what
# encode_record gives. Each blob is stored as fields <name>0, <name>1, ... of at most a
# chunk. Returns 1 if written, 0 if not newer. The script splits the blobs, not the client:
# the client's cost of a command grows with its arguments (redis-py packs each one in
# Python), and a split record is three times as many. HSET takes the fields 500 pairs at a
# time: Lua's unpack() fails past about 8,000 values, which a long history reaches.
CAS_SCRIPT = """
local stored = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
if tonumber(ARGV[1]) <= stored then
  return 0
end
local fields, chunk, blobs = {}, tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 0, blobs - 1 do
  local name, blob = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  for n = 0, math.max(1, math.ceil(#blob / chunk)) - 1 do
    fields[#fields + 1] = name .. n
    fields[#fields + 1] = string.sub(blob, n * chunk + 1, (n + 1) * chunk)
  end
end
for i = 5 + 2 * blobs, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('DEL', KEYS[1])
for i = 1, #fields, 1000 do
  redis.call('HSET', KEYS[1], unpack(fields, i, math.min(i + 999, #fields)))
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
"""


def user_key(user_id: str) -> str:
    """The user's hash key; `{user_id}` is the Redis Cluster hash tag."""
    return f"{KEY_PREFIX}{{{user_id}}}"


def encode_watermarks(watermarks: Mapping[Source, int]) -> bytes:
    return ",".join(f"{t}:{p}:{o}" for (t, p), o in sorted(watermarks.items())).encode()


def decode_watermarks(raw: bytes) -> dict[Source, int]:
    marks = {}
    for mark in raw.decode().split(",") if raw else []:
        topic, partition, offset = mark.split(":")
        marks[topic, int(partition)] = int(offset)
    return marks


def encode_profile(profile: Mapping[str, str]) -> bytes:
    return _RECORD_SEP.join(f"{n}{_UNIT_SEP}{v}" for n, v in sorted(profile.items())).encode()


def decode_profile(raw: bytes) -> dict[str, str]:
    return dict(pair.split(_UNIT_SEP) for pair in raw.decode().split(_RECORD_SEP))


def encode_record(record: UserRecord) -> list[str | bytes]:
    """The compare-and-set script's arguments after the state version and TTL: the blobs,
    which the script splits into fields of at most CHUNK bytes, then the plain fields."""
    blobs = [
        VECTOR,
        np.ascontiguousarray(record.vector, dtype="<f4").tobytes(),
        HISTORY,
        record.history.encode(),
        WATERMARK,
        encode_watermarks(record.watermarks),
    ]
    if record.profile:  # most users have none: no field at all
        blobs += [PROFILE, encode_profile(record.profile)]
    return [
        str(CHUNK),
        str(len(blobs) // 2),
        *blobs,
        *version_fields(record.model_version, record.state_version, record.updated_at_ms),
    ]


def version_fields(model_version: str, state_version: int, updated_at_ms: int) -> list[str]:
    """The plain fields every record carries: its model, state version and write time."""
    return [MODEL, model_version, STATE, str(state_version), UPDATED, str(updated_at_ms)]


def decode_record(user_id: str, fields: Mapping[bytes, bytes]) -> UserRecord:
    """A record from its hash fields (as redis-py returns them, bytes keys)."""
    try:
        return UserRecord(
            user_id=user_id,
            vector=finite_vector(joined(VECTOR, fields)),
            history=History.decode(joined(HISTORY, fields)),
            model_version=fields[MODEL.encode()].decode(),
            state_version=whole_number(fields[STATE.encode()]),
            watermarks=decode_watermarks(joined(WATERMARK, fields)),
            updated_at_ms=whole_number(fields[UPDATED.encode()]),
            profile=decode_profile(joined(PROFILE, fields))
            if f"{PROFILE}0".encode() in fields
            else {},
        )
    except (KeyError, ValueError, UnicodeDecodeError) as error:
        raise StoreError.of(user_id, error) from None


def finite_vector(raw: bytes) -> np.ndarray:
    """Finite floats only: this store never writes NaN or infinity, and a vector holding one
    would rank every item NaN while the response called itself adapted."""
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise ValueError("the vector holds NaN or infinity")
    return vector


def whole_number(raw: bytes) -> int:
    """ASCII digits only: what this store writes. Python's int() also takes '1_0' and other
    scripts' digits, which the script's tonumber() cannot read: every write of the user
    would then fail as a Redis error, and their batch retry forever."""
    if not raw.isdigit():  # bytes.isdigit() is ASCII-only
        raise ValueError(f"{raw!r} is not a whole number")
    return int(raw)


def joined(name: str, fields: Mapping[bytes, bytes]) -> bytes:
    """A blob from its fields <name>0, <name>1, ...; KeyError when it is absent."""
    pieces = []
    while (piece := fields.get(f"{name}{len(pieces)}".encode())) is not None:
        pieces.append(piece)
    if not pieces:
        raise KeyError(f"{name}0")
    return b"".join(pieces)


def reply_error(user_id: str, error: Exception) -> Exception:
    """WRONGTYPE (the user's key holds something other than a hash: another writer, a hand
    edit) is this user's unreadable record, a StoreError: the consumer sets their events
    aside instead of retrying its batch forever. Any other error is Redis's own trouble.
    (A script reports WRONGTYPE inside its own error message on Redis before 7.)"""
    if isinstance(error, redis.ResponseError) and "WRONGTYPE" in str(error):
        return StoreError.of(user_id, error)
    return _unavailable(error)


def _unavailable(error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"Redis: {type(error).__name__}: {error}")


@contextmanager
def redis_calls() -> Iterator[None]:
    """Any Redis failure inside, as StoreUnavailable (the original chained)."""
    try:
        yield
    except REDIS_ERRORS as error:
        raise _unavailable(error) from error


class CasWriter:
    """Compare-and-set writes of many records, one script call each, in one pipeline."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._cas = client.register_script(CAS_SCRIPT)
        # redis-py's cluster pipeline refuses EVALSHA (a script may be missing on a node) but
        # routes EVAL by its one key: on a cluster the script text travels with each call.
        self._cluster = isinstance(client, RedisCluster)

    def write(
        self, writes: Mapping[str, tuple[str, list[str | bytes]]], after: Callable | None = None
    ) -> set[str]:
        """Runs the script for each id's (key, arguments); returns the ids written (the
        others held a newer or equal state version). `after(pipe)` may queue more commands
        behind the writes, in the same round trip. A key that is not a hash raises
        StoreError for its id."""
        if not writes:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for key, args in writes.values():
            if self._cluster:
                pipe.execute_command("EVAL", CAS_SCRIPT, 1, key, *args)
            else:
                self._cas(keys=[key], args=args, client=pipe)
        if after is not None:
            after(pipe)
        with redis_calls():
            replies = pipe.execute(raise_on_error=False)
        written = set()
        for name, reply in zip(writes, replies, strict=False):
            if isinstance(reply, Exception):
                raise reply_error(name, reply)
            if reply == 1:
                written.add(name)
        return written


class UserStore:
    """Reads and compare-and-set writes of user records over a redis-py client.

    A Redis failure raises StoreUnavailable: the caller decides whether to degrade
    (serving) or retry (the consumer).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        history_limit: int = HISTORY_LIMIT,
        ttl_s: int | None = None,
    ) -> None:
        self.client = client  # bytes responses (decode_responses=False)
        self.history_limit = history_limit  # entries kept per user, newest last
        self.ttl_s = ttl_s  # expire a user this long after its last write; None: never
        self.writer = CasWriter(client)

    @classmethod
    def from_url(cls, url: str, **options: object) -> UserStore:
        """A store on a new client for `url` (redis://host:port/db)."""
        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return cls(client, **options)

    def get(self, user_id: str) -> UserRecord | None:
        """One user's record, or None when nothing is stored: one round trip."""
        try:
            fields = self.client.hgetall(user_key(user_id))
        except REDIS_ERRORS as error:
            raise reply_error(user_id, error) from error
        return decode_record(user_id, fields) if fields else None

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserRecord]:
        """The stored records of the users that have one, in one pipelined round trip."""
        ids = list(dict.fromkeys(user_ids))
        pipe = self.client.pipeline(transaction=False)
        for user_id in ids:
            pipe.hgetall(user_key(user_id))
        with redis_calls():
            replies = pipe.execute(raise_on_error=False) if ids else []
        records = {}
        for user_id, reply in zip(ids, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply_error(user_id, reply)
            if reply:
                records[user_id] = decode_record(user_id, reply)
        return records

    def put_many(self, records: Iterable[UserRecord]) -> set[str]:
        """Writes each record if its state version is newer than the stored one.

        One compare-and-set script call per user, all in one pipeline. Returns
        the ids of the users written; the others already had a newer or equal state.
        A user whose key is not a hash raises StoreError; the batch's other users are written.
        """
        records = list(records)
        ttl = str(self.ttl_s or 0)
        writes = {
            record.user_id: (
                user_key(record.user_id),
                [str(record.state_version), ttl, *encode_record(record)],
            )
            for record in records
        }
        applied = self.writer.write(writes)
        if len(applied) < len(records):
            logger.info(
                "%s of %s user writes were not newer", len(records) - len(applied), len(records)
            )
        return applied

    def close(self) -> None:
        self.client.close()
