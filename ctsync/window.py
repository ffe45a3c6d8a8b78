"""`--since` / `--until`: the time window of a backfill.

A message is in the window when its `timestamp` (the event time Segment corrected for
the client's clock skew) is at or after `since` and before `until`. A message outside
it, or without a usable timestamp, is skipped as `outside-window`; the mapper is not
called for it. The check wraps the mapper (`WindowedMapper`), so it runs wherever records are
prepared: in this process and in the `--workers` processes alike.

Segment's archives file each message under the day it was *received*
(`<source>/<received-day-epoch-ms>/<file>`). A message is received no earlier than its
`timestamp`, give or take `SKEW_MARGIN_MS` (see `passes_over`), so a day folder that
ends that margin or more before `since` cannot hold a message of the window and is
not read at all. Later folders are always read: a device that was offline sends its
messages days after their timestamp, into a later folder.

`ctsync.sources` carries a window in its input options as a `TimeWindow`, so that it
stays a leaf module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ctsync.errors import UsageError
from ctsync.records import Counters, Mapper, MapResult, Message, SentTokens, Skip, counting
from ctsync.sources import TimeWindow
from ctsync.timestamps import EARLIEST_EPOCH, LATEST_EPOCH, event_time

OUTSIDE_WINDOW: Final = "outside-window"
"""The skip reason of a message outside the window (or without a usable timestamp)."""
NO_TIMESTAMP: Final = "no-timestamp"
DAY_MS: Final = 86_400_000
SKEW_MARGIN_MS: Final = DAY_MS
"""How much later than its day folder's end a message's `timestamp` may be.

Segment sets `timestamp = receivedAt - (sentAt - originalTimestamp)`, never later than
`receivedAt` but for network latency. It does not correct a `timestamp` set by a server
library or an HTTP API call, so a sender whose clock runs ahead, or that writes local
time as UTC (up to 14 hours off, UTC+14), stamps messages after they are received. A day
covers both, and costs at most one day folder more read."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SHAPE: Final = "an ISO date or date-time, e.g. 2024-03-01 or 2024-03-01T12:00:00+02:00"


@dataclass(frozen=True, slots=True)
class Window:
    """`[since, until)` in epoch milliseconds; None leaves that side open."""

    since: int | None = None
    until: int | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None) -> Window | None:
        """The window of `--since` and `--until` (None when neither is given). Raises
        UsageError for a value that is not an ISO date or date-time, or an empty window."""
        if since is None and until is None:
            return None
        window = cls(_bound("--since", since), _bound("--until", until))
        if window.since is not None and window.until is not None and window.since >= window.until:
            raise UsageError(
                f"--since {since} is not before --until {until}: the window holds no time "
                "(--until is exclusive: --since 2024-03-01 --until 2024-04-01 is March)"
            )
        return window

    def holds(self, ms: int) -> bool:
        """Whether a message stamped `ms` (epoch milliseconds) is in the window."""
        return (self.since is None or ms >= self.since) and (self.until is None or ms < self.until)

    def passes_over(self, path: str) -> bool:
        """Whether the file at `path` (a file path or a bucket key) sits in a Segment day
        folder that ends `SKEW_MARGIN_MS` or more before `since`, so that none of its
        messages can be in the window. Any other file may hold some: False."""
        if self.since is None:
            return False
        day = day_folder(path)
        return day is not None and day + DAY_MS + SKEW_MARGIN_MS <= self.since


def day_folder(path: str) -> int | None:
    """The day (epoch ms) of the folder holding `path` when it is named like Segment's
    received-day folders (the epoch milliseconds of a UTC midnight), else None."""
    parts = path.replace("\\", "/").rsplit("/", 2)
    if len(parts) < 2:
        return None
    name = parts[-2]
    if not (12 <= len(name) <= 14 and name.isascii() and name.isdigit()):
        return None
    day = int(name)
    return day if day % DAY_MS == 0 else None


def _bound(option: str, value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text) if text[:1].isdigit() else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise UsageError(f"{option} {value!r} is not {_SHAPE}")
    return _ms(parsed)


def _ms(parsed: datetime) -> int:
    # Without an offset the value is UTC, as everywhere in ctsync; integer arithmetic
    # floors a fraction finer than a millisecond.
    delta = (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)) - _EPOCH
    return delta.days * DAY_MS + delta.seconds * 1000 + delta.microseconds // 1000


def message_time(value: Any) -> int | None:
    """Epoch milliseconds of a message's `timestamp`, or None when it is not a time.
    Usable is what ctsync takes for CleverTap's `ts` (`timestamps.event_time`), read
    here to the millisecond so a window can end at any instant."""
    if type(value) is str:
        try:
            return _ms(datetime.fromisoformat(value))
        except ValueError:
            pass
    elif type(value) is int:  # `event_time`'s reading, to the millisecond
        ms = value if abs(value) >= 100_000_000_000 else value * 1000
        return ms if EARLIEST_EPOCH <= ms // 1000 <= LATEST_EPOCH else None
    seconds = event_time(value)
    return None if seconds is None else seconds * 1000


_OUTSIDE: Final = Skip(OUTSIDE_WINDOW)


class WindowedMapper:
    """A mapper that skips messages outside the window and maps the others.

    Counts the messages it skipped for having no usable timestamp (`untimed`) among the
    counters of the mapper it wraps, whose counters and tokens are its own.
    """

    def __init__(self, window: TimeWindow, inner: Mapper) -> None:
        self.window = window
        self.inner = inner
        counted = counting(inner)
        self.counters: Counters = counted.counters
        self.tokens: SentTokens = counted.tokens
        self.untimed: Counter[str] = self.counters.untimed

    def __call__(self, message: Message) -> MapResult:
        ms = message_time(message.get("timestamp"))
        if ms is None:
            self.untimed[NO_TIMESTAMP] += 1
            return _OUTSIDE
        if self.window.holds(ms):
            return self.inner(message)
        return _OUTSIDE


def untimed(mapper: Mapper) -> Counter[str]:
    """The messages a windowed mapper skipped for want of a usable timestamp (empty for
    any other mapper). Read once the run is over."""
    return counting(mapper).counters.untimed


def window_notes(count: int) -> list[str]:
    """The summary's note on messages without a usable timestamp, skipped by the window."""
    if not count:
        return []
    messages = "1 message has" if count == 1 else f"{count:,} messages have"
    return [
        f"{messages} no usable timestamp, skipped as {OUTSIDE_WINDOW}: with --since or "
        "--until only messages whose timestamp is in the window are sent"
    ]


def changed_window_note(before: tuple[int | None, int | None], now: Window | None) -> str:
    """The summary's note for a run whose state file's earlier runs had another window."""
    return (
        f"this run's time window reaches past the one of the run before it on this state "
        f"file ({_described(*before)}; this run: "
        f"{_described(now.since, now.until) if now else 'none'}): the inputs that run "
        "finished are not read again, and their messages outside its window stay unsent; "
        "give each window its own --state file"
    )


def _described(since: int | None, until: int | None) -> str:
    parts = [
        f"{option} {_iso(ms)}"
        for option, ms in (("--since", since), ("--until", until))
        if ms is not None
    ]
    return " ".join(parts) or "none"


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


__all__ = [
    "NO_TIMESTAMP",
    "OUTSIDE_WINDOW",
    "SKEW_MARGIN_MS",
    "Window",
    "WindowedMapper",
    "changed_window_note",
    "day_folder",
    "message_time",
    "untimed",
    "window_notes",
]
