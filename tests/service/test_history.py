"""The stored history: its text form, and reading it as a model's interactions."""

from __future__ import annotations

import pytest

from service.history import History, HistoryEntry, HistoryError
from service.model import ServingModel
from tests.helpers.tiny_model import write_tiny_model
from trainer import artifact


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    return ServingModel(artifact.load(write_tiny_model(tmp_path_factory.mktemp("model"))))


def entries(n: int) -> tuple[HistoryEntry, ...]:
    return tuple(HistoryEntry(str(1000 + 37 * k % 2952), float(1 + k % 5)) for k in range(n))


def test_history_round_trips_exact_ratings_and_odd_ids() -> None:
    odd = (
        HistoryEntry("1193", 5.0),
        HistoryEntry("i:9,x", None),
        HistoryEntry("é 😀", 3.7),
        HistoryEntry("42", 0.1 + 0.2),
    )
    assert tuple(History.decode(History(odd).encode())) == odd
    assert History.decode(History().encode()) == History()
    assert History(odd[:1]).encode() == b"1193\x1f5"


def test_a_decoded_history_writes_back_the_text_it_read() -> None:
    raw = b"7\x1f4.50\x1e8"  # "4.50" is not how this code writes 4.5
    decoded = History.decode(raw)
    assert tuple(decoded) == (HistoryEntry("7", 4.5), HistoryEntry("8", None))
    assert decoded.encode() == raw
    assert decoded.extended([HistoryEntry("9", 4.5)], 2).encode() == b"8\x1e9\x1f4.5"


def test_extended_keeps_the_newest() -> None:
    sixty = entries(60)
    assert History(sixty[:40]).extended(sixty[40:], 50) == History(sixty[10:])
    assert History(sixty[:3]).extended((), 50) == History(sixty[:3])
    assert History(sixty[:3]).extended(sixty[3:5], 0) == History()
    assert len(History(sixty).extended(sixty, 50)) == 50


def test_entries_are_read_one_at_a_time_or_by_slice() -> None:
    history = History(entries(5))
    assert history[3] == entries(5)[3] and history[-1] == entries(5)[-1]
    assert history[1:3] == entries(5)[1:3] and list(history) == list(entries(5))
    assert history != entries(5) and history == History(entries(5))


def test_interactions_skip_items_the_model_lacks(model: ServingModel) -> None:
    a, b = model.item_ids[0], model.item_ids[5]
    stored = History([HistoryEntry(a, None), HistoryEntry("gone", 2.0), HistoryEntry(b, 4.0)])
    assert model.interactions(stored) == [(0, None), (5, 4.0)]


def test_interactions_keep_each_items_first_event(model: ServingModel) -> None:
    a, b = model.item_ids[0], model.item_ids[5]
    stored = History([HistoryEntry(a, None), HistoryEntry(b, 4.0), HistoryEntry(a, 5.0)])
    assert model.interactions(stored) == [(0, None), (5, 4.0)]


@pytest.mark.parametrize("rating", ["four", "nan", "inf", "-inf", "1e999"])
def test_an_unreadable_rating_is_a_clear_error(model: ServingModel, rating: str) -> None:
    broken = History.decode(f"{model.item_ids[0]}\x1f{rating}".encode())
    with pytest.raises(HistoryError, match=f"x1f{rating}' has an unreadable rating"):
        model.interactions(broken)
    assert rating in repr(broken)  # a corrupt history still prints
    with pytest.raises(UnicodeDecodeError):
        History.decode(b"\xff")
