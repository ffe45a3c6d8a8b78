"""Segment's "Convert Timestamps" rule, and the event time of a message.

The rule (Segment's and Customer.io's docs): a string that is an ISO-8601 date-time with
at most millisecond precision becomes Unix epoch seconds; anything else is left alone, so
phone numbers, IDs and other date formats survive. Nested objects are walked, arrays are
not. A value without an offset is UTC; fractions are floored.

The published examples (1136253847, 1684475925) were computed in the writer's Pacific
time zone and are wrong; the true values are 1136225047 and 1684450725.

Date-times finer than milliseconds (Segment's Python library writes microseconds) are
left alone by the rule. A `FineDates` passed to `convert_object` counts them by property
name, so a run can say how many it left as text, or converts them too (floored to
seconds) when the user asked for that.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Final


class DatesAs(StrEnum):
    """How converted dates are written: plain epoch seconds, or CleverTap's `$D_` type."""

    UNIX = "unix"
    CLEVERTAP = "clevertap"


# Date, optionally `T` + time with at most millisecond precision, optionally an offset.
_ISO_MS = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
)
# A date-time with more than three fractional digits: the part before the fraction, and
# the offset. Dropping the fraction floors to the second, since it only ever adds time.
_ISO_FINE = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.\d{4,}((?:Z|[+-]\d{2}(?::?\d{2})?)?)"
)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)


def _segment_shape(value: str) -> bool:
    """Whether `value` (with `-` at 4 and 7) has the layout of what Segment writes:
    `YYYY-MM-DDTHH:MM:SS`, then `Z`, `.fffZ`, `+hh:mm` or `.fff+hh:mm` (or `-hh:mm`).
    Where this layout has digits, `datetime.fromisoformat` takes ASCII digits only, so
    with it, it is exactly as strict as the regex, at a fifth of the cost."""
    n = len(value)
    if value[10:11] != "T" or value[13:14] != ":" or value[16:17] != ":" or not value.isascii():
        return False
    if n == 20:
        return value[19] == "Z"
    if n == 24:
        return value[19] == "." and value[23] == "Z"
    if n == 25:
        return value[19] in "+-" and value[22] == ":"
    if n == 29:
        return value[19] == "." and value[23] in "+-" and value[26] == ":"
    return False


