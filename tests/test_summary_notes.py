"""Issue 23, point 4: notes people read. What needs attention comes first, routine notes
are counted in one line each, and the line that stands for hidden notes counts them, the
same in the table and in `--json`."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from ctsync import api
from ctsync.cli import app
from ctsync.errors import AuthError
from ctsync.ledger import Summary
from ctsync.presets import Preset
from ctsync.records import Origin
from ctsync.run import RunOptions
from ctsync.settings import ClientSettings
from ctsync.summary import Routine
from tests.helpers import clean_env, identify

runner = CliRunner()
SHOWN = 20  # README: at most 20 note lines, the last counting the rest

# A count drawn evenly, so that runs past the 20 lines are common (a list strategy
# mostly draws short lists).
notes = st.integers(0, 40).map(lambda n: [f"{i}.txt: skipped, empty" for i in range(n)])
routine = st.dictionaries(st.sampled_from(list(Routine)), st.integers(0, 3000))


@given(notes, routine, st.integers(0, 50), st.integers(0, 50))
def test_the_shown_lines_hide_nothing_silently(
    important: list[str], counts: dict[Routine, int], gender: int, identity: int
) -> None:
    summary = Summary(notes=list(important), routine=Counter(counts))
    summary.invalid.update({"514": gender, "523": identity})
    lines = summary.note_lines()
    # Written from the issue: the rules' line, then the notes, then one line per routine
    # kind with a count; nothing past 20 lines, the 20th counting what it replaces.
    expected = [f"{gender:,} records were refused" for _ in range(1 if gender else 0)]
    expected += important
    expected += [f"{n:,} " for n in counts.values() if n]
    assert len(lines) == min(len(expected), SHOWN)
    if len(expected) > SHOWN:
        assert lines[-1] == f"... and {len(expected) - SHOWN + 1:,} more notes"
        shown = lines[:-1]
    else:
        shown = lines
    for line, start in zip(shown, expected, strict=False):
        assert line.startswith(start)
    assert summary.as_dict()["notes"] == lines


def test_routine_notes_read_as_one_counted_line() -> None:
    summary = Summary(routine=Counter({Routine.FINISHED_EARLIER: 12, Routine.DONE_EARLIER: 1}))
    assert summary.note_lines() == [
        "12 inputs finished in an earlier run; skipped",
        "1 record done in an earlier run was skipped",
    ]


def test_a_refused_gender_points_at_validate_fix_in_text_and_json(tmp_path: Path) -> None:
    lines = [
        {"type": "identify", "userId": f"u{i}", "traits": {"gender": "non-binary"}}
        for i in range(3)
    ] + [{"type": "identify", "userId": "ok", "traits": {"gender": "F"}}]
    export = tmp_path / "e.ndjson"
    export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in lines))
    base = ["upload", str(export), "--dry-run", "--preset", "classic"]
    as_json = runner.invoke(app, [*base, "--json"], env=clean_env())
    assert as_json.exit_code == 1, as_json.output
    summary = orjson.loads(as_json.stdout)
    assert summary["invalid_by_code"] == {"514": 3}
    (hint,) = [n for n in summary["notes"] if "--validate fix" in n]
    assert hint.startswith("3 records were refused")
    text = runner.invoke(app, base, env=clean_env(), terminal_width=200)
    assert "note: 3 records were refused" in text.stderr
    fixed = runner.invoke(app, [*base, "--validate", "fix", "--json"], env=clean_env())
    assert fixed.exit_code == 0 and orjson.loads(fixed.stdout)["accepted"] == 4
    assert not [n for n in orjson.loads(fixed.stdout)["notes"] if "--validate fix" in n]


def test_dropped_tokens_lead_many_skipped_files(tmp_path: Path) -> None:
    day = tmp_path / "day"
    day.mkdir()
    for i in range(25):  # 25 files that are not exports: the reader's count and 10 of them
        (day / f"notes{i:02}.txt").write_text("not an export\n")
    device = {"token": "t1", "type": "android"}  # and no anonymousId: not sendable
    track = {"type": "track", "userId": "u1", "event": "Opened", "context": {"device": device}}
    (day / "e.ndjson.gz").write_bytes(gzip.compress(orjson.dumps(track) + b"\n"))
    result = runner.invoke(
        app, ["upload", str(day), "--dry-run", "--preset", "classic", "--json"], env=clean_env()
    )
    shown = orjson.loads(result.stdout)["notes"]
    assert shown[0].startswith("1 device token was not sent"), shown
    assert shown[1] == "25 files skipped; the first 10 follow"
    assert len(shown) == 12 and not any("more notes" in note for note in shown)


def _upload(tmp_path: Path, settings: ClientSettings, answer: Any, messages: list[Any]) -> Summary:
    export = tmp_path / "e.ndjson"
    export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    job = api.UploadJob(paths=[str(export)], client=settings, preset=Preset.CLASSIC)
    return api.upload(job, transport=httpx.MockTransport(answer))


EVENTS = [
    {"type": "track", "userId": f"u{n}", "event": "Clicked", "timestamp": "2024-05-01T09:00:00Z"}
    for n in range(3)
]


def _run(command: str, tmp_path: Path, settings: ClientSettings, answer: Any) -> Summary:
    """Three records: events uploaded, or identities deleted."""
    if command == "upload":
        return _upload(tmp_path, settings, answer, EVENTS)
    identities = [(Origin("--identity", n), f"u{n}") for n in range(3)]
    job = api.DeleteJob(identities=identities, client=settings)
    return api.delete(job, transport=httpx.MockTransport(answer))


@pytest.mark.parametrize("command", ["upload", "delete"])
def test_records_that_never_connected_name_where_the_run_tried(
    tmp_path: Path, settings: ClientSettings, command: str
) -> None:
    """The table said only `failed 3 | connection: 3`; why was in the report, if any
    (and `ctsync delete` said nothing more, the last note found)."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed", request=request)

    summary = _run(command, tmp_path, settings, refuse)
    assert summary.failed == Counter({"connection": 3})
    assert (
        f"3 records could not be sent to {settings.base_url}: the connection failed before "
        "their requests were sent, after every retry; check --region (or --endpoint) and the "
        "network"
    ) in summary.note_lines()


