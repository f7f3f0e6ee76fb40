"""Items-topic records: what is valid, what is refused and why, and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from service import catalogue
from service.catalogue import ItemEntry, parse_item
from service.errors import InvalidEvent
from service.events import BAD_ID, BAD_VALUE, MAX_PAYLOAD_BYTES, WRONG_TYPE


def record(**fields: object) -> bytes:
    return json.dumps({"item_id": "launch", **fields}).encode()


def test_a_record_round_trips_and_fills_its_defaults() -> None:
    entry = parse_item(record(features={"genre": ["Drama", "War", "Drama"], "year": "1996"}))
    assert entry == ItemEntry("launch", {"genre": ("Drama", "War"), "year": ("1996",)})
    assert entry.year == 1996 and entry.available and not entry.implicit
    full = ItemEntry("x", {"genre": ("a",)}, "Some text", False, 17, True)
    assert parse_item(full.to_json()) == full


@pytest.mark.parametrize(
    ("fields", "reason", "message"),
    [
        ({"item_id": "x" * 300}, BAD_ID, "300 characters, more than the limit of 256"),
        ({"item_id": 7}, WRONG_TYPE, "item_id must be a string"),
        ({"features": {"year": "nineteen"}}, BAD_VALUE, "year must be one whole number"),
        ({"features": {"year": ["1990", "1991"]}}, BAD_VALUE, "one whole number"),
        ({"features": {"year": "123456"}}, BAD_VALUE, "more than four digits"),
        ({"features": {"genre": [1]}}, WRONG_TYPE, "a string or a list of strings"),
        ({"features": ["genre"]}, WRONG_TYPE, "features must be an object"),
        ({"text": "y" * 20_000}, catalogue.TEXT_TOO_LONG, "20000 characters"),
        ({"available": "no"}, WRONG_TYPE, "available must be true or false"),
        ({"ts": -1}, "bad_ts", "ts must be milliseconds"),
    ],
)
def test_a_bad_record_is_refused_with_a_reason_and_a_message(
    fields: dict, reason: str, message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message) as refused:
        parse_item(record(**fields))
    assert refused.value.reason == reason


def test_unreadable_bytes_are_refused_not_raised() -> None:
    nested = b"[" * 60_000  # under the size limit, too deep for the parser's recursion
    cases = ((b"", "empty_record"), (b"{", "bad_json"), (b"\xff", "bad_json"), (nested, "bad_json"))
    for raw, reason in cases:
        with pytest.raises(InvalidEvent) as refused:
            parse_item(raw)
        assert refused.value.reason == reason
    with pytest.raises(InvalidEvent) as refused:
        parse_item(b" " * (MAX_PAYLOAD_BYTES + 1) + b"{}")
    assert refused.value.reason == "payload_too_large"
