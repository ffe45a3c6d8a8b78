"""Inputs as a user meets them on the command line: Segment's folders, empty inputs,
outputs that keep earlier runs, and one reader behind every command."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from ctsync.cli import app
from ctsync.settings import ClientSettings
from tests.helpers import CleverTap, clean_env, identify, upload_with_state

runner = CliRunner()


def ndjson(*messages: object) -> bytes:
    return b"".join(orjson.dumps(m) + b"\n" for m in messages)


def segment_logs(root: Path) -> Path:
    """Segment's S3 layout: segment-logs/<source>/<day-epoch-ms>/<epoch-ms>.<id>.gz"""
    day = root / "segment-logs" / "Xa1b2" / "1732579200000"
    day.mkdir(parents=True)
    (day / "1732580000000.7f3a9c.gz").write_bytes(gzip.compress(ndjson(identify("u1"))))
    (day / "1732590000000.0b4d21.gz").write_bytes(gzip.compress(ndjson(identify("u2"))))
    (day / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00")
    (day / "_SUCCESS").write_bytes(b"")
    return root / "segment-logs"


def upload(*args: str) -> tuple[int, dict[str, object], str]:
    result = runner.invoke(app, ["upload", *args, "--dry-run", "--json"], env=clean_env())
    summary = orjson.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, summary, result.stderr


def test_segment_folder_is_read_and_stray_files_are_named_in_the_summary(tmp_path: Path) -> None:
    code, summary, _ = upload(str(segment_logs(tmp_path)))
    assert code == 0
    assert (summary["read"], summary["accepted"]) == (2, 2)
    day = tmp_path / "segment-logs" / "Xa1b2" / "1732579200000"
    assert summary["notes"] == [
        f"{day}/.DS_Store: skipped, not a Segment export (JSON starts with {{ or [; this "
        "starts with byte 0x00)",
        f"{day}/_SUCCESS: skipped, empty",
    ]


def test_a_folder_without_exports_exits_2_unless_allowed(tmp_path: Path) -> None:
    empty = tmp_path / "day"
    empty.mkdir()
    (empty / "_SUCCESS").write_bytes(b"")
    code, _, err = upload(str(empty))
    assert code == 2
    assert f"no input files in {empty}" in err
    assert "Traceback" not in err
    code, summary, _ = upload(str(empty), "--allow-empty")
    assert (code, summary["read"]) == (0, 0)


def test_include_and_exclude_on_the_command_line(tmp_path: Path) -> None:
    logs = segment_logs(tmp_path)
    assert upload(str(logs), "--include", "*/1732580000000.*")[1]["read"] == 1
    assert upload(str(logs), "--exclude", "*/1732580000000.*")[1]["read"] == 1
    code, _, err = upload(str(logs), "--include", "*.json")
    assert code == 2 and "no input files" in err
    # The filter is named: it, not the folder, may be what is wrong (a walkthrough). It
    # leaves out the day folder's four files, before any is looked into.
    assert "(4 files left out by --include/--exclude)" in err


def test_max_line_bytes_makes_a_long_line_one_invalid_record(tmp_path: Path) -> None:
    export = tmp_path / "e.ndjson"
    big = orjson.dumps({"type": "identify", "userId": "big", "traits": {"x": "y" * 5000}})
    export.write_bytes(ndjson(identify("u1")) + big + b"\n" + ndjson(identify("u2")))
    code, summary, _ = upload(str(export), "--max-line-bytes", "4096")
    assert code == 1
    assert summary["invalid_by_code"] == {"line-too-long": 1}
    assert (summary["read"], summary["accepted"]) == (3, 2)


def test_report_and_dead_letters_keep_what_earlier_runs_wrote(tmp_path: Path) -> None:
    export = tmp_path / "e.ndjson"
    export.write_bytes(b'{"type":"identify"\n' + ndjson(identify("u1")))
    report, failed = tmp_path / "report.ndjson", tmp_path / "failed.ndjson"
    for _ in range(2):
        code, _, _ = upload(str(export), "--report", str(report), "--failed", str(failed))
        assert code == 1
    lines = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    assert [(x["line"], x["code"]) for x in lines] == [(1, "malformed-json")] * 2
    assert lines[0]["run"] != lines[1]["run"]
    assert failed.read_bytes() == b'{"type":"identify"\n' * 2


def test_mappings_check_reads_samples_as_upload_does(tmp_path: Path) -> None:
    mapping = tmp_path / "m.json"
    shown = runner.invoke(app, ["mappings", "show", "--preset", "actions"])
    mapping.write_text(shown.stdout)
    samples = tmp_path / "samples.ndjson.gz"
    envelope = orjson.dumps({"batch": [identify("u1"), identify("u2")]})
    samples.write_bytes(
        gzip.compress(b"\xef\xbb\xbf" + envelope + b"\r\n" + ndjson(identify("u3")))
    )
    result = runner.invoke(app, ["mappings", "check", str(mapping), str(samples)])
    assert result.exit_code == 0, result.output
    fired = [line for line in result.stdout.splitlines() if "fires:" in line]
    assert fired == [
        "line 1: fires: Event Type is Identify",
        "line 1, message 2: fires: Event Type is Identify",
        "line 2: fires: Event Type is Identify",
    ]


@pytest.mark.parametrize("compress", [False, True])
def test_delete_from_reads_gzip_bom_and_crlf(tmp_path: Path, compress: bool) -> None:
    data = b"\xef\xbb\xbfu-1\r\nu-2\r\n"
    ids = tmp_path / "gdpr.txt"
    ids.write_bytes(gzip.compress(data) if compress else data)
    deleted, _ = delete_from(ids, tmp_path)
    assert deleted == ["u-1", "u-2"]


def delete_from(path: Path, tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    """The identities a dry run of `ctsync delete --from PATH` would delete (from every
    request it writes: deletions go out by lane), and its summary."""
    out = tmp_path / "requests.ndjson"
    result = runner.invoke(
        app,
        ["delete", "--from", str(path), "--dry-run", "--output", str(out), "--json"],
        env=clean_env(),
    )
    assert result.exit_code == 0, result.output
    bodies = [orjson.loads(line)["body"] for line in out.read_bytes().splitlines()]
    return sorted(i for body in bodies for i in body["identity"]), orjson.loads(result.stdout)


def test_delete_from_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    ids = tmp_path / "gdpr.txt"
    ids.write_bytes(b"u-1\nu-\xff2\n")
    result = runner.invoke(app, ["delete", "--from", str(ids), "--dry-run"], env=clean_env())
    assert result.exit_code == 2
    assert f"{ids}:2: not UTF-8 text" in result.stderr


def test_delete_from_a_folder_reads_every_identity_file_in_it(tmp_path: Path) -> None:
    # A folder of identity lists was looked into as exports: its text files were skipped
    # (so `no input files`) and only its JSON files read, each line deleted as one
    # identity.
    folder = tmp_path / "gdpr"
    (folder / "2024-05").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"u-1\nu-2\n")
    (folder / "2024-05" / "b.csv.gz").write_bytes(gzip.compress(b"u-3\r\n"))
    (folder / "_SUCCESS").write_bytes(b"")
    deleted, summary = delete_from(folder, tmp_path)
    assert deleted == ["u-1", "u-2", "u-3"]
    assert summary["read"] == 3


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b'{"userId":"u-9","type":"identify"}', "a JSON line, not an identity"),
        (b'  ["u-9"]', "a JSON line, not an identity"),
        (b"\x00\x01PK\x03", "control characters (binary data?), not an identity"),
    ],
)
@pytest.mark.parametrize("where", ["file", "folder"])
def test_delete_from_a_json_line_deletes_nothing(
    tmp_path: Path, line: bytes, said: str, where: str
) -> None:
    # An export (or a --report file, or binary data) given to --from by mistake: each of
    # its lines was deleted as one identity, the whole JSON text of the line.
    folder = tmp_path / "gdpr"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"u-1\n")
    export = folder / "b.ndjson"
    export.write_bytes(b"u-2\n" + line + b"\nu-3\n")
    out = tmp_path / "requests.ndjson"
    named = export if where == "file" else folder
    result = runner.invoke(
        app,
        ["delete", "--from", str(named), "--identity", "u-4", "--dry-run", "--output", str(out)],
        env=clean_env(),
    )
    assert result.exit_code == 2, result.output
    assert f"{export}:2: {said}" in result.stderr
    assert "nothing was deleted" in result.stderr
    assert not out.exists() or out.read_bytes() == b""


