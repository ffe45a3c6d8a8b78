"""The ledger: a record's worst verdict decides its outcome, and the counts add up.

Accounting is checked here by an independent sum (`tests.helpers.settled`), never by
`Summary.balanced`, which is the production code under test."""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from ctsync.api import Outputs, UploadJob, upload
from ctsync.console import render_summary
from ctsync.errors import DiskFull
from ctsync.ledger import ACCEPTED, Ledger, Output, Summary, Tracked, Verdict, report_line
from ctsync.presets import Preset
from ctsync.records import Invalid, Origin, Outcome, Stage
from ctsync.settings import ClientSettings
from ctsync.state import StateFile
from tests.helpers import assert_accounted, settled

REJECTED = Verdict(Outcome.REJECTED, "512", "event name too long")
FAILED = Verdict(Outcome.FAILED, "503", "busy", Stage.TRANSPORT)


def track(ledger: Ledger, operations: int) -> Tracked:
    ledger.read()
    return Tracked(Origin("export.ndjson", 1), b'{"userId":"u1"}', {"userId": "u1"}, operations)


@pytest.mark.parametrize(
    ("verdicts", "outcome"),
    [
        ([REJECTED, ACCEPTED], "rejected"),  # the classic track: event refused, token taken
        ([ACCEPTED, REJECTED], "rejected"),
        ([FAILED, ACCEPTED, REJECTED], "failed"),
        ([REJECTED, FAILED, ACCEPTED], "failed"),
        ([ACCEPTED, ACCEPTED], "accepted"),
    ],
)
def test_a_record_ends_with_its_worst_verdict_in_any_order(
    verdicts: list[Verdict], outcome: str
) -> None:
    report = io.BytesIO()
    ledger = Ledger(report=report)
    tracked = track(ledger, len(verdicts))
    for verdict in verdicts:
        ledger.settle(tracked, verdict)
    counts = ledger.summary.as_dict()
    expected = {"accepted": 0, "rejected": 0, "failed": 0, outcome: 1}
    assert {k: counts[k] for k in expected} == expected
    if outcome == "accepted":
        assert report.getvalue() == b""
    else:
        (line,) = report.getvalue().splitlines()
        assert orjson.loads(line)["code"] == ("503" if outcome == "failed" else "512")


def test_the_first_of_equally_bad_verdicts_is_reported() -> None:
    """Two rejections of one record: the report names the first (the later one does not
    replace it, so a re-run of the same input reports the same code)."""
    report = io.BytesIO()
    ledger = Ledger(report=report)
    tracked = track(ledger, 2)
    ledger.settle(tracked, REJECTED)
    ledger.settle(tracked, Verdict(Outcome.REJECTED, "523", "other"))
    assert ledger.summary.rejected == Counter({"512": 1})
    assert orjson.loads(report.getvalue())["code"] == "512"


verdicts = st.sampled_from([ACCEPTED, REJECTED, FAILED, Verdict(Outcome.ACCEPTED)])


@given(st.lists(st.lists(verdicts, min_size=1, max_size=5), max_size=20))
def test_every_record_is_counted_once_by_its_worst_verdict(records: list[list[Verdict]]) -> None:
    ledger = Ledger()
    severity = {Outcome.ACCEPTED: 0, Outcome.REJECTED: 1, Outcome.FAILED: 2}
    expected: Counter[Outcome] = Counter()
    for operations in records:
        tracked = track(ledger, len(operations))
        for verdict in operations:
            ledger.settle(tracked, verdict)
        expected[max((v.outcome for v in operations), key=severity.__getitem__)] += 1
    summary = ledger.summary
    assert summary.accepted == expected[Outcome.ACCEPTED]
    assert summary.rejected.total() == expected[Outcome.REJECTED]
    assert summary.failed.total() == expected[Outcome.FAILED]
    assert_accounted(summary)