@pytest.mark.parametrize("leading", ["deletions", "identifies"])
@pytest.mark.parametrize("status", [403, 404, 405])
def test_a_request_refused_as_a_whole_stops_and_the_next_run_sends_everything(
    tmp_path: Path, settings: ClientSettings, status: int, leading: str
) -> None:
    """A wrong --endpoint answered every request 404: the run went through the whole
    export, and with --state counted each record done, so fixing the endpoint and running
    again sent nothing (deletions first: an adversarial tester, after uploads were
    fixed). Now the first answer stops the run (exit 3), nothing counts as done, and the
    next run sends every record once."""
    export, state = tmp_path / "e.ndjson", tmp_path / "st"
    deletions = [{"type": "track", "event": "Delete User", "userId": f"d{i}"} for i in range(150)]
    identifies = [identify(f"u{i}") for i in range(30)]
    messages = deletions + identifies if leading == "deletions" else identifies + deletions
    export.write_bytes(b"".join(orjson.dumps(message) + b"\n" for message in messages))
    received: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="Not Found")

    def store(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        if "identity" in body:  # a deletion
            received.extend(f"deleted {user}" for user in body["identity"])
            return httpx.Response(200, json={"status": "success"})
        records = body["d"]
        received.extend(record["identity"] for record in records)
        return httpx.Response(200, json={"status": "success", "processed": len(records)})

    def job(report: Path | None = None) -> api.UploadJob:
        run, outputs = RunOptions(batch_size=10, lanes=1), api.Outputs(report=report)
        return api.UploadJob(
            paths=[str(export)], client=settings, state=state, run=run, outputs=outputs
        )

    report = tmp_path / "report.ndjson"
    with pytest.raises(AuthError) as stopped:
        api.upload(job(report), transport=httpx.MockTransport(refuse))
    assert stopped.value.exit_code == 3
    first = stopped.value.summary
    assert first is not None and first.accepted == 0
    assert first.read == sum((first.failed + first.skipped + first.invalid).values())
    assert first.failed == Counter({"interrupted": first.read})  # not the answer's code
    said = {orjson.loads(line)["message"] for line in report.read_bytes().splitlines()}
    assert said == {
        f"not stored: the run stopped when a request was answered HTTP {status} (a wrong "
        "endpoint, or an account without API access); a run that is let in sends it"
    }

    again = api.upload(job(), transport=httpx.MockTransport(store))
    expected = [f"u{i}" for i in range(30)] + [f"deleted d{i}" for i in range(150)]
    assert sorted(received) == sorted(expected)
    assert again.accepted == 180


def test_records_of_unknown_outcome_are_noted_in_the_run_that_lost_their_answer(
    tmp_path: Path, settings: ClientSettings
) -> None:
    """The README lists them among the notes; only a resumed run's were noted."""

    def stored_then_failed(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"status": "fail", "error": "internal"})

    summary = _upload(tmp_path, settings, stored_then_failed, EVENTS)
    assert summary.failed == Counter({"outcome-unknown": 3})
    (note,) = [line for line in summary.note_lines() if "may or may not be stored" in line]
    assert note.startswith("3 records may or may not be stored: their request went out")


def test_one_record_is_one_record_in_the_notes(tmp_path: Path, settings: ClientSettings) -> None:
    """ "1 records could not be sent" (a walkthrough)."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed", request=request)

    one = [(Origin("--identity", 1), "u1")]
    job = api.DeleteJob(identities=one, client=settings)
    assert api.delete(job, transport=httpx.MockTransport(refuse)).note_lines() == [
        f"1 record could not be sent to {settings.base_url}: the connection failed before "
        "their requests were sent, after every retry; check --region (or --endpoint) and the "
        "network",
    ]
