"""A user's bounded recent history as Redis stores it, and as a model reads it.

The stored form is text: one part per event, the raw item id, then for a rating
event the unit separator and the rating's shortest exact decimal; parts are
joined by the record separator (event ids cannot contain control characters,
see `service.events`). Raw ids, not item indices, so that a new model, whose
indices differ, can re-adapt the user from the same history.

A `History` keeps the parts as they were read and decodes an entry only where
one is looked at. The consumer reads, extends and writes back fifty parts per
touched user and needs them only as a model's interactions
(`service.model.ServingModel.interactions`, cached per part): a read is then
one split and a write one join, instead of decoding and re-encoding every entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, overload

from service.errors import HistoryError

_RECORD_SEP, _UNIT_SEP = "\x1e", "\x1f"

# One applied event as re-adaptation needs it: (item index in a model's catalogue, the
# rating of a rating event or None). A plain tuple: the consumer builds fifty per touched
# user, and a NamedTuple's constructor costs nine times a tuple display.
Interaction = tuple[int, float | None]


class HistoryEntry(NamedTuple):
    """One applied interaction: the raw item id survives model changes."""

    item_id: str
    rating: float | None  # the rating of a rating event, else None


class History(Sequence[HistoryEntry]):
    """A user's recent history, newest last, held as its stored parts.

    Two histories are equal when their stored text is: "4.50" and "4.5" are different
    parts for the same rating, and a History never equals a tuple of entries."""

    __slots__ = ("_parts",)

    def __init__(self, entries: Iterable[HistoryEntry] = ()) -> None:
        self._parts = tuple(map(encode_entry, entries))

    @classmethod
    def decode(cls, raw: bytes) -> History:
        """UnicodeDecodeError when `raw` is not UTF-8; entries are checked when read."""
        return cls._of(tuple(raw.decode().split(_RECORD_SEP)) if raw else ())

    @classmethod
    def _of(cls, parts: tuple[str, ...]) -> History:
        history = cls()
        history._parts = parts
        return history

    @property
    def parts(self) -> tuple[str, ...]:
        """Each entry's stored text, oldest first."""
        return self._parts

    def encode(self) -> bytes:
        return _RECORD_SEP.join(self._parts).encode()

    def extended(self, entries: Iterable[HistoryEntry], limit: int) -> History:
        """This history with `entries` appended, cut to the newest `limit`."""
        parts = self._parts + tuple(map(encode_entry, entries))
        return self._of(parts[-limit:] if limit > 0 else ())

    def __len__(self) -> int:
        return len(self._parts)

    @overload
    def __getitem__(self, index: int) -> HistoryEntry: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[HistoryEntry, ...]: ...
    def __getitem__(self, index: int | slice) -> HistoryEntry | tuple[HistoryEntry, ...]:
        if isinstance(index, slice):
            return tuple(map(decode_entry, self._parts[index]))
        return decode_entry(self._parts[index])

    def __iter__(self) -> Iterator[HistoryEntry]:
        return map(decode_entry, self._parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        return self._parts == other._parts

    def __hash__(self) -> int:
        return hash(self._parts)

    def __repr__(self) -> str:  # the parts, not the entries: a corrupt one must still print
        return f"History.decode({self.encode()!r})"


def encode_entry(entry: HistoryEntry) -> str:
    if entry.rating is None:
        return entry.item_id
    return f"{entry.item_id}{_UNIT_SEP}{_number(entry.rating)}"


def decode_entry(part: str) -> HistoryEntry:
    """HistoryError for a rating that is not a finite number (this code writes none)."""
    item_id, _, text = part.partition(_UNIT_SEP)
    if not text:
        return HistoryEntry(item_id, None)
    try:
        rating = float(text)
    except ValueError:
        rating = math.nan
    if not math.isfinite(rating):
        raise HistoryError(f"history entry {part!r} has an unreadable rating")
    return HistoryEntry(item_id, rating)


def _number(value: float) -> str:
    """Shortest decimal that reads back as the same float; "4" rather than "4.0"."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
