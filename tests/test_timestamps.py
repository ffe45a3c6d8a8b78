"""Convert Timestamps, checked against the true values (not the docs' Pacific-time ones)."""

from __future__ import annotations

import copy
import math
from datetime import date

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ctsync.timestamps import (
    DatesAs,
    FineDates,
    clevertap_date,
    convert_object,
    convert_value,
    date_epoch,
    event_time,
    fine_iso_to_epoch,
    iso_to_epoch,
)
from tests.helpers import examples


@pytest.mark.parametrize(
    ("value", "epoch"),
    [
        ("2006-01-02T18:04:07Z", 1136225047),
        ("2023-05-18T22:58:45+00:00", 1684450725),
        ("2025-08-13T15:45:17.451Z", 1755099917),
        ("2019-02-01", 1548979200),
        ("2006-01-02T15:04:05-0800", 1136243045),
        ("2006-01-02T19:04:07+01:00", 1136225047),
        ("2006-01-02T18:04:07", 1136225047),  # no offset: UTC
        ("2006-01-02T18:04:07.999Z", 1136225047),  # fractions floored
        ("1969-12-31T23:59:59.500Z", -1),  # floored toward the past, not toward zero
    ],
)
def test_iso_strings_with_at_most_milliseconds_convert(value: str, epoch: int) -> None:
    assert iso_to_epoch(value) == epoch
    assert convert_value(value) == epoch


@pytest.mark.parametrize(
    "value",
    [
        "2025-08-13T02:08:40.1418726Z",  # beyond milliseconds
        "25 Mar 2015",
        "01/01/2019",
        "2018-03-04T12:08:56 PDT",
        "1700000000",
        "+14155550123",
        "2019-02-30",  # shaped like a date, but not one
        "user-2019-02-01",
        "",
    ],
)
def test_everything_else_is_left_alone(value: str) -> None:
    assert iso_to_epoch(value) is None
    assert convert_value(value) == value


def test_the_published_wrong_examples_are_not_produced() -> None:
    assert iso_to_epoch("2006-01-02T18:04:07Z") != 1136253847
    assert iso_to_epoch("2023-05-18T22:58:45+00:00") != 1684475925


def test_nested_objects_are_walked_but_arrays_are_not() -> None:
    left_alone = {
        "dates": ["2019-02-01"],
        "phone": "+14155550123",
        "age": 30,
        "ok": True,
        "none": None,
    }
    traits = {
        "createdAt": "2019-02-01",
        "address": {"since": "2006-01-02T18:04:07Z", "deep": {"at": "2019-02-01"}},
        **left_alone,
    }
    assert convert_object(traits) == {
        "createdAt": 1548979200,
        "address": {"since": 1136225047, "deep": {"at": 1548979200}},
        **copy.deepcopy(left_alone),  # a copy: a conversion in place must not pass unseen
    }
    assert traits["createdAt"] == "2019-02-01", "the input is not modified"


def test_dates_as_clevertap_writes_date_values() -> None:
    assert convert_object({"d": "2019-02-01", "n": "x"}, DatesAs.CLEVERTAP) == {
        "d": "$D_1548979200",
        "n": "x",
    }


@pytest.mark.parametrize(
    ("value", "ts"),
    [
        ("2024-03-05T10:00:00.123Z", 1709632800),
        ("2025-08-13T02:08:40.1418726Z", 1755050920),  # any precision is still a time
        (1709632800, 1709632800),
        (1709632800123, 1709632800),  # milliseconds
        (1709632800.9, 1709632800),
    ],
)
def test_event_time_reads_any_iso_precision_and_epochs(value: object, ts: int) -> None:
    assert event_time(value) == ts


@pytest.mark.parametrize("value", ["yesterday", "25 Mar 2015", None, True, {"a": 1}])
def test_event_time_refuses_what_is_not_a_time(value: object) -> None:
    assert event_time(value) is None


@pytest.mark.parametrize(
    ("value", "ts"),
    [
        (-1e22, None),  # as milliseconds, below the smallest 64-bit integer
        (1e30, None),
        (1e300, None),
        (-(2**80), None),
        (10**20, None),  # 10^17 seconds as milliseconds: no year of a calendar
        (253402300799999, 253402300799),  # its milliseconds
        (253402300800000, None),  # the year 10000
        (-62135596800000, -62135596800),  # 0001-01-01T00:00:00Z in milliseconds
        (-62135596800001, None),  # a millisecond before
    ],
)
def test_event_time_refuses_numbers_outside_the_calendar(value: object, ts: int | None) -> None:
    """A number past the years 1 to 9999 is no time: the record is refused with 525 (a
    user's data), never a crash of the whole run on an integer CleverTap's `ts` cannot
    hold (found by an adversarial test: `"timestamp": -1e22` ended the run, exit 70)."""
    assert event_time(value) == ts


