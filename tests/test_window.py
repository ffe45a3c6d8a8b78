"""`--since` / `--until`: which messages a window sends, which files it never reads.

Expectations are worked out here from instants the tests choose (epoch milliseconds),
never by parsing the strings the code parses: a message's timestamp and the window's
bounds are written from those instants in several spellings (offsets, precisions,
date-only, epoch numbers), and the test knows the instant each one names.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ctsync import api
from ctsync.cli import app
from ctsync.reader import InputOptions
from ctsync.settings import ClientSettings
from ctsync.summary import Summary
from ctsync.timestamps import event_time
from ctsync.window import Window, message_time
from tests.helpers import CleverTap, assert_accounted, clean_env, identify

runner = CliRunner()
DAY = 86_400_000
# 2024-03-01T00:00:00Z, a UTC midnight: Segment's day folder for that day is named so.
MARCH_1 = 1_709_251_200_000


def iso(ms: int, offset_minutes: int = 0, digits: int = 3) -> str:
    """The instant `ms` written as ISO-8601 at an offset, with 0, 3 or 6 fraction digits
    (`Z` for UTC). The fraction is cut, never rounded: it must still name `ms` floored."""
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    text = moment.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S")
    if digits == 3:
        text += f".{ms % 1000:03d}"
    elif digits == 6:
        text += f".{ms % 1000:03d}417"  # microseconds beyond the millisecond
    if offset_minutes == 0:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def write(path: Path, *messages: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(orjson.dumps(m) + b"\n" for m in messages)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def dry_run(paths: list[Path], since: str | None, until: str | None, workers: int = 1) -> Summary:
    job = api.UploadJob(
        paths=[str(p) for p in paths],
        inputs=InputOptions(window=Window.parse(since, until)),
        workers=workers,
    )
    return api.upload(job)


# A bound: an instant and how it is written. Date-only only where it names a midnight.
offsets = st.sampled_from([0, 0, -480, -420, 60, 330, 345, 840, -720])
instants = st.integers(MARCH_1 - 3 * DAY, MARCH_1 + 3 * DAY)


@st.composite
def bounds(draw: st.DrawFn) -> tuple[int, str] | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    if draw(st.booleans()):
        ms = MARCH_1 + DAY * draw(st.integers(-3, 3))
        return ms, iso(ms, 0, 0)[:10]  # `2024-03-01`: midnight UTC
    ms = draw(instants)
    return ms, iso(ms, draw(offsets), 3)


@st.composite
def stamps(draw: st.DrawFn) -> tuple[int | None, Any]:
    """(the instant, or None for no usable time; the `timestamp` value as written)."""
    kind = draw(st.sampled_from(["iso", "iso", "iso", "seconds", "millis", "none", "junk"]))
    ms = draw(instants)
    if kind == "iso":
        digits = draw(st.sampled_from([0, 3, 6]))
        if digits == 0:
            ms -= ms % 1000
        return ms, iso(ms, draw(offsets), digits)
    if kind == "seconds":
        return ms - ms % 1000, ms // 1000
    if kind == "millis":
        return ms, ms
    if kind == "none":
        return None, None
    # Past the years 1 to 9999 (seconds or milliseconds) is no time either, as for `ts`.
    beyond = [10**18, -(10**18), 253_402_300_800_000, 2**63]
    return None, draw(st.sampled_from(["yesterday", "", "01/03/2024", True, {"at": 1}, *beyond]))


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    since=bounds(),
    until=bounds(),
    timestamps=st.lists(stamps(), min_size=1, max_size=12),
)
def test_only_messages_stamped_inside_the_window_are_sent(
    tmp_path: Path,
    since: tuple[int, str] | None,
    until: tuple[int, str] | None,
    timestamps: list[tuple[int | None, Any]],
) -> None:
    if since is None and until is None:
        since = (MARCH_1, "2024-03-01")
    if since is not None and until is not None and since[0] >= until[0]:
        until = (since[0] + 1, iso(since[0] + 1, 60))
    messages = [identify(f"u{i}", value) for i, (_, value) in enumerate(timestamps)]
    path = write(tmp_path / f"{time.monotonic_ns()}.ndjson", *messages)

    summary = dry_run([path], since and since[1], until and until[1])

    inside = [
        ms
        for ms, _ in timestamps
        if ms is not None and (since is None or ms >= since[0]) and (until is None or ms < until[0])
    ]
    untimed = sum(1 for ms, _ in timestamps if ms is None)
    counts = summary.as_dict()
    assert counts["read"] == len(messages)
    assert counts["accepted"] == len(inside)
    assert counts["skipped_by_reason"] == (
        {"outside-window": len(messages) - len(inside)} if len(inside) < len(messages) else {}
    )
    assert_accounted(summary)
    noted = [n for n in summary.notes if "no usable timestamp" in n]
    if untimed:
        assert len(noted) == 1 and noted[0].startswith(
            "1 message has" if untimed == 1 else f"{untimed} messages have"
        )
    else:
        assert noted == []


def test_the_bounds_are_instants_half_open_and_utc_unless_offset(tmp_path: Path) -> None:
    # The suite runs in Los Angeles: a date means UTC midnight there too.
    edge = [
        identify("before", "2024-02-29T23:59:59.999Z"),
        identify("first", "2024-03-01T00:00:00.000Z"),
        identify("same-instant", "2024-02-29T16:00:00-08:00"),
        identify("last", "2024-03-31T23:59:59.999Z"),
        identify("until", "2024-04-01T00:00:00Z"),
        identify("until-elsewhere", "2024-04-01T05:30:00+05:30"),
        identify("kiritimati", "2024-04-01T13:59:59+14:00"),  # 2024-03-31T23:59:59Z
    ]
    path = write(tmp_path / "edge.ndjson", *edge)
    summary = dry_run([path], "2024-03-01", "2024-04-01")
    assert (summary.accepted, summary.skipped["outside-window"]) == (4, 3)
    # An offset on a bound moves it: 2024-03-01T01:00+01:00 is 2024-03-01T00:00Z.
    summary = dry_run([path], "2024-03-01T01:00:00+01:00", "2024-03-31T16:59:59.999-07:00")
    assert (summary.accepted, summary.skipped["outside-window"]) == (3, 4)


def test_without_a_window_a_message_without_timestamp_is_sent(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ndjson", identify("a"), identify("b", "not a time"))
    summary = api.upload(api.UploadJob(paths=[str(path)]))
    assert summary.accepted == 1 and not summary.skipped
    assert summary.invalid == {"525": 1}  # as before: a timestamp that is no time


@pytest.fixture
def other_zone(request: pytest.FixtureRequest) -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def segment_archive(root: Path) -> dict[int, list[dict[str, Any]]]:
    """Day folders around 2024-03-01, each with messages stamped as Segment would: at
    most SKEW (a day) after the folder's day ends (a sender's clock ahead), or days
    before it (a device that was offline)."""
    days: dict[int, list[dict[str, Any]]] = {}
    for n in range(-4, 3):
        day = MARCH_1 + n * DAY
        days[day] = [
            identify(f"start{n}", iso(day)),
            identify(f"late-in-day{n}", iso(day + DAY - 1)),
            # received just before the folder's day ended, by a clock 23 h 59 min ahead
            identify(f"clock-ahead{n}", iso(day + 2 * DAY - 60_001, 840)),
            identify(f"offline{n}", iso(day - 5 * DAY, -480)),
        ]
        write(root / "segment-logs" / "src1" / str(day) / f"{day + 1000}.a1b2.gz", *days[day])
    return days


@pytest.mark.parametrize(
    "other_zone", ["America/Los_Angeles", "Asia/Kolkata", "Pacific/Kiritimati"], indirect=True
)
@pytest.mark.parametrize("since_days", [-1, 0, 1])
@pytest.mark.usefixtures("other_zone")
def test_day_folders_that_cannot_hold_the_window_are_not_read(
    tmp_path: Path, since_days: int
) -> None:
    days = segment_archive(tmp_path)
    since = MARCH_1 + since_days * DAY
    summary = dry_run([tmp_path / "segment-logs"], iso(since, 0, 0)[:10], None)

    every = [m for messages in days.values() for m in messages]
    expected_sent = sum(1 for m in every if _instant(m) >= since)
    # A folder is passed over only when even its clock-skewed messages (a day at most)
    # fall before --since: it ends a day or more before it.
    expected_passed = sum(1 for day in days if day + 2 * DAY <= since)
    assert summary.accepted == expected_sent
    assert expected_passed >= 2  # the test shows passing over, not only reading
    # Nothing a read folder holds is left out; what the passed-over ones hold is not read.
    unread = sum(len(days[d]) for d in days if d + 2 * DAY <= since)
    assert summary.read == len(every) - unread
    assert_accounted(summary)
    files = "1 file" if expected_passed == 1 else f"{expected_passed} files"
    assert any(n.startswith(f"{files} not read: in Segment day folders") for n in summary.notes)


def _instant(message: dict[str, Any]) -> int:
    """The instant of a timestamp `iso` wrote, read back by hand (its fields, its offset)."""
    text: str = message["timestamp"]
    date, clock = text[:10], text[11:23]
    year, month, day = (int(x) for x in date.split("-"))
    hours, minutes, seconds = int(clock[0:2]), int(clock[3:5]), int(clock[6:8])
    millis = int(clock[9:12])
    zone = text[23:]
    shift = 0
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        shift = sign * (int(zone[1:3]) * 60 + int(zone[4:6])) * 60_000
    days = (datetime(year, month, day) - datetime(1970, 1, 1)).days
    return days * DAY + ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis - shift


def test_a_file_named_on_its_own_in_an_old_day_folder_is_passed_over(tmp_path: Path) -> None:
    days = segment_archive(tmp_path)
    old = MARCH_1 - 4 * DAY
    path = tmp_path / "segment-logs" / "src1" / str(old) / f"{old + 1000}.a1b2.gz"
    summary = dry_run([path], "2024-03-01", None)
    assert summary.read == 0 and len(days[old]) == 4
    assert any(n.startswith("1 file not read") for n in summary.notes)


def test_a_window_with_workers_sends_and_counts_as_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of one line, handed to worker processes from the first byte.
    monkeypatch.setenv("CTSYNC_WORKER_BLOCK_BYTES", "1")
    monkeypatch.setenv("CTSYNC_WORKER_START_AFTER", "0")
    messages = []
    for i in range(60):
        stamp: Any = iso(MARCH_1 + (i - 30) * 3_600_000, [0, 330, -480][i % 3])
        if i % 7 == 0:
            stamp = None
        messages.append(identify(f"u{i}", stamp))
    path = write(tmp_path / "a.ndjson", *messages)
    one = dry_run([path], "2024-03-01", "2024-03-01T12:00:00Z", workers=1)
    two = dry_run([path], "2024-03-01", "2024-03-01T12:00:00Z", workers=2)
    # By hand: hours -30..29 around March 1; in [0, 12) and stamped: i in 30..41, not i%7==0.
    inside = [i for i in range(30, 42) if i % 7 != 0]
    for summary in (one, two):
        assert summary.accepted == len(inside)
        assert summary.skipped == {"outside-window": 60 - len(inside)}
        assert_accounted(summary)
        assert any(n.startswith("9 messages have no usable timestamp") for n in summary.notes)


def cli(*args: str) -> tuple[int, dict[str, Any], str]:
    env = clean_env()
    result = runner.invoke(app, ["upload", *args, "--dry-run", "--json"], env=env)
    summary = orjson.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, summary, result.stderr


def test_since_and_until_on_the_command_line(tmp_path: Path) -> None:
    segment_archive(tmp_path)
    code, summary, _ = cli(
        str(tmp_path / "segment-logs"), "--since", "2024-03-01", "--until", "2024-03-02"
    )
    assert code == 0
    # start0, late-in-day0, and the clock-ahead message of the day before (Mar 1, 23:58Z)
    assert summary["accepted"] == 3
    assert summary["skipped_by_reason"] == {"outside-window": summary["read"] - 3}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--since", "March 1st"], "--since 'March 1st' is not an ISO date or date-time"),
        (["--until", "2024-02-30"], "--until '2024-02-30' is not an ISO date or date-time"),
        (["--since", "2024-03-02", "--until", "2024-03-01"], "is not before --until"),
        (["--since", "2024-03-01", "--until", "2024-03-01"], "is not before --until"),
    ],
)
def test_a_bad_window_exits_2_saying_what_is_wrong(
    tmp_path: Path, args: list[str], said: str
) -> None:
    path = write(tmp_path / "a.ndjson", identify("a", "2024-03-01T00:00:00Z"))
    code, _, err = cli(str(path), *args)
    assert code == 2
    assert said in err
    assert "Traceback" not in err


@given(value=st.one_of(st.integers(), st.integers(-(10**13), 10**13)))
def test_an_epoch_number_is_the_same_instant_for_the_window_and_for_ts(value: int) -> None:
    """A number in `timestamp` is in the window exactly when it is a time CleverTap's `ts`
    can carry (years 1 to 9999: seconds, or milliseconds when too large for seconds), and
    names the same second there."""
    seconds = event_time(value)
    ms = message_time(value)
    assert (ms is None) == (seconds is None)
    if ms is not None:
        assert ms // 1000 == seconds


def test_a_state_file_used_with_another_window_says_what_that_costs(
    tmp_path: Path, settings: ClientSettings
) -> None:
    """A window is a backfill of its own: the inputs a run finished are not read again,
    so a second window over the same state file sent nothing of them, without a word (a
    walkthrough: a nightly --since on one state file)."""
    export = tmp_path / "e.ndjson"
    export.write_bytes(
        b"".join(
            orjson.dumps(identify(f"u{day}", f"2024-03-0{day}T12:00:00Z")) + b"\n" for day in (1, 5)
        )
    )
    state = tmp_path / "state.db"

    def run(since: str | None) -> list[str]:
        job = api.UploadJob(
            paths=[str(export)],
            client=settings,
            state=state,
            inputs=InputOptions(window=Window.parse(since, None)),
        )
        return api.upload(job, transport=CleverTap().transport()).note_lines()

    def changed(notes: list[str]) -> list[str]:
        return [note for note in notes if "reaches past" in note]

    assert changed(run("2024-03-05")) == []  # the first: nothing to compare with
    assert changed(run("2024-03-05")) == []  # the same window
    assert changed(run("2024-03-06")) == []  # a narrower one loses nothing
    assert changed(run("2024-03-01")) == [
        "this run's time window reaches past the one of the run before it on this state "
        "file (--since 2024-03-06T00:00:00Z; this run: --since 2024-03-01T00:00:00Z): the "
        "inputs that run finished are not read again, and their messages outside its "
        "window stay unsent; give each window its own --state file"
    ]
    (note,) = changed(run(None))
    assert "(--since 2024-03-01T00:00:00Z; this run: none)" in note
    assert changed(run("2024-03-02")) == []  # after a run with no window: all was read
