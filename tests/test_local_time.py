"""A date-time without an offset is UTC on every path of `timestamps.py`, whatever the
machine's time zone: each path is run under two zones that are not UTC (one a half-hour
off). On a UTC machine a date read as local time would pass unnoticed.

2024-01-01T00:00:00Z is 19723 days after the epoch: 19723 * 86400 = 1704067200."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ctsync.timestamps import (
    DatesAs,
    FineDates,
    convert_object,
    convert_value,
    event_time,
    fine_iso_to_epoch,
    iso_to_epoch,
)

NEW_YEAR = 1704067200  # 2024-01-01T00:00:00 UTC


@pytest.fixture(params=["America/Los_Angeles", "Asia/Kolkata"])
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    assert time.timezone != 0  # the zone took effect
    yield request.param
    monkeypatch.undo()
    time.tzset()


PATHS: dict[str, tuple[Callable[[], Any], Any]] = {
    # iso_to_epoch: the rule's parser, date only and date-time
    "rule, date only": (lambda: iso_to_epoch("2024-01-01"), NEW_YEAR),
    "rule, minutes": (lambda: iso_to_epoch("2024-01-01T00:00"), NEW_YEAR),
    "rule, milliseconds": (lambda: iso_to_epoch("2024-01-01T00:00:00.999"), NEW_YEAR),
    # convert_value (a single value) and convert_object (its inlined hot path)
    "convert_value": (lambda: convert_value("2024-01-01T00:00:01"), NEW_YEAR + 1),
    "convert_value $D_": (
        lambda: convert_value("2024-01-01", DatesAs.CLEVERTAP),
        f"$D_{NEW_YEAR}",
    ),
    "convert_object": (
        lambda: convert_object({"since": "2024-01-01T00:00:02", "n": {"at": "2024-01-01"}}),
        {"since": NEW_YEAR + 2, "n": {"at": NEW_YEAR}},
    ),
    # date-times finer than milliseconds: fine_iso_to_epoch, and through convert_object
    "fine": (lambda: fine_iso_to_epoch("2024-01-01T00:00:03.123456"), NEW_YEAR + 3),
    "fine, converted": (
        lambda: convert_object({"at": "2024-01-01T00:00:04.1234567"}, fine=FineDates(convert=True)),
        {"at": NEW_YEAR + 4},
    ),
    # event_time: the fast path (millisecond ISO) and the slow one (dateutil)
    "event time, fast": (lambda: event_time("2024-01-01T00:00:05.000"), NEW_YEAR + 5),
    "event time, slow": (lambda: event_time("2024-01-01T00:00:06.123456"), NEW_YEAR + 6),
    "event time, slow basic format": (lambda: event_time("20240101T000007"), NEW_YEAR + 7),
}


@pytest.mark.parametrize("path", PATHS)
def test_a_date_without_offset_is_utc_in_any_zone(zone: str, path: str) -> None:
    function, expected = PATHS[path]
    assert function() == expected