@pytest.mark.parametrize(
    ("value", "ts"),
    [
        ("0001-01-01T00:00:00Z", -62135596800),
        ("0001-01-01T00:00:00+01:00", None),  # the year 0 in UTC
        ("0001-01-01T00:00:00.000001+01:00", None),  # (the other reader: dateutil's)
        ("9999-12-31T23:59:59Z", 253402300799),
        ("9999-12-31T23:59:59-01:00", None),  # the year 10000 in UTC
    ],
)
def test_event_time_refuses_date_times_an_offset_takes_outside_the_calendar(
    value: str, ts: int | None
) -> None:
    """As for numbers: a `ts` CleverTap's years do not hold is refused (525), not sent."""
    assert event_time(value) == ts


# --- date-times finer than milliseconds -----------------------------------------------
# Segment's rule converts only up to milliseconds; Segment's Python library writes
# datetime traits with microseconds (`2023-01-02T00:00:00.123456+00:00`).

FINE = [
    ("2023-01-02T00:00:00.123456+00:00", 1672617600),  # Python's datetime.isoformat()
    ("2025-08-13T02:08:40.1418726Z", 1755050920),  # .NET, seven digits
    ("2025-08-13T02:08:40.141872600Z", 1755050920),  # nanoseconds
    ("2006-01-02T15:04:05.9999-0800", 1136243045),  # floored, offset applied
    ("2006-01-02T18:04:07.123456", 1136225047),  # no offset: UTC
    ("1969-12-31T23:59:59.999999Z", -1),  # floored toward the past
]


@pytest.mark.parametrize(("value", "epoch"), FINE)
def test_fine_date_times_are_left_as_text_and_counted_by_property(value: str, epoch: int) -> None:
    fine = FineDates()
    assert convert_object({"createdAt": value, "n": "x"}, fine=fine) == {
        "createdAt": value,
        "n": "x",
    }
    assert fine.left_as_text == {"createdAt": 1}


@pytest.mark.parametrize(("value", "epoch"), FINE)
def test_fine_date_times_convert_floored_when_asked(value: str, epoch: int) -> None:
    fine = FineDates(convert=True)
    assert convert_object({"d": value}, fine=fine) == {"d": epoch}
    assert convert_object({"d": value}, DatesAs.CLEVERTAP, fine=fine) == {"d": f"$D_{epoch}"}
    assert convert_value(value, fine=fine) == epoch
    assert fine.left_as_text == {}


def test_nested_fine_dates_are_counted_under_their_path() -> None:
    fine = FineDates()
    traits = {"address": {"movedAt": "2023-01-02T00:00:00.123456Z"}, "at": FINE[0][0]}
    convert_object(traits, fine=fine)
    convert_value(FINE[1][0], fine=fine, name="seen")
    assert fine.left_as_text == {"address.movedAt": 1, "at": 1, "seen": 1}


@pytest.mark.parametrize(
    "value",
    [
        "2019-02-30T00:00:00.123456Z",  # not a date
        "2023-01-02T00:00:00.12Z",  # milliseconds: the rule converts it
        "2023-01-02 00:00:00.123456",  # not ISO-8601's T
        "2023-01-02T00:00.123456Z",  # no seconds
        "2023-01-02T00:00:00.123456 PDT",
        "order-2023-01-02",
    ],
)
def test_only_fine_iso_date_times_are_counted(value: str) -> None:
    fine = FineDates()
    convert_object({"v": value}, fine=fine)
    assert fine.left_as_text == {}
    assert fine_iso_to_epoch(value) is None


def test_without_fine_nothing_changes() -> None:
    assert convert_object({"d": FINE[0][0]}) == {"d": FINE[0][0]}


_SHAPES = [
    "2024-05-01T12:00:00Z",
    "2024-05-01T12:00:00.123Z",
    "2023-05-18T22:58:45+00:00",
    "2023-05-18T22:58:45.999-08:00",
]


def _reference(value: str) -> int | None:
    """The rule as the regex and `fromisoformat` alone decide it (no fast path)."""
    import re
    from datetime import UTC, datetime

    pattern = (
        r"\d{4}-\d{2}-\d{2}"
        r"(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
    )
    if re.fullmatch(pattern, value) is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return math.floor(parsed.timestamp())


