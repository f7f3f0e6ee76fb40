"""Unit: event parsing and validation, one test per way a record can be wrong."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import events
from service.errors import InvalidEvent
from service.events import (
    Event,
    check_key,
    check_known,
    event_from_mapping,
    parse_event,
)

GOOD = {
    "event_id": "e1",
    "user_id": "u1",
    "item_id": "i1",
    "type": "rating",
    "value": 4.5,
    "ts": 1_700_000_000_000,
}


def encoded(**changes: object) -> bytes:
    document = {**GOOD, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def reason_of(value: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(value)
    assert str(caught.value) == caught.value.message
    return caught.value.reason


def test_a_valid_event_round_trips() -> None:
    event = parse_event(encoded())
    assert event == Event("e1", "u1", "i1", "rating", 4.5, 1_700_000_000_000)
    assert event.rating == 4.5
    assert parse_event(event.to_json()) == event


def test_integers_are_accepted_as_values_and_extra_keys_ignored() -> None:
    event = parse_event(encoded(type="click", value=1, extra={"a": 1}))
    assert event.value == 1.0 and isinstance(event.value, float)
    assert event.rating is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, events.EMPTY),
        (b"", events.EMPTY),
        (b"{not json", events.BAD_JSON),
        (b"\xff\xfe", events.BAD_JSON),
        (b"[1, 2]", events.NOT_OBJECT),
        (b'"text"', events.NOT_OBJECT),
        (b"x" * (events.MAX_PAYLOAD_BYTES + 1), events.TOO_LARGE),
        pytest.param(b"[" * 5000, events.BAD_JSON, id="nested-too-deep"),  # RecursionError
    ],
)
def test_unreadable_records_are_refused(value: bytes | None, reason: str) -> None:
    assert reason_of(value) == reason


@pytest.mark.parametrize("field", events.FIELDS)
def test_a_missing_field_is_named(field: str) -> None:
    with pytest.raises(InvalidEvent, match=f"missing field {field}") as caught:
        parse_event(encoded(**{field: ...}))
    assert caught.value.reason == events.MISSING_FIELD


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"user_id": 7}, events.WRONG_TYPE),
        ({"item_id": None}, events.WRONG_TYPE),
        ({"type": 3}, events.WRONG_TYPE),
        ({"value": "4"}, events.WRONG_TYPE),
        ({"value": True}, events.WRONG_TYPE),
        ({"ts": 1.5}, events.WRONG_TYPE),
        ({"ts": "1700000000000"}, events.WRONG_TYPE),
        ({"user_id": ""}, events.BAD_ID),
        ({"event_id": "e" * 257}, events.BAD_ID),
        ({"item_id": "a\x1fb"}, events.BAD_ID),
        ({"user_id": "a\udc80"}, events.BAD_ID),  # json.dumps escapes it; Redis could not hold it
        ({"value": 10**400}, events.BAD_VALUE),  # float() raises OverflowError
        ({"type": "like"}, events.UNKNOWN_TYPE),
        ({"value": 11.0}, events.BAD_VALUE),
        ({"value": -0.5}, events.BAD_VALUE),
        ({"ts": -1}, events.BAD_TS),
        ({"ts": 2**63}, events.BAD_TS),
        ({"ts": False}, events.WRONG_TYPE),
        ({"user_id": "   "}, events.BAD_ID),
        ({"value": ...}, events.MISSING_FIELD),  # a rating needs its value
        ({"features": ["age"]}, events.WRONG_TYPE),
        ({"features": {"age": 23}}, events.WRONG_TYPE),
        ({"features": {"age": "2" * 10_000}}, events.BAD_FEATURE),
        ({"features": {"": "x"}}, events.BAD_FEATURE),
        ({"features": {"age": "a\x1eb"}}, events.BAD_FEATURE),
        ({"features": {f"f{n}": "x" for n in range(33)}}, events.BAD_FEATURE),
    ],
)
def test_invalid_fields_are_refused_with_a_reason(changes: dict, reason: str) -> None:
    assert reason_of(encoded(**changes)) == reason


def test_nan_and_infinite_values_are_refused() -> None:
    for literal in (b"NaN", b"Infinity", b"1e999"):
        record = encoded(value=0).replace(b'"value": 0', b'"value": ' + literal)
        assert reason_of(record) == events.BAD_VALUE


TEXT = st.text(st.characters(exclude_categories=()))  # unpaired surrogates included
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(events.FIELDS), JSON_VALUES, max_size=3))
def test_any_json_fields_make_an_event_or_are_refused_with_a_reason(changes: dict) -> None:
    """A record the consumer cannot survive would stop it on every restart (a poison pill)."""
    document = {**GOOD, **changes}
    try:
        event = parse_event(json.dumps(document).encode())
    except InvalidEvent as invalid:
        assert invalid.reason in events.REASONS
    else:
        for text in (event.event_id, event.user_id, event.item_id):
            text.encode()  # what Redis and Kafka are given


@given(st.binary(max_size=300))
def test_any_bytes_are_an_event_or_refused_with_a_reason(value: bytes) -> None:
    try:
        parse_event(value)
    except InvalidEvent as invalid:
        assert invalid.reason in events.REASONS


def test_ids_of_exactly_the_limit_are_fine() -> None:
    assert parse_event(encoded(user_id="u" * events.MAX_ID_CHARS)).user_id.startswith("u")


def test_a_view_may_carry_any_finite_value() -> None:
    assert parse_event(encoded(type="view", value=250.0)).value == 250.0


def test_the_mapping_entry_point_validates_the_same_way() -> None:
    assert event_from_mapping(GOOD).item_id == "i1"
    with pytest.raises(InvalidEvent, match="expected a JSON object, got array"):
        event_from_mapping([GOOD])


def test_check_known_refuses_an_item_or_a_feature_the_model_lacks() -> None:
    event = parse_event(encoded(features={"age": "23"}))
    check_known(event, {"i1": 3}.__contains__, ["age", "gender"])
    removal = parse_event(encoded(features={"zip": ""}))  # any name may be removed
    check_known(removal, {"i1": 3}.__contains__, ["age"])
    with pytest.raises(InvalidEvent, match="not in the catalogue") as caught:
        check_known(event, {"i2": 0}.__contains__, ["age"])
    assert caught.value.reason == events.UNKNOWN_ITEM
    with pytest.raises(
        InvalidEvent, match="unknown feature age; this model knows gender"
    ) as caught:
        check_known(event, {"i1": 3}.__contains__, ["gender"])
    assert caught.value.reason == events.UNKNOWN_FEATURE


def test_absent_ts_and_value_take_their_documented_defaults() -> None:
    """ts: the record's timestamp (absent, or 0 as protobuf's unset); value: 1.0 for any
    type but a rating."""
    assert parse_event(encoded(ts=...), record_ts=1_700_000_000_123).ts == 1_700_000_000_123
    assert parse_event(encoded(ts=0), record_ts=5).ts == 5
    assert parse_event(encoded(ts=...)).ts is None
    assert parse_event(encoded(type="click", value=...)).value == 1.0


def test_features_ride_along_and_round_trip_and_an_empty_value_is_kept() -> None:
    event = parse_event(encoded(features={"age": " 23 ", "gender": ""}))
    assert event.features == {"age": " 23 ", "gender": ""}
    assert parse_event(event.to_json()) == event
    assert b"features" not in parse_event(encoded()).to_json()


def test_check_key_accepts_the_user_id_and_refuses_any_other_key_or_none() -> None:
    event = parse_event(encoded(user_id="ü1"))
    check_key(event, "ü1".encode())
    long = "key " + repr(b"k" * 64) + r" \(first 64 of 100 bytes\)"
    for key, shown in (
        (b"u2", "key b'u2'"),
        (None, "no key"),
        (b"", "key b''"),
        (b"k" * 100, long),
    ):
        with pytest.raises(InvalidEvent, match=f"record has {shown}, not its user_id") as caught:
            check_key(event, key)
        assert caught.value.reason == events.KEY_MISMATCH


def test_reason_codes_are_a_small_fixed_set() -> None:
    assert len(set(events.REASONS)) == len(events.REASONS) == 16
    assert all(code.isidentifier() for code in events.REASONS)
