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
one split and a write one join, where decoding and re-encoding each entry was a
fifth of the consumer's time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, overload

from trainer.errors import ColdstartError

_RECORD_SEP, _UNIT_SEP = "\x1e", "\x1f"

# One applied event as re-adaptation needs it: (item index in a model's catalogue, the
# rating of a rating event or None). A plain tuple: the consumer builds fifty per touched
# user, and a NamedTuple's constructor costs nine times a tuple display.
Interaction = tuple[int, float | None]


class HistoryError(ColdstartError):
    """A stored history entry cannot be read."""


class HistoryEntry(NamedTuple):
    """One applied interaction: the raw item id survives model changes."""

    item_id: str
    rating: float | None  # the rating of a rating event, else None


class History(Sequence[HistoryEntry]):
    """A user's recent history, newest last, held as its stored parts."""

    __slots__ = ("parts",)

    def __init__(self, entries: Iterable[HistoryEntry] = ()) -> None:
        self.parts: tuple[str, ...] = tuple(map(encode_entry, entries))

    @classmethod
    def decode(cls, raw: bytes) -> History:
        """UnicodeDecodeError when `raw` is not UTF-8; entries are checked when read."""
        history = cls()
        history.parts = tuple(raw.decode().split(_RECORD_SEP)) if raw else ()
        return history

    def encode(self) -> bytes:
        return _RECORD_SEP.join(self.parts).encode()

    def extended(self, entries: Iterable[HistoryEntry], limit: int) -> History:
        """This history with `entries` appended, cut to the newest `limit`."""
        history = History(entries)
        history.parts = (self.parts + history.parts)[-limit:] if limit > 0 else ()
        return history

    @property
    def entries(self) -> tuple[HistoryEntry, ...]:
        return tuple(map(decode_entry, self.parts))

    def __len__(self) -> int:
        return len(self.parts)

    @overload
    def __getitem__(self, index: int) -> HistoryEntry: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[HistoryEntry, ...]: ...
    def __getitem__(self, index: int | slice) -> HistoryEntry | tuple[HistoryEntry, ...]:
        return self.entries[index]

    def __iter__(self) -> Iterator[HistoryEntry]:
        return map(decode_entry, self.parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self.parts == other.parts

    def __hash__(self) -> int:
        return hash(self.parts)

    def __repr__(self) -> str:
        return f"History({self.entries!r})"


def encode_entry(entry: HistoryEntry) -> str:
    if entry.rating is None:
        return entry.item_id
    return f"{entry.item_id}{_UNIT_SEP}{_number(entry.rating)}"


def decode_entry(part: str) -> HistoryEntry:
    item_id, _, rating = part.partition(_UNIT_SEP)
    try:
        return HistoryEntry(item_id, float(rating) if rating else None)
    except ValueError:
        raise HistoryError(f"history entry {part!r} has an unreadable rating") from None


def _number(value: float) -> str:
    """Shortest decimal that reads back as the same float; "4" rather than "4.0"."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
