"""Registered items' warm-up records on a real redis-server: round trip, compare-and-set,
the change feed, and an unreadable record named as the item's."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from service.errors import ItemStateError
from service.item_store import CHANGES, ItemStore, item_key
from service.localstack import LocalStack
from service.state import ItemRecord
from service.store import UserStore


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with LocalStack(kafka=False, redis=True) as stack:
        yield stack.redis_url


@pytest.fixture
def items(redis_url: str) -> Iterator[ItemStore]:
    client = UserStore.from_url(redis_url).client
    client.flushdb()
    yield ItemStore(client)
    client.close()


def item(version: int, count: int = 3) -> ItemRecord:
    return ItemRecord(
        item_id="launch",
        count=count,
        pulls=min(count, 2),
        pull_sum=np.arange(64, dtype=np.float32),
        model_version="m1",
        state_version=version,
        watermarks={("events", 0): 12, ("events", 3): 4},
        updated_at_ms=1_700_000_000_123,
    )


def test_a_record_round_trips_and_only_a_newer_version_replaces_it(items: ItemStore) -> None:
    assert items.put_many([item(2)], now_ms=1000) == {"launch"}
    stored = items.get_many(["launch", "absent"])
    assert list(stored) == ["launch"]
    got = stored["launch"]
    np.testing.assert_array_equal(got.pull_sum, item(2).pull_sum)
    assert (got.count, got.pulls, got.watermarks) == (3, 2, item(2).watermarks)
    assert items.put_many([item(2, count=9)], now_ms=1001) == set()  # not newer
    assert items.put_many([item(3, count=9)], now_ms=1002) == {"launch"}
    assert items.get_many(["launch"])["launch"].count == 9


def test_the_change_feed_names_the_items_written_since_a_time(items: ItemStore) -> None:
    items.put_many([item(1)], now_ms=5_000)
    items.put_many([item(2)], now_ms=9_000)
    assert items.changed_since(8_000) == ["launch"]
    assert items.changed_since(9_001) == []
    assert items.client.zcard(CHANGES) == 1  # one stamp per item, moved forward


def test_an_unreadable_record_is_the_items_own_error(items: ItemStore) -> None:
    items.client.set(item_key("launch"), b"not a hash")
    with pytest.raises(ItemStateError) as raised:
        items.get_many(["launch"])
    assert raised.value.item_id == "launch"
    with pytest.raises(ItemStateError):
        items.put_many([item(1)], now_ms=1)
    items.client.delete(item_key("launch"))
    items.client.hset(item_key("launch"), mapping={"n": "x"})
    with pytest.raises(ItemStateError, match="stored record is unreadable"):
        items.get_many(["launch"])