def test_a_record_is_not_counted_before_its_last_verdict() -> None:
    ledger = Ledger()
    tracked = track(ledger, 3)
    ledger.settle(tracked, ACCEPTED)
    ledger.settle(tracked, ACCEPTED)
    assert settled(ledger.summary) == 0
    ledger.settle(tracked, ACCEPTED)
    assert settled(ledger.summary) == 1 == ledger.summary.accepted


def test_skipped_and_invalid_records_count_toward_read() -> None:
    ledger = Ledger()
    for _ in range(3):
        ledger.read()
    ledger.skip("page")
    ledger.invalid(Origin("f", 2), b"{}", {}, Invalid("no-identity", "no identity"))
    ledger.settle(track(ledger, 1), ACCEPTED)
    summary = ledger.summary
    assert (summary.read, settled(summary)) == (4, 3)  # one record still in flight


@pytest.mark.parametrize(
    ("read", "accepted", "rejected", "balanced"),
    [
        (3, 2, 1, True),
        (3, 3, 1, False),  # more settled than read: a record counted twice
        (3, 1, 1, False),  # fewer: a record lost
        (0, 0, 0, True),
    ],
)
def test_balanced_is_true_only_when_the_counts_add_up_exactly(
    read: int, accepted: int, rejected: int, balanced: bool
) -> None:
    summary = Summary(read=read, accepted=accepted, rejected=Counter({"512": rejected}))
    assert summary.balanced is balanced


def test_the_summary_says_so_when_the_counts_do_not_add_up() -> None:
    def rendered(summary: Summary) -> str:
        out = io.StringIO()
        render_summary(summary, Console(file=out, width=200))
        return out.getvalue()

    assert "do not add up" in rendered(Summary(read=1, accepted=2))
    assert "do not add up" not in rendered(Summary(read=2, accepted=2))


def test_a_classic_track_whose_event_is_rejected_and_token_accepted_is_rejected(
    tmp_path: Path, settings: ClientSettings
) -> None:
    """End to end: one track message gives an event and a device token record; CleverTap
    refuses the event by number and takes the token. The record is rejected, reported
    once and written to the dead letters."""
    message = {
        "type": "track",
        "event": "Clicked",
        "userId": "u1",
        "anonymousId": "a1",
        "messageId": "m1",
        "timestamp": "2024-01-01T00:00:00Z",
        "context": {"device": {"token": "tok-1", "type": "android"}},
    }
    export = tmp_path / "export.ndjson"
    export.write_bytes(orjson.dumps(message) + b"\n")
    kinds: list[str] = []

    def clevertap(request: httpx.Request) -> httpx.Response:
        records = orjson.loads(request.content)["d"]
        kinds.extend(r["type"] for r in records)
        refused = [
            {"status": "fail", "code": 512, "error": f"bad event. Skipped record number : {n}"}
            for n, record in enumerate(records, start=1)
            if record["type"] == "event"
        ]
        return httpx.Response(
            200,
            json={
                "status": "success",
                "processed": len(records) - len(refused),
                "unprocessed": refused,
            },
        )

    job = UploadJob(
        paths=[str(export)],
        client=settings,
        preset=Preset.CLASSIC,
        outputs=Outputs(report=tmp_path / "report.ndjson", failed=tmp_path / "failed.ndjson"),
    )
    summary = upload(job, transport=httpx.MockTransport(clevertap))
    assert sorted(kinds) == ["event", "token"]
    counts = summary.as_dict()
    assert (counts["read"], counts["accepted"], counts["rejected"]) == (1, 0, 1)
    assert_accounted(summary)
    (line,) = (tmp_path / "report.ndjson").read_bytes().splitlines()
    assert orjson.loads(line)["code"] == "512"
    assert orjson.loads((tmp_path / "failed.ndjson").read_bytes()) == message