@settings(max_examples=examples(1000))
@example(shape=_SHAPES[1], changes=[(19, ",")], cut=0)  # fromisoformat takes a comma
@example(shape=_SHAPES[0], changes=[(0, "\u0662")], cut=0)  # an Arabic-Indic digit
# Separators fromisoformat takes where the layout has another: 22:58:45:999, +00.00
@example(shape=_SHAPES[3], changes=[(19, ":")], cut=0)
@example(shape=_SHAPES[2], changes=[(22, ".")], cut=0)
@example(shape=_SHAPES[3], changes=[(26, ".")], cut=0)
@example(shape=_SHAPES[0], changes=[(17, "+"), (19, "0")], cut=0)  # 12:00:+00, no seconds
@example(shape=_SHAPES[3], changes=[(23, "0"), (28, "Z")], cut=0)  # .999008:0Z
@example(shape=_SHAPES[2], changes=[(16, ",")], cut=0)  # 22:58,45: read as 22:58.45
@given(
    shape=st.sampled_from(_SHAPES),
    changes=st.lists(
        st.tuples(st.integers(0, 28), st.sampled_from(list("0123456789-T:.Z+ ,x٣\u0660"))),
        max_size=3,
    ),
    cut=st.integers(0, 3),
)
def test_the_fast_path_for_segment_dates_decides_as_the_regex_does(
    shape: str, changes: list[tuple[int, str]], cut: int
) -> None:
    """Strings in and around the layouts Segment writes, one to three characters changed
    (Unicode digits, commas, bad separators, impossible dates): the fast path converts
    exactly what the regex and fromisoformat convert, to the same second."""
    value = list(shape)
    for at, char in changes:
        if at < len(value):
            value[at] = char
    text = "".join(value)[: len(value) - cut] if cut else "".join(value)
    assert iso_to_epoch(text) == _reference(text)
    # convert_object filters strings before calling iso_to_epoch: it converts the same.
    expected = text if _reference(text) is None else _reference(text)
    assert convert_object({"d": text}) == {"d": expected} == {"d": convert_value(text)}


# -- dates as CleverTap date values: "$D_<epoch seconds>" (clevertap-api.md) ----------


@pytest.mark.parametrize(
    ("value", "date"),
    [
        (633830400, "$D_633830400"),  # 1990-02-01 in epoch seconds
        (633830400000, "$D_633830400"),  # the same in milliseconds
        (633830400.75, "$D_633830400"),  # fractions truncated toward the past
        ("1990-02-01", "$D_633830400"),
        ("1990-02-01T00:00:00Z", "$D_633830400"),
    ],
)
def test_dates_become_clevertap_date_values(value: object, date: str) -> None:
    assert clevertap_date(value) == date


@pytest.mark.parametrize("value", [True, False, None, "01/02/1990", "tomorrow", [633830400]])
def test_what_is_not_a_date_is_left_alone(value: object) -> None:
    assert clevertap_date(value) == value


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_number_is_left_alone(value: float) -> None:
    assert clevertap_date(value) == value


def test_a_nan_is_left_alone() -> None:
    result = clevertap_date(math.nan)
    assert isinstance(result, float) and math.isnan(result)


# -- dates as people write them (a date of birth: `date_epoch`) --------------------------


def day(year: int, month: int, on: int) -> int:
    """By hand: midnight UTC of that day, counted in whole days from 1970-01-01."""
    return (date(year, month, on) - date(1970, 1, 1)).days * 86400


MONTHS = "January February March April May June July August September October November December"


@pytest.mark.parametrize(("number", "name"), list(enumerate(MONTHS.split(), start=1)))
def test_a_month_is_read_by_its_name_or_first_three_letters_in_any_case(
    number: int, name: str
) -> None:
    assert date_epoch(f"01-{name}-1990") == day(1990, number, 1)
    assert date_epoch(f"1 {name[:3].upper()} 1990") == day(1990, number, 1)
    assert date_epoch(f"01/{name.lower()}./1990") == day(1990, number, 1)


@pytest.mark.parametrize(
    ("written", "epoch"),
    [
        ("10 Sept 2024", day(2024, 9, 10)),
        ("1990/3/1", day(1990, 3, 1)),
        ("13/12/1990", day(1990, 12, 13)),  # day first: 13 cannot be a month
        ("12/13/1990", day(1990, 12, 13)),  # month first
        ("12.12.1990", day(1990, 12, 12)),  # both readings are the same day
        ("12/05/1990", None),  # the 12th of May or the 5th of December: not guessed
        ("05-12-1990", None),
        ("30-Feb-1990", None),  # not in the calendar
        ("01-Foo-1990", None),
        ("2024-05-02", day(2024, 5, 2)),
        (" 1990-03-01 ", day(1990, 3, 1)),
        ("1990-03-01T00:00:00.123456Z", day(1990, 3, 1)),  # any precision, floored
        ("1990-03-01T05:30:00+05:30", day(1990, 3, 1)),
    ],
)
def test_dates_are_read_from_the_forms_people_write(written: str, epoch: int | None) -> None:
    assert date_epoch(written) == epoch


@pytest.mark.parametrize(
    ("number", "epoch"),
    [
        (9_999_999_999, 9_999_999_999),  # seconds: the year 2286
        (10**10, 10**7),  # from 10^10 on, milliseconds
        (-(10**10), -(10**7)),
        (253402300799000, 253402300799),  # 9999-12-31T23:59:59Z in milliseconds
        (253402300800000, None),  # a second later: the year 10000
        (-0.5, -1),  # floored toward the past
    ],
)
def test_a_number_is_seconds_or_milliseconds_up_to_the_year_9999(
    number: float, epoch: int | None
) -> None:
    assert date_epoch(number) == epoch
