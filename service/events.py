"""Interaction events: parse and validate one record of the events topic.

Why a module of its own: the consumer, the gRPC ingestion (`RecordEvents`) and
the replay tool must agree on what a valid event is, byte for byte, and a bad
record must be explained, not crash anything. So validation is one pure
function from bytes to an `Event` or an `InvalidEvent` carrying a short,
bounded reason code (a metric label, a dead-letter header) and a message a
person can act on. Nothing here knows Kafka or Redis.

The JSON schema (DESIGN.md, Events and the stream):
    {"event_id": str, "user_id": str, "item_id": str,
     "type": "view|click|rating|purchase", "value": float, "ts": int (ms)}
Unknown extra keys are ignored, so producers may add fields. Whether the item
exists depends on the model, so that check is a separate step (`check_item`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from service.errors import InvalidEvent

FIELDS = ("event_id", "user_id", "item_id", "type", "value", "ts")
EVENT_TYPES = ("view", "click", "rating", "purchase")
MAX_PAYLOAD_BYTES = 64 * 1024  # a record value larger than this is refused unread
MAX_ID_CHARS = 256  # event, user and item ids
RATING_RANGE = (0.0, 10.0)  # inclusive bounds of a rating event's value
MAX_TS_MS = 2**63 - 1  # int64, as in the protobuf Event

# Reason codes: a small fixed set, safe as a metric label and a DLQ header.
EMPTY = "empty_record"
TOO_LARGE = "payload_too_large"
BAD_JSON = "bad_json"
NOT_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_ID = "bad_id"
UNKNOWN_TYPE = "unknown_type"
BAD_VALUE = "bad_value"
BAD_TS = "bad_ts"
UNKNOWN_ITEM = "unknown_item"
UNREADABLE_STATE = "unreadable_state"  # a valid event whose user's stored state cannot be read
UNDECODABLE = "undecodable"  # a gRPC Event that is not valid protobuf (a string not UTF-8)
KEY_MISMATCH = "key_mismatch"  # a Kafka record whose key is not its event's user_id
REASONS = (EMPTY, TOO_LARGE, BAD_JSON, NOT_OBJECT, MISSING_FIELD, WRONG_TYPE, BAD_ID)
REASONS += (UNKNOWN_TYPE, BAD_VALUE, BAD_TS, UNKNOWN_ITEM, UNREADABLE_STATE, UNDECODABLE)
REASONS += (KEY_MISMATCH,)


@dataclass(frozen=True)
class Event:
    """One validated interaction."""

    event_id: str  # producer-chosen, unique per event
    user_id: str  # also the record key
    item_id: str  # raw id, as in the model's catalogue
    type: str  # one of EVENT_TYPES
    value: float  # the rating for "rating", else the interaction's strength (usually 1.0)
    ts: int  # event time, ms since the Unix epoch

    @property
    def rating(self) -> float | None:
        """The rating this event carries: its value for a rating event, else None."""
        return self.value if self.type == "rating" else None

    def to_json(self) -> bytes:
        """The record value for the events topic; `parse_event` reads it back unchanged."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def parse_event(value: bytes | None) -> Event:
    """One record value -> an Event; raises InvalidEvent saying what is wrong."""
    if not value:
        raise InvalidEvent(EMPTY, "the record has no value")
    if len(value) > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(
            TOO_LARGE, f"payload of {len(value)} bytes is over the {MAX_PAYLOAD_BYTES} byte limit"
        )
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidEvent(BAD_JSON, f"not valid UTF-8 JSON: {error}") from None
    except RecursionError:
        raise InvalidEvent(BAD_JSON, "JSON nested too deeply to parse") from None
    return event_from_mapping(document)