def test_a_fresh_summary_counts_nothing() -> None:
    assert Summary().as_dict() == {
        "read": 0,
        "skipped": 0,
        "invalid": 0,
        "accepted": 0,
        "rejected": 0,
        "failed": 0,
        "skipped_by_reason": {},
        "invalid_by_code": {},
        "rejected_by_code": {},
        "failed_by_code": {},
        "unreadable_files": 0,
        "dropped_values": {},
        "warnings_by_code": {},
        "fixed_by_code": {},
        "dates_left_as_text": {},
        "requests": 0,
        "retries": 0,
        "http_429": 0,
        "concurrency": {},
        "elapsed_seconds": 0.0,
        "cpu_seconds": {"main": 0.0, "workers": 0.0},
        "dry_run": False,
        "interrupted": False,
        "signal": None,
        "error": None,
        "notes": [],
    }


def test_the_shared_accepted_verdict_cannot_be_changed() -> None:
    """Every accepted operation shares `ACCEPTED`: changing it would change them all."""
    with pytest.raises(AttributeError):
        ACCEPTED.code = "512"  # type: ignore[misc]
    assert (ACCEPTED.code, ACCEPTED.message, ACCEPTED.stage) == ("", "", Stage.API)


# The codes of records a stopped run did not send (README: `aborted` or `interrupted`;
# after a full disk `disk-full`, `output-error` after another write error).
@pytest.mark.parametrize("code", ["interrupted", "aborted", "disk-full", "output-error"])
@pytest.mark.parametrize("resumable", [True, False])
def test_records_a_resumed_run_sends_again_stay_out_of_the_dead_letters(
    code: str, resumable: bool
) -> None:
    """With a state file the next run re-sends records stopped by an interruption or a
    failed write: writing them to the dead letters as well would send them twice."""
    report, dead = io.BytesIO(), io.BytesIO()
    ledger = Ledger(report=report, dead_letters=dead, resumable=resumable)
    ledger.settle(track(ledger, 1), Verdict(Outcome.FAILED, code, "stopped"))
    assert ledger.summary.failed == Counter({code: 1})
    assert report.getvalue().count(b"\n") == 1
    assert dead.getvalue() == (b"" if resumable else b'{"userId":"u1"}\n')


def test_a_tracked_record_keeps_its_line_or_its_message() -> None:
    origin = Origin("f", 1)
    assert Tracked(origin, None, {"userId": "m"}, 1).message == {"userId": "m"}
    # With the input line and no message, the message is decoded from the line when asked.
    assert Tracked(origin, b'{"userId":"line"}', {}, 1).message == {"userId": "line"}
    # A line that is not JSON (a deletion's identity) comes with what the report reads.
    assert Tracked(origin, b"u1", {"userId": "u1"}, 1).message == {"userId": "u1"}


def test_a_report_line_names_where_who_why_and_the_run() -> None:
    line = orjson.loads(
        report_line(
            Origin("export.ndjson", 7, 2),
            {"messageId": "m7", "anonymousId": "a7"},
            Verdict(Outcome.FAILED),
            run="2024-01-01T00:00:00.000Z",
        )
    )
    assert line == {
        "source": "export.ndjson",
        "line": 7,
        "part": 2,
        "messageId": "m7",
        "identity": None,
        "objectId": "a7",
        "stage": "api",
        "code": "",
        "message": "",
        "run": "2024-01-01T00:00:00.000Z",
    }


@pytest.mark.parametrize(
    ("message", "who"),
    [
        ({"userId": "u1", "anonymousId": "a1"}, {"identity": "u1"}),  # the user, if any
        ({"anonymousId": "a1"}, {"identity": None, "objectId": "a1"}),  # CleverTap's name
        ({"userId": 42}, {"identity": 42}),  # as written in the input
        ({}, {"identity": None}),
    ],
)
def test_a_report_line_names_the_user_else_the_anonymous_id_as_object_id(
    message: dict[str, object], who: dict[str, object]
) -> None:
    line = orjson.loads(report_line(Origin("f", 1), message, REJECTED))
    assert {k: v for k, v in line.items() if k in ("identity", "objectId")} == who


