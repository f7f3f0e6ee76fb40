"""Unit: how a raw user feature value is read, the one reading training and serving share."""

from __future__ import annotations

import pytest

from trainer.features import AGE_BRACKETS, UNKNOWN, FeatureReader, describe_reading, read_value


@pytest.mark.parametrize(
    ("raw", "read"),
    [("23", "18"), ("18", "18"), ("17", "1"), ("0", "1"), ("56", "56"), ("73", "56")],
)
def test_an_age_is_read_as_the_lower_edge_of_its_bracket(raw: str, read: str) -> None:
    assert read_value(raw, AGE_BRACKETS) == read


@pytest.mark.parametrize("raw", ["", "  ", "twenty", "nan", "inf"])
def test_an_age_that_is_not_a_number_reads_as_nothing(raw: str) -> None:
    assert read_value(raw, AGE_BRACKETS) == ""


def test_a_categorical_value_is_trimmed_and_case_folded() -> None:
    assert read_value("  Writer ") == read_value("writer") == "writer"
    assert read_value("F") == "f"


def test_a_reader_gives_the_codes_training_gave_and_zero_for_what_it_does_not_know() -> None:
    reader = FeatureReader(
        {"gender": [UNKNOWN, "f", "m"], "age": [UNKNOWN, "1", "18", "25"]},
        {"age": list(AGE_BRACKETS)},
    )
    assert reader.names == ["age", "gender"]
    assert reader.codes({"age": "23", "gender": "F"}) == [2, 1]
    assert reader.codes({"gender": "x"}) == [0, 0]
    assert reader.known({"age": "23", "gender": "x"}) == ["age"]


def test_the_reading_is_described_for_a_client() -> None:
    assert describe_reading() == "trimmed and case-folded"
    described = describe_reading(AGE_BRACKETS)
    assert "1 (under 18), 18 (18-24), 25 (25-34)" in described
    assert described.endswith("56 (56 and over)")