def event_from_mapping(document: object) -> Event:
    """A decoded JSON document (or any mapping of the same keys) -> an Event."""
    if not isinstance(document, Mapping):
        raise InvalidEvent(NOT_OBJECT, f"expected a JSON object, got {_json_type(document)}")
    missing = [key for key in FIELDS if key not in document]
    if missing:
        raise InvalidEvent(MISSING_FIELD, f"missing field {', '.join(missing)}")
    event_type = _string(document, "type")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent(
            UNKNOWN_TYPE, f"type {event_type[:40]!r} is not one of {', '.join(EVENT_TYPES)}"
        )
    return Event(
        event_id=_identifier(document, "event_id"),
        user_id=_identifier(document, "user_id"),
        item_id=_identifier(document, "item_id"),
        type=event_type,
        value=_value(document, event_type),
        ts=_timestamp(document),
    )


def check_item(event: Event, item_index: Mapping[str, int]) -> int:
    """The event's item index in the model's catalogue; InvalidEvent when the model lacks it."""
    index = item_index.get(event.item_id)
    if index is None:
        raise InvalidEvent(UNKNOWN_ITEM, f"item {event.item_id[:64]!r} is not in the catalogue")
    return index


def check_key(event: Event, key: bytes | None) -> None:
    """InvalidEvent unless the record is keyed by its user_id. The key picks the partition
    (with the same partitioner in every producer: README), and one user's events are in
    order only on one partition: a record keyed otherwise (or not at all) may be applied
    before the user's earlier events, so it is refused, with the producer's mistake named,
    rather than applied out of order without a trace."""
    if key != event.user_id.encode():
        if key is None:
            shown = "no key"
        else:
            cut = f" (first 64 of {len(key)} bytes)" if len(key) > 64 else ""
            shown = f"key {key[:64]!r}{cut}"
        raise InvalidEvent(
            KEY_MISMATCH,
            f"record has {shown}, not its user_id {event.user_id[:64]!r}: events must be "
            "keyed by user_id so that one user's events stay in order on one partition",
        )


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return names.get(type(value), type(value).__name__)


def _string(document: Mapping, key: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise InvalidEvent(WRONG_TYPE, f"{key} must be a string, got {_json_type(value)}")
    return value


# Control characters are refused so stored histories can use them as separators; an
# unpaired surrogate (JSON can escape one: "\udc80") is not text that Redis or Kafka can hold.
_REFUSED_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _identifier(document: Mapping, key: str) -> str:
    return check_id(key, _string(document, key))


def check_id(key: str, value: str) -> str:
    """A non-empty id of at most MAX_ID_CHARS characters, none of them refused: the rule
    for every id the service takes, from an event or a request."""
    if not value:
        raise InvalidEvent(BAD_ID, f"{key} is empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidEvent(
            BAD_ID, f"{key} has {len(value)} characters, more than the limit of {MAX_ID_CHARS}"
        )
    refused = _REFUSED_CHAR.search(value)
    if refused is not None:
        what = "an unpaired surrogate" if refused.group() >= "\ud800" else "a control character"
        raise InvalidEvent(BAD_ID, f"{key} contains {what}")
    return value


def _value(document: Mapping, event_type: str) -> float:
    value = document["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(WRONG_TYPE, f"value must be a number, got {_json_type(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        raise InvalidEvent(BAD_VALUE, f"value {str(value)[:20]}... is too large") from None
    if not math.isfinite(value):
        raise InvalidEvent(BAD_VALUE, f"value must be finite, got {value}")
    low, high = RATING_RANGE
    if event_type == "rating" and not low <= value <= high:
        raise InvalidEvent(BAD_VALUE, f"rating {value} is outside [{low:g}, {high:g}]")
    return value


def _timestamp(document: Mapping) -> int:
    value = document["ts"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(
            WRONG_TYPE, f"ts must be an integer (ms since the epoch), got {_json_type(value)}"
        )
    if not 0 <= value <= MAX_TS_MS:
        raise InvalidEvent(BAD_TS, f"ts {value} is not a non-negative int64 of milliseconds")
    return value