def test_a_new_ledger_is_not_a_dry_run_nor_resumable_and_has_no_error() -> None:
    dead = io.BytesIO()
    ledger = Ledger(dead_letters=dead)
    assert ledger.summary.dry_run is False and ledger.output_error is None
    # Not resumable: a record stopped by an interruption goes to the dead letters.
    ledger.settle(track(ledger, 1), Verdict(Outcome.FAILED, "interrupted", "stopped"))
    assert dead.getvalue() == b'{"userId":"u1"}\n'


def test_the_run_of_each_report_line_is_the_start_time_unless_given() -> None:
    assert Ledger(run="2024-01-01T00:00:00.000Z").run == "2024-01-01T00:00:00.000Z"
    started = Ledger().run
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", started), started


def test_skipped_and_invalid_records_are_counted_by_reason_each_time() -> None:
    ledger = Ledger()
    for _ in range(2):
        ledger.skip("page")
        ledger.invalid(Origin("f", 1), b"{}", {}, Invalid("523", "no identity"))
    assert ledger.summary.skipped == Counter({"page": 2})
    assert ledger.summary.invalid == Counter({"523": 2})


def test_a_validate_fix_line_names_the_field_it_left_out() -> None:
    report = io.BytesIO()
    ledger = Ledger(report=report, run="r")
    ledger.fixed(Origin("f", 3), {"userId": "u3"}, "Phone", "516", "not a phone number")
    line = orjson.loads(report.getvalue())
    assert (line["field"], line["code"], line["stage"], line["identity"]) == (
        "Phone",
        "516",
        "validate",
        "u3",
    )
    assert ledger.summary.fixed == Counter({"516": 1})


def test_balanced_counts_every_kind_of_outcome() -> None:
    summary = Summary(
        read=10,
        accepted=1,
        skipped=Counter({"page": 2}),
        invalid=Counter({"523": 3}),
        rejected=Counter({"512": 1}),
        failed=Counter({"503": 3}),
    )
    assert summary.balanced
    summary.read = 9
    assert not summary.balanced


@pytest.mark.parametrize(
    ("change", "complete"),
    [
        ({}, True),
        ({"skipped": Counter({"page": 1})}, True),  # skipping is not failing
        ({"invalid": Counter({"523": 1})}, False),
        ({"rejected": Counter({"512": 1})}, False),
        ({"failed": Counter({"503": 1})}, False),
        ({"unreadable": 1}, False),
        ({"interrupted": True}, False),
    ],
)
def test_a_run_is_complete_when_every_matched_record_went_through(
    change: dict[str, object], complete: bool
) -> None:
    summary = Summary(read=1, accepted=1)
    for name, value in change.items():
        setattr(summary, name, value)
    assert summary.complete is complete


def test_elapsed_seconds_are_rounded_to_milliseconds() -> None:
    assert Summary(elapsed=1.23456).as_dict()["elapsed_seconds"] == 1.235


class FullDisk(io.BytesIO):
    name = "/mnt/full/report.ndjson"

    def write(self, data: object) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["report", "dead_letters"])
def test_an_output_that_cannot_be_written_is_kept_as_the_error_and_counting_goes_on(
    where: str,
) -> None:
    ledger = Ledger(**{where: FullDisk()})  # type: ignore[arg-type]
    for _ in range(2):
        ledger.settle(track(ledger, 1), REJECTED)
    assert ledger.summary.rejected.total() == 2
    assert ledger.output_error is not None
    what = "report" if where == "report" else "dead-letter file"
    assert isinstance(ledger.output_error, DiskFull)  # its records not sent are `disk-full`
    assert str(ledger.output_error) == (
        f"/mnt/full/report.ndjson: cannot write the {what} (No space left on device); "
        "the run stopped before its end"
    )


@pytest.mark.parametrize("where", ["report", "dead_letters"])
def test_an_output_that_cannot_be_flushed_is_the_error(where: str) -> None:
    ledger = Ledger(**{where: FullDisk()})  # type: ignore[arg-type]
    ledger.flush()
    assert ledger.output_error is not None
    what = "report" if where == "report" else "dead-letter file"
    assert f"cannot write the {what} (No space left on device)" in str(ledger.output_error)
    ledger.flush()  # the output is dropped: no second error


