"""Integration: the event applier against a real redis-server: exactly-once application
by watermarks, bounded histories, and the online hit rate judged on the current top-k."""

from __future__ import annotations

import pytest

from service.applier import EventApplier, SourcedEvent
from service.errors import StoreUnavailable
from service.localstack import LocalStack
from service.model import ServingModel, item_indices
from service.observer import StreamObserver
from service.state import UserRecord
from service.store import UserStore, user_key
from tests.helpers.user_events import assert_adapted_from_history, event


@pytest.fixture(scope="module")
def model(stream_model: ServingModel) -> ServingModel:
    """The event path's model: more users and items than the default tiny one."""
    return stream_model


class Hits(StreamObserver):
    def __init__(self) -> None:
        self.judged: list[bool] = []

    def on_hit(self, hit: bool) -> None:
        self.judged.append(hit)


def test_online_hits_are_judged_on_the_current_top_k_for_a_sample_of_users(
    model: ServingModel, stack: LocalStack
) -> None:
    store = UserStore.from_url(stack.redis_url)
    observer = Hits()
    applier = EventApplier(model, store, observer, hit_k=3, hit_sample=2)
    cold = [item for item, _ in model.top_k(model.prior.numpy(), len(model.item_ids))]
    first = [SourcedEvent("t", 0, 0, event("hits-a", 0, cold[0]))]  # a new user's best item: a hit
    first.append(SourcedEvent("t", 0, 1, event("hits-b", 1, cold[-1])))  # their worst: a miss
    applier.apply(first)
    assert sorted(observer.judged) == [False, True]

    # Judged against the stored vector, with the user's seen items left out of its top-k.
    stored = store.get("hits-a")
    best = model.top_k(stored.vector, 3, exclude=item_indices(model.interactions(stored.history)))
    observer.judged.clear()
    applier.apply([SourcedEvent("t", 0, 2, event("hits-a", 2, best[-1][0]))])
    applier.apply([SourcedEvent("t", 0, 3, event("hits-a", 3, cold[0]))])  # seen: not in the top-k
    assert observer.judged == [True, False]

    observer.judged.clear()
    applier.apply(
        [SourcedEvent("t", 0, 4 + n, event(f"hits-{n}", 4 + n, cold[0])) for n in range(5)]
    )
    assert len(observer.judged) == 2  # five users touched, two judged
    store.close()


def test_a_batch_retried_after_a_failed_write_is_judged_once(
    model: ServingModel, stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = UserStore.from_url(stack.redis_url)
    observer = Hits()
    applier = EventApplier(model, store, observer)
    writes = []

    def fails_once(records: list[UserRecord]) -> set[str]:
        writes.append(records)
        if len(writes) == 1:
            raise StoreUnavailable("injected: the write did not reach Redis")
        return UserStore.put_many(store, records)

    monkeypatch.setattr(store, "put_many", fails_once)
    batch = [SourcedEvent("t", 0, 0, event("judged-once", 0, model.item_ids[0]))]
    with pytest.raises(StoreUnavailable):
        applier.apply(batch)
    assert observer.judged == []
    assert applier.apply(batch) == 1  # the consumer's retry of the same batch
    assert len(observer.judged) == 1 and len(writes) == 2
    store.close()


def test_a_state_with_no_current_top_k_is_not_judged_and_its_write_repairs_it(
    model: ServingModel, stack: LocalStack
) -> None:
    store = UserStore.from_url(stack.redis_url, history_limit=2)
    observer = Hits()
    applier = EventApplier(model, store, observer)
    items, users = model.item_ids, ["short-vector", "torn-oldest"]
    applier.apply(
        [SourcedEvent("t", 0, n, event(user, n, items[n])) for user in users for n in (0, 1)]
    )
    store.client.hset(user_key("short-vector"), "v0", b"\0" * 8)  # a 2-float vector
    store.client.hset(user_key("torn-oldest"), "h0", f"{items[0]}\x1ffour\x1e{items[1]}")
    observer.judged.clear()
    assert applier.apply([SourcedEvent("t", 0, 2, event(user, 2, items[2])) for user in users]) == 2
    assert observer.judged == []
    for user in users:
        assert_adapted_from_history(model, store.get(user))
    history = store.get("torn-oldest").history  # the unreadable entry was cut off
    assert [entry.item_id for entry in history] == items[1:3]
    store.close()


def test_a_new_topic_whose_offsets_start_again_is_not_taken_for_a_replay(
    model: ServingModel, stack: LocalStack
) -> None:
    store = UserStore.from_url(stack.redis_url)
    applier = EventApplier(model, store)
    items = model.item_ids
    old = [SourcedEvent("events.old", 0, 100 + n, event("moved", n, items[n])) for n in range(3)]
    assert applier.apply(old) == 3
    new = [SourcedEvent("events.new", 0, n, event("moved", 3 + n, items[3 + n])) for n in range(2)]
    assert applier.apply(new) == 2  # offsets 0 and 1 are below the old topic's mark
    assert applier.apply(new[:1]) == 0  # and a replay of the new topic is still dropped
    record = store.get("moved")
    store.close()
    assert [entry.item_id for entry in record.history] == items[:5]
    assert dict(record.watermarks) == {("events.old", 0): 102, ("events.new", 0): 1}


def test_history_is_bounded_to_the_newest_events(model: ServingModel, stack: LocalStack) -> None:
    store = UserStore.from_url(stack.redis_url, history_limit=5)
    applier = EventApplier(model, store)
    items = model.item_ids[:12]
    batches = [items[:7], items[7:]]
    offset = 0
    for batch in batches:
        sourced = []
        for item in batch:
            sourced.append(SourcedEvent("t", 0, offset, event("bounded-user", offset, item)))
            offset += 1
        assert applier.apply(sourced) == len(batch)
    record = store.get("bounded-user")
    store.close()
    assert [entry.item_id for entry in record.history] == items[-5:]
    assert_adapted_from_history(model, record)