def iso_to_epoch(
    value: str, fine: FineDates | None = None, prefix: str = "", key: str = ""
) -> int | None:
    """Epoch seconds of an ISO-8601 string with at most millisecond precision, else None.
    With `fine`, a date-time finer than milliseconds is counted under the property name
    `prefix + key` (or converted, as `fine` says).

    Every reader of dates in this module comes here: most strings are not dates, and
    this one pre-check rejects them with two character comparisons."""
    if len(value) < 10 or value[4] != "-" or value[7] != "-":
        return None
    if not _segment_shape(value) and _ISO_MS.fullmatch(value) is None:
        return None if fine is None else fine.epoch(prefix + key, value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:  # e.g. 2019-02-30
        return None
    # A value without an offset is UTC. Subtracting the epoch is exact and floors, and
    # costs a fifth of `replace(tzinfo=UTC).timestamp()` (the hot path: every date trait).
    since = parsed - (_EPOCH_NAIVE if parsed.tzinfo is None else _EPOCH_UTC)
    return since.days * 86400 + since.seconds


def fine_iso_to_epoch(value: str) -> int | None:
    """Epoch seconds (floored) of an ISO-8601 date-time finer than milliseconds
    (`2023-01-02T00:00:00.123456+00:00`, `2025-08-13T02:08:40.1418726Z`), else None."""
    match = _ISO_FINE.fullmatch(value)
    if match is None:
        return None
    return iso_to_epoch(match.group(1) + match.group(2))


class FineDates:
    """What to do with date-times finer than milliseconds, which Segment's rule leaves as
    text: count them by property name (`left_as_text`), or, with `convert`, convert them
    like the others (floored to seconds). One per mapper; read at the end of a run."""

    __slots__ = ("convert", "left_as_text")

    def __init__(self, *, convert: bool = False) -> None:
        self.convert = convert
        self.left_as_text: Counter[str] = Counter()

    def epoch(self, name: str, value: str) -> int | None:
        """The epoch of `value` if it is a fine date-time to convert; else None, and a
        fine date-time left as text is counted under `name`."""
        epoch = fine_iso_to_epoch(value)
        if epoch is None or self.convert:
            return epoch
        self.left_as_text[name] += 1
        return None


def convert_value(
    value: Any, dates_as: DatesAs = DatesAs.UNIX, *, fine: FineDates | None = None, name: str = ""
) -> Any:
    """One value under the rule: a converted date, a walked object, or the value as is.
    `name` is the property's name, for counting fine date-times in `fine`."""
    if isinstance(value, str):
        epoch = iso_to_epoch(value, fine, name)
        if epoch is None:
            return value
        return epoch if dates_as is DatesAs.UNIX else f"$D_{epoch}"
    if isinstance(value, dict):
        return convert_object(value, dates_as, fine=fine, prefix=f"{name}." if name else "")
    return value


def convert_object(
    obj: dict[str, Any],
    dates_as: DatesAs = DatesAs.UNIX,
    *,
    fine: FineDates | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """A copy of `obj` with every ISO-8601 value converted, nested objects included.

    With `fine`, date-times finer than milliseconds are counted (or converted, as `fine`
    says) under their property name: `prefix` + key, so `address.movedAt` when nested.
    """
    # The hot path of an identify: `convert_value` inlined, and the copy made in C, so a
    # trait that is not a date costs a type check and two character comparisons.
    unix = dates_as is DatesAs.UNIX
    converted = obj.copy()
    for key, value in obj.items():
        kind = type(value)
        if kind is str:
            # `iso_to_epoch`'s pre-check, repeated as a filter only (it checks again): a
            # call for every string trait costs a fifth more on a typical identify.
            if len(value) >= 10 and value[4] == "-" and value[7] == "-":
                epoch = iso_to_epoch(value, fine, prefix, key)
                if epoch is not None:
                    converted[key] = epoch if unix else f"$D_{epoch}"
        elif kind is dict:
            converted[key] = convert_object(value, dates_as, fine=fine, prefix=f"{prefix}{key}.")
    return converted


EARLIEST_EPOCH: Final = -62135596800  # 0001-01-01T00:00:00Z
LATEST_EPOCH: Final = 253402300799  # 9999-12-31T23:59:59Z


def event_time(value: Any) -> int | None:
    """CleverTap's `ts` (integer epoch seconds) for a message's `timestamp`.

    Unlike the Convert Timestamps rule this reads any ISO-8601 precision (an event time
    with microseconds is still an event time) and integer epochs (milliseconds when too
    large to be seconds). Returns None when the value is not a time at all, a number
    past the years 1 to 9999 included (`-1e22` would not even fit CleverTap's integer).
    """
    if isinstance(value, str):
        # The common case first: a Segment timestamp with milliseconds.
        epoch = iso_to_epoch(value)
        if epoch is None:
            epoch = _any_iso_to_epoch(value)
        # An offset can take the year 1 or 9999 past the range (0001-01-01T00:00+01:00).
        return epoch if epoch is None or EARLIEST_EPOCH <= epoch <= LATEST_EPOCH else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        seconds = value // 1000 if abs(value) >= 100_000_000_000 else value
        return seconds if EARLIEST_EPOCH <= seconds <= LATEST_EPOCH else None
    if isinstance(value, float) and math.isfinite(value):
        return event_time(math.floor(value))
    return None


def _any_iso_to_epoch(value: str) -> int | None:
    """Epoch seconds of an ISO-8601 string of any precision, as dateutil reads it."""
    from dateutil.parser import isoparse  # rare: a worker process starts without it

    try:
        parsed = isoparse(value)
    except (ValueError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return math.floor(parsed.timestamp())


# --- dates as people write them (a date of birth) ---------------------------------------

_MONTH_NAMES: dict[str, int] = {}
for _number, _name in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"),
    start=1,
):  # fmt: skip
    _MONTH_NAMES[_name] = _MONTH_NAMES[_name[:3]] = _number
_MONTH_NAMES["sept"] = 9
# 01-Mar-1990, 1 March 1990, 01/mar/1990.
_DAY_MONTH_NAME_YEAR = re.compile(r"(\d{1,2})[-/ ]([A-Za-z]{3,9})\.?[-/ ](\d{4})")
_YEAR_MONTH_DAY = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})")  # 1990/03/01
_NUMERIC_WITH_YEAR_LAST = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4})")  # 13/03/1990
# A number this large is milliseconds: as seconds it would be after the year 2286, no
# one's birthday, while as milliseconds it is any date more than 115 days from 1970.
# (`event_time`'s 10^11 would read births of 1967-1973 in milliseconds as seconds.)
_DATE_MILLISECONDS_FROM: Final = 10**10