# -- outputs committed with the state -----------------------------------------------

RUN_STEPS = st.lists(st.sampled_from(["line", "line", "line", "checkpoint"]), max_size=12)
RUN = st.tuples(
    RUN_STEPS,
    st.sampled_from(["kill", "kill-mid-line", "end", "end-then-another-run-appends"]),
)


@given(runs=st.lists(RUN, min_size=1, max_size=6), buffered=st.sampled_from([1, 64, 1 << 20]))
def test_a_report_holds_what_the_state_committed_whatever_the_kills_and_resumes(
    tmp_path_factory: pytest.TempPathFactory,
    runs: list[tuple[list[str], str]],
    buffered: int,
) -> None:
    """The model, from the README: a run that resumes finds in the report what earlier
    runs wrote up to their last checkpoint, then what other runs appended after a run
    that ended (not killed); never half a line."""
    where = tmp_path_factory.mktemp("outputs")
    path = where / "report.ndjson"
    state = StateFile(where / "state.db")
    expected: list[bytes] = []
    number = 0
    try:
        for run, (steps, end) in enumerate(runs):
            output = Output(path, "report", append=True)
            output_buffer(output, buffered)
            state.take_outputs([output])
            assert path.read_bytes().splitlines() == expected, f"run {run} starts"
            written: list[bytes] = []
            for step in steps:
                if step == "line":
                    number += 1
                    line = orjson.dumps({"run": run, "record": number})
                    output.write(line + b"\n")
                    written.append(line)
                else:
                    output.flush()
                    state.checkpoint([], {output.key: output.length})
                    expected += written
                    written = []
            if end.startswith("kill"):
                os.close(output._fd)  # what was held is lost, as with kill -9
                if end == "kill-mid-line":
                    with path.open("ab") as out:
                        out.write(b'{"run": %d, "rec' % run)
                continue
            output.flush()  # lines after the last checkpoint: a stopping run's last words
            state.close_outputs({output.key: output.length})
            output.close()
            if end == "end-then-another-run-appends":
                other = Output(path, "report", append=True)  # a run without this state
                other.write(b'{"other": %d}\n' % run)
                other.close()
                expected.append(b'{"other": %d}' % run)
        last = Output(path, "report", append=True)
        state.take_outputs([last])
        last.close()
        assert path.read_bytes().splitlines() == expected
    finally:
        state.close()


def output_buffer(output: Output, size: int) -> None:
    """How much an Output holds before it writes (small: lines reach the file between
    checkpoints, as they do in a long run)."""
    original = output.write

    def write(data: bytes) -> int:
        written = original(data)
        if output._held >= size:
            output.flush()
        return written

    output.write = write  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("tail", "note"),
    [
        # A half-written last line (a run stopped while writing it) is cut off first.
        (
            b'{"li',
            "{path}: its last line was incomplete (4 bytes, left by a run stopped while "
            "writing it); cut off before appending",
        ),
        (b"", None),  # a report of whole lines is appended to without a note
    ],
)
def test_a_report_is_appended_to_after_its_last_whole_line(
    tmp_path: Path, tail: bytes, note: str | None
) -> None:
    path = tmp_path / "report.ndjson"
    path.write_bytes(b'{"line": 1}\n{"line": 2}\n' + tail)
    ledger = Ledger(report=Output(path, "report", append=True))
    ledger.invalid(Origin("f", 3), b"x", None, Invalid("malformed-json", "not JSON"))
    ledger.flush()
    lines = path.read_bytes().splitlines()
    assert lines[:2] == [b'{"line": 1}', b'{"line": 2}']
    assert orjson.loads(lines[2])["line"] == 3 and len(lines) == 3
    assert ledger.summary.notes == ([] if note is None else [note.format(path=path)])


