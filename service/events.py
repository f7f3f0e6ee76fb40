"""Interaction events: parse and validate one record of the events topic.

Why a module of its own: the consumer, the gRPC ingestion (`RecordEvents`) and
the replay tool must agree on what a valid event is, byte for byte, and a bad
record must be explained, not crash anything. So validation is one pure
function from bytes to an `Event` or an `InvalidEvent` carrying a short,
bounded reason code (a metric label, a dead-letter header) and a message a
person can act on. Nothing here knows Kafka or Redis.

The JSON schema (DESIGN.md, Events and the stream):
    {"event_id": str, "user_id": str, "item_id": str,
     "type": "view|click|rating|purchase", "value": float, "ts": int (ms),
     "features": {str: str}}
`value` is required for a rating and defaults to 1.0 otherwise; `ts` defaults to
the Kafka record's timestamp (absent or 0); `features`, the user's profile, is
optional. Unknown extra keys are ignored, so producers may add fields. Whether
the item and the feature names exist depends on the model, so that check is a
separate step (`check_known`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field

from service.errors import InvalidEvent

FIELDS = ("event_id", "user_id", "item_id", "type")  # required; value, ts, features are not
EVENT_TYPES = ("view", "click", "rating", "purchase")
MAX_PAYLOAD_BYTES = 64 * 1024  # a record value larger than this is refused unread
MAX_ID_CHARS = 256  # event, user and item ids
RATING_RANGE = (0.0, 10.0)  # inclusive bounds of a rating event's value
MAX_TS_MS = 2**63 - 1  # int64, as in the protobuf Event
MAX_FEATURES = 32  # profile features on one event or request
MAX_FEATURE_NAME_CHARS = 64
MAX_FEATURE_VALUE_CHARS = 256
NAMED_FEATURES = 5  # unknown feature names a message lists

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
BAD_FEATURE = "bad_feature"  # a features map that is not names to bounded strings
UNKNOWN_FEATURE = "unknown_feature"  # a feature name the model does not know
REASONS = (EMPTY, TOO_LARGE, BAD_JSON, NOT_OBJECT, MISSING_FIELD, WRONG_TYPE, BAD_ID)
REASONS += (UNKNOWN_TYPE, BAD_VALUE, BAD_TS, UNKNOWN_ITEM, UNREADABLE_STATE, UNDECODABLE)
REASONS += (KEY_MISMATCH, BAD_FEATURE, UNKNOWN_FEATURE)


@dataclass(frozen=True)
class Event:
    """One validated interaction."""

    event_id: str  # producer-chosen, unique per event
    user_id: str  # also the record key
    item_id: str  # raw id, as in the model's catalogue
    type: str  # one of EVENT_TYPES
    value: float  # the rating for "rating", else the interaction's strength (usually 1.0)
    ts: int | None  # event time, ms since the Unix epoch; None: the record's timestamp
    features: Mapping[str, str] = field(default_factory=dict)  # profile features, raw

    @property
    def rating(self) -> float | None:
        """The rating this event carries: its value for a rating event, else None."""
        return self.value if self.type == "rating" else None

    def to_json(self) -> bytes:
        """The record value for the events topic; `parse_event` reads it back unchanged
        (a ts of None is left out, for the consumer to take the record's timestamp)."""
        document = asdict(self)
        if self.ts is None:
            del document["ts"]
        if not self.features:
            del document["features"]
        return json.dumps(document, separators=(",", ":")).encode()


def parse_event(value: bytes | None, record_ts: int | None = None) -> Event:
    """One record value -> an Event; raises InvalidEvent saying what is wrong. `record_ts`
    (the Kafka record's timestamp) stands in for an absent ts."""
    return event_from_mapping(read_json(value), record_ts)


def read_json(value: bytes | None) -> object:
    """A record value's JSON document; InvalidEvent when it is empty, too large or not
    JSON. The one reading of events and of the items topic's records."""
    if not value or not value.strip():
        raise InvalidEvent(EMPTY, "the record has no value")
    if len(value) > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(
            TOO_LARGE, f"payload of {len(value)} bytes is over the {MAX_PAYLOAD_BYTES} byte limit"
        )
    try:
        return json.loads(value)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidEvent(BAD_JSON, f"not valid UTF-8 JSON: {error}") from None
    except RecursionError:
        raise InvalidEvent(BAD_JSON, "JSON nested too deeply to parse") from None


def event_from_mapping(document: object, record_ts: int | None = None) -> Event:
    """A decoded JSON document (or any mapping of the same keys) -> an Event."""
    if not isinstance(document, Mapping):
        raise InvalidEvent(NOT_OBJECT, f"expected a JSON object, got {json_type(document)}")
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
        ts=_timestamp(document) or record_ts,
        features=check_feature_map(document.get("features", {})),
    )