def test_delete_from_an_empty_folder_gives_no_advice_it_cannot_take(tmp_path: Path) -> None:
    # It said "pass --allow-empty if an empty input is expected": an upload option.
    empty = tmp_path / "gdpr"
    empty.mkdir()
    result = runner.invoke(app, ["delete", "--from", str(empty), "--dry-run"], env=clean_env())
    assert result.exit_code == 2
    assert result.stderr.strip() == f"ctsync: no input files in {empty}"


def test_file_names_that_are_not_utf8_are_written_escaped_not_crashed_on(
    tmp_path: Path, settings: ClientSettings
) -> None:
    # A file name's bytes need not be UTF-8 (Linux keeps any): Python reads them as lone
    # surrogates, which orjson and SQLite refuse, and the report line, the summary's note
    # and the state file crashed on them ("unexpected error", exit 70).
    folder = tmp_path / "day"
    folder.mkdir()
    name = os.fsdecode(b"y\xff.ndjson")
    (folder / name).write_bytes(ndjson(identify("u1")) + b"{bad\n")
    (folder / os.fsdecode(b"e\xfe.ndjson")).write_bytes(b"")
    report = tmp_path / "report.ndjson"
    code, summary, _ = upload(str(folder), "--report", str(report))
    assert code == 1  # one invalid record
    assert (summary["read"], summary["invalid"], summary["accepted"]) == (2, 1, 1)
    notes = summary["notes"]
    assert isinstance(notes, list) and f"{folder}/e\\xfe.ndjson: skipped, empty" in notes
    (line,) = report.read_bytes().splitlines()
    assert orjson.loads(line)["source"] == f"{folder}/y\\xff.ndjson"
    # With a state file: written, and a second run finds the file finished.
    server, state = CleverTap(), tmp_path / "state.db"
    first = upload_with_state(folder, state, server, settings)
    again = upload_with_state(folder, state, server, settings)
    assert (first.accepted, again.read, server.received) == (1, 0, ["u1"])