class ShortWrites:
    """os.write that writes `room` bytes in all, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.room <= 0:
            raise OSError(28, "No space left on device")
        done = REAL_WRITE(fd, data[: self.room])
        self.room -= done
        return done


REAL_WRITE = os.write


@given(room=st.integers(0, 400), lines=st.lists(st.integers(0, 30), min_size=1, max_size=12))
def test_a_write_that_fails_part_way_leaves_the_file_on_a_whole_line(
    tmp_path_factory: pytest.TempPathFactory, room: int, lines: list[int]
) -> None:
    path = tmp_path_factory.mktemp("full") / "report.ndjson"
    path.write_bytes(b"before\n")
    output = Output(path, "report", append=True)
    data = [b"x" * n + b"\n" for n in lines]
    for line in data:
        output.write(line)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", ShortWrites(room))
        try:
            output.flush()
        except OSError as exc:
            assert exc.errno == 28
    content = path.read_bytes()
    # What fitted, cut back to its last whole line: the lines in order, none broken.
    fitted = b"".join(data)[:room]
    whole = fitted[: fitted.rfind(b"\n") + 1]
    assert content == b"before\n" + whole
    assert output.length == len(content)


def test_a_pipe_or_a_device_is_written_as_it_comes(tmp_path: Path) -> None:
    """--report /dev/stderr or a named pipe: no length to keep, nothing to cut."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        output = Output(fifo, "report", append=True)
        output.write(b'{"line": 1}\n')
        output.cut(0, None)
        output.close()
        assert os.read(reader, 100) == b'{"line": 1}\n'
    finally:
        os.close(reader)


# -- unreadable files, `--validate fix` counting, dead letters ---------------------------
# Paths the tests above left to other test files; mutation testing (`make mutate
# MUTATE=ledger`) showed them unchecked. Expectations are written by hand from the README
# (Outputs, Summary, `--validate fix`).


def lines(output: io.BytesIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in output.getvalue().splitlines()]


def test_each_unreadable_file_is_counted_noted_and_reported_with_line_0() -> None:
    """README: `--report` gets one line per unreadable file, with line 0; the summary
    counts `unreadable_files` and the notes say which file and why."""
    report = io.BytesIO()
    ledger = Ledger(report=report, run="2026-11-25T02:15:00.412Z")
    ledger.unreadable(
        Origin("day1.ndjson.gz", 0), Invalid("unreadable", "truncated gzip", Stage.PARSE)
    )
    ledger.unreadable(Origin("day2.ndjson.gz", 0), Invalid("unreadable", "read error", Stage.PARSE))
    assert ledger.summary.unreadable == 2
    assert ledger.summary.as_dict()["unreadable_files"] == 2
    assert ledger.summary.notes == [
        "day1.ndjson.gz: truncated gzip",
        "day2.ndjson.gz: read error",
    ]
    first, second = lines(report)
    assert first == {
        "source": "day1.ndjson.gz",
        "line": 0,
        "part": 0,
        "messageId": None,
        "identity": None,
        "stage": "parse",
        "code": "unreadable",
        "message": "truncated gzip",
        "run": "2026-11-25T02:15:00.412Z",
    }
    assert (second["source"], second["message"]) == ("day2.ndjson.gz", "read error")
    # An unreadable file is not a record: read and the outcomes stay where they were.
    assert ledger.summary.read == 0 and ledger.summary.balanced
    assert not ledger.summary.complete


def test_an_unreadable_file_without_a_report_is_still_counted_and_noted() -> None:
    ledger = Ledger()
    ledger.unreadable(
        Origin("day1.ndjson.gz", 0), Invalid("unreadable", "truncated gzip", Stage.PARSE)
    )
    assert ledger.summary.unreadable == 1
    assert ledger.summary.notes == ["day1.ndjson.gz: truncated gzip"]


