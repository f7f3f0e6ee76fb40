"""Registered items' warm-up state in Redis: one small hash per item, written only by
compare-and-set, and a change feed every replica follows.

Why this shape (README, Items):
- One hash per item at `coldstart:item:{<item_id>}` (a Redis Cluster hash tag, as for
  users), written by the user store's compare-and-set script: two replicas that apply
  events of one item from different partitions, or a replica replaying a batch, can
  never move the item backwards.
- The record holds what the item step needs and no more: how many events the item has
  had, how many of them pulled its row (at most the model's `item_warm_after`), the sum
  of those events' user vectors (the step's only input from its users, `ServingModel.
  item_rows`), the model version the sum was taken under, a state version, the highest
  applied offset per topic and partition (exactly once, as for users), and the write
  time. Features, text and availability live in the items topic, not here: a cold item
  has no record at all.
- Each write also stamps the item, by time, in one sorted set, `coldstart:items:changed`:
  every replica reads the ids changed since its last look, then those items' records,
  so a warm-up is in every scoring table within a second without scanning the catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import redis

from service.errors import ItemStateError, StoreError
from service.state import ItemRecord
from service.store import (
    MODEL,
    REDIS_ERRORS,
    STATE,
    UPDATED,
    CasWriter,
    decode_watermarks,
    encode_watermarks,
    finite_vector,
    joined,
    redis_calls,
    reply_error,
    version_fields,
    whole_number,
)

KEY_PREFIX = "coldstart:item:"
CHANGES = "coldstart:items:changed"
CHANGES_KEPT_MS = 3_600_000  # the feed keeps an hour of changes: a replica is never further behind
CHUNK = "64"  # the user store's chunk size: the whole hash stays a compact listpack
COUNT, PULLS, SUM, WATERMARK = "n", "k", "v", "w"  # model, state, updated: the user store's


def item_key(item_id: str) -> str:
    return f"{KEY_PREFIX}{{{item_id}}}"


def encode_item(record: ItemRecord) -> list[str | bytes]:
    """The compare-and-set script's arguments after the state version and TTL."""
    return [
        CHUNK,
        "2",
        SUM,
        np.ascontiguousarray(record.pull_sum, dtype="<f4").tobytes(),
        WATERMARK,
        encode_watermarks(record.watermarks),
        COUNT,
        str(record.count),
        PULLS,
        str(record.pulls),
        *version_fields(record.model_version, record.state_version, record.updated_at_ms),
    ]


def decode_item(item_id: str, fields: Mapping[bytes, bytes]) -> ItemRecord:
    try:
        return ItemRecord(
            item_id=item_id,
            count=whole_number(fields[COUNT.encode()]),
            pulls=whole_number(fields[PULLS.encode()]),
            pull_sum=finite_vector(joined(SUM, fields)),
            model_version=fields[MODEL.encode()].decode(),
            state_version=whole_number(fields[STATE.encode()]),
            watermarks=decode_watermarks(joined(WATERMARK, fields)),
            updated_at_ms=whole_number(fields[UPDATED.encode()]),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as error:
        raise _unreadable(item_id, error) from None


def _unreadable(item_id: str, error: Exception) -> ItemStateError:
    detail = f"{type(error).__name__}: {error}"
    return ItemStateError(item_id, f"item {item_id!r}: stored record is unreadable ({detail})")


def _item_error(item_id: str, error: Exception) -> Exception:
    """The user store's reading of a Redis reply error, for an item."""
    found = reply_error(item_id, error)
    return _unreadable(item_id, error) if isinstance(found, StoreError) else found


class ItemStore:
    """Reads and compare-and-set writes of item records, and the change feed."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.writer = CasWriter(client)

    def get_many(self, item_ids: Iterable[str]) -> dict[str, ItemRecord]:
        """The stored records of the items that have one, in one round trip; an unreadable
        one raises ItemStateError naming its item (the caller sets it aside)."""
        ids = list(dict.fromkeys(item_ids))
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.hgetall(item_key(item_id))
        with redis_calls():
            replies = pipe.execute(raise_on_error=False) if ids else []
        records = {}
        for item_id, reply in zip(ids, replies, strict=True):
            if isinstance(reply, Exception):
                raise _item_error(item_id, reply)
            if reply:
                records[item_id] = decode_item(item_id, reply)
        return records

    def put_many(self, records: Iterable[ItemRecord], now_ms: int) -> set[str]:
        """Writes each record newer than the stored one, and stamps the written ones in the
        change feed, in one round trip; the ids of those written."""
        records = list(records)
        writes = {
            r.item_id: (item_key(r.item_id), [str(r.state_version), "0", *encode_item(r)])
            for r in records
        }

        def stamp(pipe: redis.client.Pipeline) -> None:
            # Stamped whether or not the write wins: a loser's item changed anyway.
            pipe.zadd(CHANGES, {r.item_id: now_ms for r in records})
            pipe.zremrangebyscore(CHANGES, 0, now_ms - CHANGES_KEPT_MS)

        try:
            return self.writer.write(writes, after=stamp if records else None)
        except StoreError as error:  # the item's key holds something other than a hash
            raise _unreadable(error.user_id, error) from None

    def close(self) -> None:
        self.client.close()

    def changed_since(self, since_ms: int) -> list[str]:
        """Ids of the items written at or after `since_ms` (by the writers' clocks)."""
        try:
            return [raw.decode() for raw in self.client.zrangebyscore(CHANGES, since_ms, "+inf")]
        except REDIS_ERRORS as error:
            raise _item_error(CHANGES, error) from error
