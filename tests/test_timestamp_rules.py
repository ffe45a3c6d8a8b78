"""Edges of `timestamps.py` that mutation testing found untested: the option values the
command line spells, counting every fine date left as text, the names nested values are
counted under, and where an integer `timestamp` turns from seconds into milliseconds."""

from __future__ import annotations

import pytest

from ctsync.timestamps import DatesAs, FineDates, convert_value, event_time

FINE = "2023-01-02T00:00:00.123456Z"


def test_dates_as_values_are_the_command_line_spellings() -> None:
    # `--dates-as unix|clevertap` (README) parses into these values.
    assert [DatesAs("unix"), DatesAs("clevertap")] == [DatesAs.UNIX, DatesAs.CLEVERTAP]


def test_every_fine_date_left_as_text_is_counted() -> None:
    fine = FineDates()
    for _ in range(3):
        assert convert_value(FINE, fine=fine, name="seen") == FINE
    assert fine.left_as_text == {"seen": 3}


@pytest.mark.parametrize(
    ("name", "counted"), [("", "at"), ("traits", "traits.at")], ids=["unnamed", "named"]
)
def test_an_object_value_counts_its_fine_dates_under_its_path(name: str, counted: str) -> None:
    fine = FineDates()
    value = {"at": FINE}
    # Unnamed: the default name, as a caller converting a whole object gives none.
    converted = (
        convert_value(value, fine=fine, name=name) if name else convert_value(value, fine=fine)
    )
    assert converted == value
    assert fine.left_as_text == {counted: 1}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (99_999_999_999, 99_999_999_999),  # the largest taken as seconds (year 5138)
        (100_000_000_000, 100_000_000),  # the smallest taken as milliseconds
        (-100_000_000_000, -100_000_000),
        (1_704_067_200_000, 1_704_067_200),
        (1_704_067_200_999, 1_704_067_200),  # milliseconds are floored
    ],
)
def test_an_integer_timestamp_is_milliseconds_from_1e11(value: int, seconds: int) -> None:
    assert event_time(value) == seconds
