"""The ledger's promises for the paths tests/test_ledger.py left to other test files:
unreadable files, `--validate fix` counting, dead letters of a record known only by its
decoded message. Mutation testing (`make mutate MUTATE=ledger`) showed these unchecked;
expectations are written by hand from the README (Outputs, Summary, `--validate fix`)."""

from __future__ import annotations

import io
from collections import Counter

import orjson

from ctsync.ledger import Ledger
from ctsync.records import Invalid, Origin, Stage


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


class FullDisk(io.BytesIO):
    name = "/mnt/full/report.ndjson"

    def write(self, data: object) -> int:
        raise OSError(28, "No space left on device")


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
