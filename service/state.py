"""What the service keeps per user, whatever keeps it: the record the consumer writes and
Recommend reads, and what the domain needs of the store that keeps it. `service.store`
is that store in Redis."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.history import History

Source = tuple[str, int]  # a Kafka topic and partition


@dataclass(frozen=True)
class UserRecord:
    """Everything stored for one user."""

    user_id: str
    vector: np.ndarray  # (d,) float32 adapted user vector
    history: History  # bounded, newest last
    model_version: str  # the model the vector was adapted under
    state_version: int  # grows by one with every write of this user
    watermarks: Mapping[Source, int] = field(default_factory=dict)  # last applied offsets
    updated_at_ms: int = 0  # when the record was written
    profile: Mapping[str, str] = field(default_factory=dict)  # side features, raw values


@dataclass(frozen=True)
class ItemRecord:
    """Everything stored for one registered item."""

    item_id: str
    count: int  # events applied to the item
    pulls: int  # of them, those whose users pulled its row (the first item_warm_after)
    pull_sum: np.ndarray  # (d,) float32 sum of those users' vectors
    model_version: str  # the model whose user vectors the sum adds up
    state_version: int  # grows by one with every write of this item
    watermarks: Mapping[Source, int] = field(default_factory=dict)  # last applied offsets
    updated_at_ms: int = 0


def merge_profile(profile: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """The profile with `changes` applied: a value replaces the stored one, an empty value
    removes the feature. Events and UpsertUser change a profile the same way."""
    merged = dict(profile)
    for name, value in changes.items():
        if value:
            merged[name] = value
        else:
            merged.pop(name, None)
    return merged


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class StateStore(Protocol):
    """What the domain needs of service.store.UserStore: Recommend reads one user, the
    applier reads and writes a batch. Redis trouble raises StoreUnavailable, an unreadable
    record StoreError."""

    history_limit: int  # entries kept per user, newest last

    def get(self, user_id: str) -> UserRecord | None: ...

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserRecord]: ...

    def put_many(self, records: Iterable[UserRecord]) -> set[str]:
        """Writes each record newer than the stored one; the ids of those written."""
        ...


class ItemStateStore(Protocol):
    """What the domain needs of service.item_store.ItemStore: registered items' warm-up
    records, read and written in batches. Redis trouble raises StoreUnavailable, an
    unreadable record ItemStateError."""

    def get_many(self, item_ids: Iterable[str]) -> dict[str, ItemRecord]: ...

    def put_many(self, records: Iterable[ItemRecord], now_ms: int) -> set[str]:
        """Writes each record newer than the stored one; the ids of those written."""
        ...