def test_every_validate_fix_is_counted_by_code_with_or_without_a_report() -> None:
    """README (`--validate fix`): a record whose bad field was left out counts as
    accepted, and `fixed_by_code` counts each field left out."""
    report = io.BytesIO()
    with_report = Ledger(report=report, run="r1")
    without = Ledger()
    for ledger in (with_report, without):
        ledger.fixed(Origin("f", 3), {"userId": "u3"}, "Phone", "516", "not a phone number")
        ledger.fixed(Origin("f", 4), {"userId": "u4"}, "Phone", "516", "not a phone number")
        ledger.fixed(Origin("f", 5), {"anonymousId": "a5"}, "Email", "517", "not an email")
        assert ledger.summary.fixed == Counter({"516": 2, "517": 1})
        assert ledger.summary.as_dict()["fixed_by_code"] == {"516": 2, "517": 1}
        # Fixing a field is not an outcome: the record's own verdict counts it.
        assert ledger.summary.accepted == 0 and ledger.summary.rejected.total() == 0
    third = lines(report)[2]
    assert third == {
        "source": "f",
        "line": 5,
        "part": 0,
        "messageId": None,
        "identity": None,
        "objectId": "a5",
        "stage": "validate",
        "code": "517",
        "message": "not an email",
        "run": "r1",
        "field": "Email",
    }


def test_a_record_known_by_its_message_alone_goes_to_the_dead_letters_as_json() -> None:
    """`--failed` holds each record with a final failure, one JSON line each, so that
    `ctsync upload FAILED_FILE` re-drives it: a record whose input line was not kept
    (a decoded message, e.g. from a JSON array) is written from its message."""
    dead, report = io.BytesIO(), io.BytesIO()
    ledger = Ledger(dead_letters=dead, report=report)
    message = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    ledger.invalid(Origin("users.json", 1), None, message, Invalid("523", "no identity"))
    assert dead.getvalue().endswith(b"\n")
    assert [orjson.loads(line) for line in dead.getvalue().splitlines()] == [message]
    assert lines(report)[0]["identity"] == "u1"


def test_a_record_without_line_or_message_is_reported_but_has_no_dead_letter() -> None:
    """Nothing to re-drive (an undecodable line not kept): no empty dead letter, but the
    report still says what happened, and the record is counted."""
    dead, report = io.BytesIO(), io.BytesIO()
    ledger = Ledger(dead_letters=dead, report=report)
    ledger.invalid(
        Origin("f", 9), None, None, Invalid("malformed-json", "not valid JSON", Stage.PARSE)
    )
    assert dead.getvalue() == b""
    assert lines(report)[0]["code"] == "malformed-json" and lines(report)[0]["line"] == 9
    assert ledger.summary.invalid == Counter({"malformed-json": 1})


def test_a_record_with_its_line_goes_to_the_dead_letters_as_that_line() -> None:
    dead = io.BytesIO()
    ledger = Ledger(dead_letters=dead)
    raw = b'{"userId": "u1",  "type": "identify"}'
    ledger.invalid(Origin("f", 1), raw, {"userId": "u1"}, Invalid("523", "no identity"))
    assert dead.getvalue() == raw + b"\n"


def test_a_report_full_at_a_fix_or_an_unreadable_file_names_the_report() -> None:
    """README (exit 2): an output that cannot be written stops the run, and the error
    says which output: here the report, at a `--validate fix` line or a file's line."""
    expected = (
        "/mnt/full/report.ndjson: cannot write the report (No space left on device); "
        "the run stopped before its end"
    )
    fixing = Ledger(report=FullDisk())
    fixing.fixed(Origin("f", 3), {"userId": "u3"}, "Phone", "516", "not a phone number")
    assert str(fixing.output_error) == expected
    assert fixing.summary.fixed == Counter({"516": 1})  # counting goes on
    reading = Ledger(report=FullDisk())
    reading.unreadable(Origin("day1.ndjson.gz", 0), Invalid("unreadable", "truncated gzip"))
    assert str(reading.output_error) == expected
    assert reading.summary.unreadable == 1
