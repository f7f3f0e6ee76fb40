"""The live catalogue inside one replica: registered items' rows, their ranking beside
the trained items, retirement, a model swap, and the warm-up's exactly-once arithmetic
(with in-memory stores: Redis itself is tested in test_item_store_redis.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch

from service.applier import SourcedEvent
from service.catalogue import ItemEntry
from service.events import Event
from service.history import History, HistoryEntry
from service.item_warmup import ItemWarmup
from service.live_catalogue import LiveCatalogue
from service.model import ServingModel
from service.state import ItemRecord
from trainer.items import item_step
from trainer.split import Support

LAUNCH = ItemEntry("launch", {"genre": ("Drama",), "year": ("1994",)}, ts=1)


def no_text(model: ServingModel, n: int = 1) -> np.ndarray:
    return np.zeros((n, model.text_dim), np.float32)


def test_a_sum_of_user_vectors_steps_an_item_as_its_users_one_by_one(model: ServingModel) -> None:
    """The service keeps only each item's count and sum of user vectors: the item step
    must give the same row as from the users themselves."""
    users = torch.randn(5, model.dim, generator=torch.Generator().manual_seed(0))
    hot = np.stack([model.item_hot(LAUNCH)] * 2)
    pulls = np.array([5, 2])
    sums = np.stack([users.sum(0).numpy(), users[:2].sum(0).numpy()])
    served = model.item_rows(hot, no_text(model, 2), pulls, sums)

    inner = model._model  # the trainer's own step on the users, as evaluation runs it
    with torch.no_grad():
        starts = inner.item_starts(torch.from_numpy(hot), torch.from_numpy(no_text(model, 2)))
        support = Support(
            torch.tensor([[0, 1, 2, 3, 4], [0, 1, 0, 0, 0]]),
            torch.tensor([[1.0] * 5, [1, 1, 0, 0, 0]]),
            torch.zeros(2, 5),
            torch.zeros(2, 5),
            torch.zeros(2, 0, dtype=torch.long),
        )
        direct = item_step(starts, support, users, inner.reference_users, inner.item_rule())
    np.testing.assert_allclose(served, direct.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(served[0], starts[0].numpy())  # the step moved it


def test_registered_items_rank_beside_trained_ones_and_retired_ones_never(
    model: ServingModel,
) -> None:
    catalogue = LiveCatalogue()
    catalogue.apply(LAUNCH, record_ts=0)
    catalogue.apply(ItemEntry(model.item_ids[0], available=False), record_ts=0)
    catalogue.publish(model)
    size = len(model.item_ids)
    assert model.live.ids == ["launch"] and model.index_of("launch", model.live) == size

    vector = model.live.vectors[size] * 50  # favours the launch
    best = model.top_k(vector, size + 1)
    assert best[0][0] == "launch" and model.item_ids[0] not in dict(best)
    assert model.top_k(vector, 5, candidates=[size]) == best[:1]
    history = History([HistoryEntry("launch", None)])
    assert model.seen(history) == [size]
    assert "launch" not in dict(model.top_k(vector, size, exclude=model.seen(history)))

    catalogue.apply(replace(LAUNCH, available=False, ts=2), record_ts=0)
    catalogue.publish(model)
    assert "launch" not in dict(model.top_k(vector, size + 1))
    assert catalogue.counts(model) == {"trained": size - 1, "cold": 0, "warming": 0, "retired": 2}


def test_an_implicit_registration_never_replaces_a_given_record(model: ServingModel) -> None:
    catalogue = LiveCatalogue()
    assert catalogue.apply(LAUNCH, record_ts=0)
    assert not catalogue.apply(ItemEntry("launch", ts=9, implicit=True), record_ts=0)
    assert catalogue.entries["launch"] is LAUNCH and catalogue.registered_ms["launch"] == 1


def test_a_model_swap_keeps_registered_items_and_scores_known_ones_as_trained(
    model: ServingModel, stream_model: ServingModel
) -> None:
    catalogue = LiveCatalogue()
    catalogue.apply(LAUNCH, record_ts=0)
    known = next(i for i in stream_model.item_ids if i not in model.item_index)
    catalogue.apply(ItemEntry(known), record_ts=0)  # trained in the other model only
    catalogue.publish(model)
    assert len(model.live) == 2  # the other model's item is registered, for this one
    catalogue.publish(stream_model)
    assert stream_model.live.ids == ["launch"]
    assert stream_model.live.vectors.shape == (len(stream_model.item_ids) + 1, stream_model.dim)
    summary = catalogue.summary(stream_model, known)
    assert summary is not None and summary.state == "trained"


class MemoryItems:
    """Compare-and-set in memory, as the Lua script does it."""

    def __init__(self) -> None:
        self.records: dict[str, ItemRecord] = {}

    def get_many(self, item_ids: Iterable[str]) -> dict[str, ItemRecord]:
        return {i: self.records[i] for i in item_ids if i in self.records}

    def put_many(self, records: Iterable[ItemRecord], now_ms: int) -> set[str]:
        written = set()
        for record in records:
            stored = self.records.get(record.item_id)
            if stored is None or record.state_version > stored.state_version:
                self.records[record.item_id] = record
                written.add(record.item_id)
        return written


def events_on(item: str, users: list[str], partition: int = 0) -> list[SourcedEvent]:
    return [
        SourcedEvent("events", partition, offset, Event(f"e{offset}", user, item, "click", 1.0, 0))
        for offset, user in enumerate(users)
    ]


def test_the_warmup_adds_each_event_once_and_pulls_at_most_warm_after(model: ServingModel) -> None:
    vectors = {f"u{n}": np.full(model.dim, n + 1.0, np.float32) for n in range(60)}
    items = MemoryItems()
    warmup = ItemWarmup(items)
    batch = events_on("launch", list(vectors)) + events_on(model.item_ids[1], ["u0"])
    # the trained item's event is not an item's warm-up
    assert warmup.apply(model, batch, vectors) == 60
    assert warmup.apply(model, batch, vectors) == 0  # a replay changes nothing
    record = items.records["launch"]
    cap = model.warm_after
    assert (record.count, record.pulls) == (60, min(60, cap))
    expected = sum(vectors[f"u{n}"] for n in range(min(60, cap)))
    np.testing.assert_allclose(record.pull_sum, expected)
    assert warmup.apply(model, events_on("launch", ["u1"], partition=1), vectors) == 1
    assert items.records["launch"].count == 61
    assert items.records["launch"].watermarks == {("events", 0): 59, ("events", 1): 0}


def test_a_warmup_under_another_model_restarts_its_pulls(model: ServingModel) -> None:
    items = MemoryItems()
    items.records["launch"] = ItemRecord(
        "launch", 4, 4, np.ones(model.dim, np.float32), "old-model", 3, {("events", 0): 3}
    )
    ItemWarmup(items).apply(model, events_on("launch", ["a"] * 5), {})  # no state: the prior
    record = items.records["launch"]
    assert (record.count, record.pulls, record.model_version) == (5, 1, model.version)
    np.testing.assert_allclose(record.pull_sum, model.prior.numpy())
