"""Redis memory per adapted user (`MEMORY USAGE`): a standing target of <= 1 KiB.

A user as the consumer stores one: a 64-dimensional vector, a 50-event history of
ml-1m-like item ids (every other event a rating), two applied-offset marks; and the
same user with a 3-feature profile. Written through the service's own store, on a
redis-server started by the local stack.

    python benchmarks/bench_memory.py

Prints one JSON object.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from common import machine

from service.history import History, HistoryEntry
from service.localstack import LocalStack
from service.state import UserRecord
from service.store import UserStore, user_key

PROFILE = {"age": "34", "gender": "F", "occupation": "technician"}


def main() -> None:
    history = History(HistoryEntry(str(1000 + n), 4.0 if n % 2 else None) for n in range(50))
    user = UserRecord(
        user_id="user-000123",
        vector=np.random.default_rng(0).normal(size=64).astype(np.float32),
        history=history,
        model_version="0123456789abcdef",
        state_version=1,
        watermarks={("coldstart.events", 0): 100_000, ("coldstart.events", 3): 7_000},
        updated_at_ms=1_700_000_000_000,
    )
    profiled = replace(user, user_id="user-000124", profile=PROFILE)
    with LocalStack(kafka=False, redis=True) as stack:
        store = UserStore.from_url(stack.redis_url)
        store.put_many([user, profiled])
        sizes = {
            name: store.client.memory_usage(user_key(record.user_id), samples=0)
            for name, record in (("no_profile", user), ("profile_3_features", profiled))
        }
        version = store.client.info("server")["redis_version"]
        store.close()
    print(json.dumps({"bytes_per_user": sizes, "redis": version, **machine()}))


if __name__ == "__main__":
    main()
