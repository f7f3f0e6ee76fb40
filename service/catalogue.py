"""The live catalogue's records: parse and validate one record of the items topic.

Why a module of its own: `UpsertItems`, the consumer's registration of an item at its
first event, and every replica reading the items topic must agree on what a valid item
record is, and a bad one must be explained, never crash a replica. As with events, a
record is JSON (README, Items), one per item, keyed by item id on the compacted topic
`coldstart.items`, so the topic's last record of an item is the item:
    {"item_id": str, "features": {"genre": [str, ...], "year": "1995"},
     "text": str, "available": bool, "ts": int (ms), "implicit": bool}
A record states the item whole: its features and text replace the earlier ones.
`implicit` marks a registration the service made at an item's first event; it never
replaces a record that was given. It is keyed by the item id after a NUL byte
(`implicit_key`; ids hold no control characters), so compaction keeps the item's last
given record beside it whichever came last. Which feature names a model reads is the model's
business (`ServingModel.item_columns`), so that check is a separate step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from service.errors import InvalidEvent
from service.events import (
    BAD_FEATURE,
    BAD_TS,
    BAD_VALUE,
    MAX_FEATURE_NAME_CHARS,
    MAX_FEATURE_VALUE_CHARS,
    MAX_TS_MS,
    NOT_OBJECT,
    WRONG_TYPE,
    check_id,
    check_text,
    feature_mapping,
    json_type,
    read_json,
)

MAX_TEXT_CHARS = 10_000  # an item's title and description; the encoder reads the first 2,000
MAX_VALUES = 64  # values of one multi-valued feature
YEAR = "year"  # the one numeric item feature: a release year, read as its decade
TEXT_TOO_LONG = "text_too_long"


@dataclass(frozen=True)
class ItemEntry:
    """One item as the catalogue holds it."""

    item_id: str
    features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # raw values
    text: str = ""  # title and description; "" for none
    available: bool = True  # False: retired, never recommended, history kept
    ts: int = 0  # when it was registered or changed, ms since the Unix epoch
    implicit: bool = False  # registered by the service at the item's first event

    @property
    def year(self) -> int | None:
        values = self.features.get(YEAR, ())
        return int(values[0]) if values else None

    def to_json(self) -> bytes:
        document = {
            "item_id": self.item_id,
            "features": {name: list(values) for name, values in self.features.items()},
            "text": self.text,
            "available": self.available,
            "ts": self.ts,
        }
        if self.implicit:
            document["implicit"] = True
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def implicit_key(item_id: str) -> bytes:
    """The items-topic key of an implicit registration: never an item's own key."""
    return b"\x00" + item_id.encode()


def parse_item(value: bytes | None) -> ItemEntry:
    """The entry of an items-topic record, or InvalidEvent saying what is wrong."""
    return item_from_mapping(read_json(value))


def item_from_mapping(document: object) -> ItemEntry:
    """An entry from a decoded JSON object (or a request's fields), checked."""
    if not isinstance(document, Mapping):
        raise InvalidEvent(NOT_OBJECT, f"an item must be an object, got {json_type(document)}")
    item_id = document.get("item_id")
    if not isinstance(item_id, str):
        raise InvalidEvent(WRONG_TYPE, f"item_id must be a string, got {json_type(item_id)}")
    return ItemEntry(
        item_id=check_id("item_id", item_id),
        features=check_item_features(document.get("features")),
        text=_text(document.get("text")),
        available=_flag(document, "available", default=True),
        ts=_ts(document.get("ts")),
        implicit=_flag(document, "implicit", default=False),
    )


def check_item_features(features: object) -> dict[str, tuple[str, ...]]:
    """Feature names to their values: a string, or a list of strings for a multi-valued
    feature such as genre. The year must be one whole number."""
    checked = {}
    for name, given in feature_mapping(features).items():
        check_text(BAD_FEATURE, "a feature name", name, MAX_FEATURE_NAME_CHARS)
        values = _values(name, given)
        if values:
            checked[name] = values
    if YEAR in checked:
        _check_year(checked[YEAR])
    return checked


def _values(name: str, given: object) -> tuple[str, ...]:
    values = [given] if isinstance(given, str) else given
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidEvent(WRONG_TYPE, f"feature {name!r} must be a string or a list of strings")
    if len(values) > MAX_VALUES:
        raise InvalidEvent(
            BAD_FEATURE, f"feature {name!r} has {len(values)} values, more than {MAX_VALUES}"
        )
    for value in values:
        check_text(BAD_FEATURE, f"a value of feature {name!r}", value, MAX_FEATURE_VALUE_CHARS)
    return tuple(dict.fromkeys(values))  # each value once, in the order given


def _check_year(values: tuple[str, ...]) -> None:
    if len(values) != 1 or not values[0].isascii() or not values[0].isdigit():
        raise InvalidEvent(BAD_VALUE, f"year must be one whole number such as 1995, got {values}")
    if len(values[0]) > 4:
        raise InvalidEvent(BAD_VALUE, f"year {values[0]} has more than four digits")


def _text(text: object) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise InvalidEvent(WRONG_TYPE, f"text must be a string, got {json_type(text)}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidEvent(
            TEXT_TOO_LONG,
            f"text has {len(text)} characters, more than the limit of {MAX_TEXT_CHARS}",
        )
    return text


def _flag(document: Mapping, key: str, *, default: bool) -> bool:
    value = document.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidEvent(WRONG_TYPE, f"{key} must be true or false, got {json_type(value)}")
    return value


def _ts(ts: object) -> int:
    if ts is None:
        return 0
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= MAX_TS_MS:
        raise InvalidEvent(BAD_TS, f"ts must be milliseconds since the epoch, got {ts!r}")
    return ts
