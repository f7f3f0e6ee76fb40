"""Replay a data set's test users into the events topic, for demos and benchmarks.

Why test users only, in protocol order: they are the users a model trained
with the same seed has never seen, so watching them stream in is watching
cold-start adaptation, and their events arrive in the order the offline
evaluation uses (time order per user; users interleaved by time). Event
times (`ts`) are the time of producing, not the data set's, so the service's
event-to-state freshness measures the service. Event ids are deterministic
(`<seed>-<user>-<position>`), so two replays of the same data say the same thing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from service.errors import ReplayError
from service.events import Event
from service.state import now_ms
from trainer.data import Dataset, load_dataset
from trainer.split import protocol_order, split_users

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    users: int  # test users replayed
    events: int  # events produced
    seconds: float  # wall time, from the first send to the last acknowledgement

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def replay(
    data_dir: str | Path,
    bootstrap: str,
    topic: str = "coldstart.events",
    users: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    data_format: str | None = None,
) -> ReplayResult:
    """Produce the test users' interactions (the first `users` of them; all when None) as
    JSON events keyed by user id, at about `rate` events/s (as fast as possible when None)."""
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    data = load_dataset(data_dir, data_format)
    chosen, order = replay_order(data, seed, users)
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    except KafkaError as error:  # no broker answered at bootstrap: nothing was sent
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {error}") from None
    failures: list[Exception] = []  # filled on the producer's thread as sends fail
    started = time.perf_counter()
    try:
        for n, (user, position, item, rating) in enumerate(order):
            _pace(started, n, rate)
            event = _event(data, seed, user, position, item, rating)
            sent = producer.send(topic, key=event.user_id.encode(), value=event.to_json())
            sent.add_errback(failures.append)
        producer.flush()  # returns when every send is acknowledged or has failed
    finally:
        producer.close()
    if failures:
        raise ReplayError(
            f"the broker did not take {len(failures)} of {len(order)} events "
            f"(first: {failures[0]}); {topic} holds a partial replay"
        )
    result = ReplayResult(len(chosen), len(order), time.perf_counter() - started)
    logger.info(
        "replayed %s events of %s test users to %s in %.1f s",
        result.events,
        result.users,
        topic,
        result.seconds,
    )
    return result


def replay_order(
    data: Dataset, seed: int, users: int | None
) -> tuple[np.ndarray, list[tuple[int, int, int, float | None]]]:
    """The chosen test users and their events as (user, position, item, rating), in the
    order to send: each user's protocol order, users interleaved by time (or position)."""
    seqs = protocol_order(data, seed)
    chosen = split_users(data, seed).test
    if users is not None:
        chosen = chosen[:users]
    times = _protocol_times(data)
    rows = []
    for user in chosen:
        start, end = int(seqs.offsets[user]), int(seqs.offsets[user + 1])
        for position, flat in enumerate(range(start, end)):
            rating = None if seqs.ratings is None else float(seqs.ratings[flat])
            key = float(times[flat]) if times is not None else float(position)
            rows.append((key, (int(user), position, int(seqs.items[flat]), rating)))
    rows.sort(key=lambda row: row[0])  # stable: a user's events keep protocol order
    return chosen, [row[1] for row in rows]


def _protocol_times(data: Dataset) -> np.ndarray | None:
    """Each interaction's time, aligned with `protocol_order`'s sequences (time order per
    user, the same sort), or None when the data has no time."""
    if data.timestamps is None:
        return None
    return data.timestamps[np.lexsort((data.timestamps, data.users))]


def _event(
    data: Dataset, seed: int, user: int, position: int, item: int, rating: float | None
) -> Event:
    """The user's first event carries their profile, as a producer that knows it would."""
    user_id = data.user_ids[user]
    return Event(
        event_id=f"{seed}-{user_id}-{position}",
        user_id=user_id,
        item_id=data.item_ids[item],
        type="rating" if rating is not None else "click",
        value=rating if rating is not None else 1.0,
        ts=now_ms(),
        features=data.profile(user) if position == 0 else {},
    )


def _pace(started: float, sent: int, rate: float | None) -> None:
    """Sleep until event number `sent` is due at `rate` events/s."""
    if rate is None:
        return
    delay = started + sent / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
