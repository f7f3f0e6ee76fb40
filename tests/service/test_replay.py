"""Unit: a replay that the broker does not fully take is an error, not a success."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError

from service import replay as replay_module
from service.replay import ReplayError, replay
from trainer.synth import write_synthetic


class LosingFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_errback(self, callback) -> LosingFuture:
        if self.error is not None:
            callback(self.error)
        return self


class LosingProducer:
    """Every third send fails, as sends do when the broker dies mid-replay."""

    def __init__(self, **_: object) -> None:
        self.sent = 0

    def send(self, topic: str, key: bytes, value: bytes) -> LosingFuture:
        self.sent += 1
        lost = self.sent % 3 == 0
        return LosingFuture(KafkaTimeoutError("expired before delivery") if lost else None)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_events_the_broker_did_not_take_make_the_replay_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic(tmp_path, n_users=60, n_items=50, seed=3)
    monkeypatch.setattr(replay_module, "KafkaProducer", LosingProducer)
    with pytest.raises(ReplayError) as raised:
        replay(tmp_path, "127.0.0.1:9", "events", users=5)
    _, order = replay_module.replay_order(replay_module.load_dataset(tmp_path), 0, 5)
    assert str(raised.value).startswith(f"the broker did not take {len(order) // 3} of ")
    assert "expired before delivery" in str(raised.value)
    assert str(raised.value).endswith("events holds a partial replay")