def check_known(
    event: Event, item_known: Callable[[str], bool] | None, features: Collection[str]
) -> None:
    """InvalidEvent unless the model knows the event's feature names and, unless
    `item_known` is None (an unknown item is registered at its event), its item."""
    if item_known is not None and not item_known(event.item_id):
        raise InvalidEvent(UNKNOWN_ITEM, f"item {event.item_id[:64]!r} is not in the catalogue")
    problem = unknown_features(event.features, features)
    if problem:
        raise InvalidEvent(UNKNOWN_FEATURE, problem)


def unknown_features(given: Mapping[str, str], known: Collection[str]) -> str | None:
    """What is wrong with feature names the model does not know, None when all are known.
    An empty value is a removal and may name any feature: a profile must be able to drop
    one that an earlier model knew. The message may become a gRPC status detail, refused
    past 16 KiB: a few names, each cut short, and a count."""
    unknown = sorted(name for name, value in given.items() if value and name not in known)
    if not unknown:
        return None
    named = ", ".join(_shortened(name) for name in unknown[:NAMED_FEATURES])
    more = f" and {len(unknown) - NAMED_FEATURES} more" if len(unknown) > NAMED_FEATURES else ""
    return f"unknown feature {named}{more}; this model knows {', '.join(known) or 'none'}"


def _shortened(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else f"{name[:limit]}..."


def check_feature_map(features: object) -> dict[str, str]:
    """A profile's features: at most MAX_FEATURES names of bounded length to bounded strings
    without control characters (the stored profile uses them as separators). An empty
    value is allowed: it removes the feature from a stored profile."""
    features = feature_mapping(features)
    for name, value in features.items():
        if not isinstance(value, str):
            shown = name[:MAX_FEATURE_NAME_CHARS]
            raise InvalidEvent(
                WRONG_TYPE, f"feature {shown!r} must be a string, got {json_type(value)}"
            )
        check_text(BAD_FEATURE, "a feature name", name, MAX_FEATURE_NAME_CHARS)
        if value:
            check_text(BAD_FEATURE, f"feature {name!r}", value, MAX_FEATURE_VALUE_CHARS)
    return dict(features)


def feature_mapping(features: object) -> Mapping:
    """A features map of at most MAX_FEATURES entries, {} for JSON null (an absent map)."""
    if features is None:
        return {}
    if not isinstance(features, Mapping):
        raise InvalidEvent(WRONG_TYPE, f"features must be an object, got {json_type(features)}")
    if len(features) > MAX_FEATURES:
        raise InvalidEvent(
            BAD_FEATURE, f"features has {len(features)} entries, more than {MAX_FEATURES}"
        )
    return features


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


def json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return names.get(type(value), type(value).__name__)


def _string(document: Mapping, key: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise InvalidEvent(WRONG_TYPE, f"{key} must be a string, got {json_type(value)}")
    return value


# Control characters are refused so stored histories can use them as separators; an
# unpaired surrogate (JSON can escape one: "\udc80") is not text that Redis or Kafka can hold.
_REFUSED_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _identifier(document: Mapping, key: str) -> str:
    return check_id(key, _string(document, key))


def check_id(key: str, value: str) -> str:
    """A non-empty id of at most MAX_ID_CHARS characters, not all blanks, none of them
    refused: the rule for every id the service takes, from an event or a request."""
    return check_text(BAD_ID, key, value, MAX_ID_CHARS)


def check_text(reason: str, what: str, value: str, limit: int) -> str:
    if not value.strip():
        raise InvalidEvent(reason, f"{what} is {'blank' if value else 'empty'}")
    if len(value) > limit:
        raise InvalidEvent(
            reason, f"{what} has {len(value)} characters, more than the limit of {limit}"
        )
    refused = _REFUSED_CHAR.search(value)
    if refused is not None:
        kind = "an unpaired surrogate" if refused.group() >= "\ud800" else "a control character"
        raise InvalidEvent(reason, f"{what} contains {kind}")
    return value


def _value(document: Mapping, event_type: str) -> float:
    if "value" not in document:
        if event_type == "rating":
            raise InvalidEvent(MISSING_FIELD, "a rating event needs a value (the rating)")
        return 1.0
    value = document["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(WRONG_TYPE, f"value must be a number, got {json_type(value)}")
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


def _timestamp(document: Mapping) -> int | None:
    """The event's ts; None when absent or 0 (a protobuf Event's unset ts)."""
    value = document.get("ts")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(
            WRONG_TYPE, f"ts must be an integer (ms since the epoch), got {json_type(value)}"
        )
    if value == 0:
        return None
    if not 0 <= value <= MAX_TS_MS:
        raise InvalidEvent(BAD_TS, f"ts {value} is not a non-negative int64 of milliseconds")
    return value
