"""Unit: the consumer's validation of a polled record, without a broker."""

from __future__ import annotations

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from service.kafka_consumer import ConsumerConfig, EventConsumer
from service.model import ServingModel
from tests.helpers.user_events import event


def record(value: bytes, key: bytes, timestamp: int | None) -> ConsumerRecord:
    return ConsumerRecord("t", 0, -1, 7, timestamp, 0, key, value, [], None, 1, len(value), 0)


@pytest.mark.parametrize(
    ("timestamp", "ts"), [(1_700_000_000_123, 1_700_000_000_123), (None, None)]
)
def test_a_record_timestamp_stands_in_for_an_absent_ts_and_may_itself_be_absent(
    model: ServingModel, timestamp: int | None, ts: int | None
) -> None:
    """A record of Kafka's oldest message format carries no timestamp."""
    consumer = EventConsumer(model, store=None, config=ConsumerConfig("127.0.0.1:1"))
    value = event("u1", 0, model.item_ids[0]).to_json().replace(b',"ts":', b',"old_ts":')
    (valid,) = consumer._validate([record(value, b"u1", timestamp)])
    assert valid.event.ts == ts