def date_epoch(value: Any) -> int | None:
    """Epoch seconds of a date as people write one (a date of birth), else None.

    Read: ISO-8601 dates and date-times of any precision (`1990-03-01`,
    `1990-03-01T08:00:00.123456+05:30`; no offset is UTC); epoch seconds or milliseconds
    as JSON numbers (10^10 and over is milliseconds); `01-Mar-1990` (a month's name or
    three-letter abbreviation, any case, between `-`, `/` or spaces); `1990/03/01`; and
    day and month with the year last (`13/03/1990`, `03-13-1990`) only when they cannot
    be mixed up: one of the two is over 12, or both are the same. A date that is not in
    the calendar (`31/02/1990`), `03/01/1990`, text of digits and anything else: None.
    A date alone is midnight UTC."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = math.floor(value)
    if isinstance(value, int):
        seconds = value // 1000 if abs(value) >= _DATE_MILLISECONDS_FROM else value
        return seconds if abs(seconds) <= LATEST_EPOCH else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) >= 10 and text[4] == "-" and text[7] == "-":
        # Not dateutil for what is not YYYY-MM-DD...: it also reads `1990` or `19900301`.
        epoch = iso_to_epoch(text)
        return epoch if epoch is not None else _any_iso_to_epoch(text)
    if match := _YEAR_MONTH_DAY.fullmatch(text):
        year, month, day = (int(part) for part in match.groups())
        return _day_epoch(year, month, day)
    if match := _DAY_MONTH_NAME_YEAR.fullmatch(text):
        month_number = _MONTH_NAMES.get(match.group(2).lower())
        if month_number is None:
            return None
        return _day_epoch(int(match.group(3)), month_number, int(match.group(1)))
    if match := _NUMERIC_WITH_YEAR_LAST.fullmatch(text):
        first, second, year = int(match.group(1)), int(match.group(3)), int(match.group(4))
        if first > 12 >= second or first == second:
            return _day_epoch(year, second, first)  # day first: 13/03/1990
        if second > 12 >= first:
            return _day_epoch(year, first, second)  # month first: 03/13/1990
        return None  # 03/01/1990: the 3rd of January or the 1st of March
    return None


def clevertap_date(value: Any) -> Any:
    """A date as people write one (`date_epoch`) as CleverTap's date type `$D_<epoch>`;
    anything else unchanged, for the data rules to judge."""
    epoch = date_epoch(value)
    return value if epoch is None else f"$D_{epoch}"


def _day_epoch(year: int, month: int, day: int) -> int | None:
    """Epoch seconds of midnight UTC on that day, or None when there is no such day."""
    try:
        return (date(year, month, day) - _EPOCH_DATE).days * 86400
    except ValueError:
        return None
