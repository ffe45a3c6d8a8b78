"""Issue 23, point 6: the rough edges a new user meets in the first hour, each tried
through the command line (Typer's runner) against what the issue and README promise."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pytest_httpx import HTTPXMock
from rich.console import Console
from typer.testing import CliRunner

from ctsync import cli
from ctsync.cli import app
from ctsync.console import RunView
from ctsync.ledger import Summary
from ctsync.run import DryRunSender
from ctsync.stopping import SendCounter
from tests.helpers import ACCOUNT_ID, BASE_URL, PASSCODE, clean_env

runner = CliRunner()
CREDENTIALS = {"CLEVERTAP_ACCOUNT_ID": ACCOUNT_ID, "CLEVERTAP_PASSCODE": PASSCODE}
REGIONS = ["eu1", "in1", "us1", "sg1", "aps3", "mec1", "sk1"]  # README's --region row
TRACK = {"type": "track", "userId": "u1", "event": "Clicked", "timestamp": "2024-01-01"}


def ndjson(path: Path, *messages: dict[str, Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    return path


# -- a file that is not an export, named on the command line --------------------------


def test_a_csv_named_directly_says_what_it_looks_like_one_line_per_file(tmp_path: Path) -> None:
    csv = tmp_path / "users.csv"
    csv.write_text("id,name,email\n1,Bo,bo@example.com\n")
    page = tmp_path / "export.gz"  # a proxy's error page saved under an export's name
    page.write_bytes(gzip.compress(b"<html><body>502 Bad Gateway</body></html>\n"))
    good = ndjson(tmp_path / "good.ndjson", TRACK)
    result = runner.invoke(
        app, ["upload", str(csv), str(good), str(page), "--dry-run", "--json"], env=clean_env()
    )
    assert result.exit_code == 1
    assert result.stdout == ""  # nothing was read, so no summary
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"ctsync: {csv}: not a Segment export")
    assert "'id,name,email'" in lines[0] and "CSV" in lines[0]
    assert lines[1].startswith(f"ctsync: {page}: ") and "HTML" in lines[1]
    assert "invalid" not in result.stderr and "malformed" not in result.stderr


def _zipped(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("export.ndjson", data)
    return out.getvalue()


EXPORT = orjson.dumps(TRACK) + b"\n"
# Random bytes with lines that start with a brace: what the old check took for JSON.
NOISE = bytes(random.Random(7).randrange(256) for _ in range(3000)).replace(b"\n", b"\n{")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (NOISE, "binary data"),
        (lzma.compress(EXPORT * 50), "xz data"),
        (bz2.compress(EXPORT * 50), "bzip2 data"),
        (_zipped(EXPORT * 50), "a zip archive"),
        (gzip.compress(gzip.compress(EXPORT * 50)), "gzip data inside gzip"),
    ],
)
def test_binary_and_other_compressions_named_directly_are_refused(
    tmp_path: Path, content: bytes, says: str
) -> None:
    """The README: a file that looks like binary data is refused before anything is
    read; random bytes were read as 18 invalid records, an xz export as malformed JSON."""
    path = tmp_path / "export"
    path.write_bytes(content)
    result = runner.invoke(app, ["upload", str(path), "--dry-run", "--json"], env=clean_env())
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"ctsync: {path}: not a Segment export: {says} (ctsync reads")


def test_an_export_with_a_line_of_binary_garbage_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "damaged.ndjson"
    path.write_bytes(b"\x00\xff\xfe\x9c garbage\n" + EXPORT * 3)
    result = runner.invoke(app, ["upload", str(path), "--dry-run", "--json"], env=clean_env())
    summary = orjson.loads(result.stdout)
    assert (summary["read"], summary["invalid"], summary["skipped"]) == (4, 1, 3)


def test_a_garbage_line_before_a_line_longer_than_the_look_ahead_is_still_read(
    tmp_path: Path,
) -> None:
    """Found by a review: no whole JSON line in the first 64 KiB, the second line being
    longer (a cut first line from `split -b`, then a big message): not binary data."""
    big = orjson.dumps({**TRACK, "properties": {"blob": "x" * 70_000}}) + b"\n"
    path = tmp_path / "chunk.ndjson"
    path.write_bytes(b"\x00\x9c cut\n" + big + EXPORT * 2)
    result = runner.invoke(
        app,
        ["upload", str(path), "--dry-run", "--json", "--max-line-bytes", "200000"],
        env=clean_env(),
    )
    summary = orjson.loads(result.stdout)
    assert (summary["read"], summary["invalid"], summary["skipped"]) == (4, 1, 3)


def test_a_dead_letter_file_with_a_broken_first_line_is_still_read(tmp_path: Path) -> None:
    failed = tmp_path / "failed.ndjson"
    failed.write_bytes(b"not json at all\n" + orjson.dumps(TRACK) + b"\n")
    result = runner.invoke(
        app, ["upload", str(failed), "--dry-run", "--json", "--preset", "classic"], env=clean_env()
    )
    summary = orjson.loads(result.stdout)
    assert (summary["read"], summary["accepted"], summary["invalid"]) == (2, 1, 1)


# -- --region ------------------------------------------------------------------------


@pytest.mark.parametrize("region", REGIONS)
def test_a_region_typo_suggests_the_nearest_region(tmp_path: Path, region: str) -> None:
    export = ndjson(tmp_path / "e.ndjson", TRACK)
    typo = region.rstrip("0123456789")  # `in` for in1: the dashboard URL's letters
    flag = runner.invoke(
        app, ["upload", str(export), "--region", typo], env=clean_env(**CREDENTIALS)
    )
    assert flag.exit_code == 2
    error = flag.stderr.strip().splitlines()[-1]
    assert f"did you mean {region}?" in error
    assert "'--region'" in error and "CLEVERTAP_REGION" not in error
    assert "Value error" not in flag.stderr
    variable = runner.invoke(
        app, ["upload", str(export)], env=clean_env(CLEVERTAP_REGION=typo.upper(), **CREDENTIALS)
    )
    assert variable.exit_code == 2
    error = variable.stderr.strip().splitlines()[-1]
    assert "CLEVERTAP_REGION" in error and "'--region'" not in error
    assert f"did you mean {region}?" in error


def test_a_region_in_any_case_is_taken(tmp_path: Path, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        url="https://in1.api.clevertap.com/1/upload", json={"status": "success", "processed": 1}
    )
    export = ndjson(tmp_path / "e.ndjson", TRACK)
    result = runner.invoke(
        app,
        ["upload", str(export), "--region", "IN1", "--preset", "classic"],
        env=clean_env(**CREDENTIALS),
    )
    assert result.exit_code == 0, result.output


# -- a 401's --json -----------------------------------------------------------------


def test_the_json_of_a_refused_run_shows_its_requests_and_concurrency(
    tmp_path: Path, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{BASE_URL}/1/upload",
        status_code=401,
        json={"status": "fail", "error": "Invalid credentials", "code": 401},
        is_reusable=True,
    )
    export = ndjson(tmp_path / "e.ndjson", *[{**TRACK, "userId": f"u{i}"} for i in range(5)])
    result = runner.invoke(
        app,
        ["upload", str(export), "--json", "--preset", "classic", "--batch-size", "1"],
        env=clean_env(**CREDENTIALS),
    )
    assert result.exit_code == 3
    summary = orjson.loads(result.stdout)
    sent = len(httpx_mock.get_requests())
    assert sent >= 1 and summary["requests"] == sent
    upload = summary["concurrency"]["upload"]
    assert upload["mode"] == "auto" and upload["limit"] == 15
    assert 1 <= upload["peak_in_flight"] <= sent


# -- options that contradict each other -------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--progress", "--quiet"], "--progress"),
        (["--progress", "-q"], "--quiet"),
        (["--output", "-", "--json"], "--output - and --json would both write to stdout"),
        # (the walkthrough: report lines mixed into the --json summary)
        (["--report", "-", "--json"], "--report - and --json would both write to stdout"),
        (["--failed", "-", "--json"], "--failed - and --json would both write"),
        # (without --json, the message does not suggest leaving it out: a review)
        (
            ["--report", "-", "--failed", "-"],
            "--failed - would both write to stdout: give files instead of -",
        ),
        (["--output", "-", "--report", "-", "--json"], "would all write to stdout"),
    ],
)
def test_contradicting_output_options_are_refused_in_one_line(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    export = ndjson(tmp_path / "e.ndjson", TRACK)
    result = runner.invoke(app, ["upload", str(export), "--dry-run", *flags], env=clean_env())
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("ctsync: ") and named in line
    assert ("--json" in line) == ("--json" in flags)


def test_a_passcode_given_twice_is_refused(tmp_path: Path) -> None:
    """`--passcode-file` silently won over `--passcode` (a 401 with no hint why); the
    variable CLEVERTAP_PASSCODE beside a file is a default the file overrides."""
    export = ndjson(tmp_path / "e.ndjson", TRACK)
    secret = tmp_path / "passcode"
    secret.write_text("from-the-file\n")
    args = ["upload", str(export), "--account-id", "A", "--passcode-file", str(secret)]
    result = runner.invoke(app, [*args, "--passcode", "typed"], env=clean_env())
    assert result.exit_code == 2
    assert result.stderr.startswith("ctsync: --passcode and --passcode-file both give")
    assert "typed" not in result.output and "from-the-file" not in result.output


def test_delete_with_only_an_empty_identity_is_refused(tmp_path: Path) -> None:
    """`ctsync delete --identity "$ID"` with ID unset exited 0 having deleted nothing;
    with --from naming profiles it goes on (a review)."""
    for values in ([""], ["", "  "]):
        args = [arg for value in values for arg in ("--identity", value)]
        result = runner.invoke(app, ["delete", *args, "--dry-run"], env=clean_env())
        assert result.exit_code == 2
        assert result.stderr.strip() == "ctsync: --identity is empty: name the profiles to delete"
    ids = tmp_path / "ids.txt"
    ids.write_text("u1\nu2\n")
    args = ["delete", "--identity", "", "--from", str(ids), "--dry-run", "--json"]
    result = runner.invoke(app, args, env=clean_env())
    assert orjson.loads(result.stdout)["accepted"] == 2


# -- a file a run would use twice ------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        # An output that is an input: emptied before it is read (--output), or fed its
        # own dead letters and report lines, read again without end (--failed, --report).
        (["--dry-run", "--output", "{input}"], "--output {input} is also an input"),
        (["--dry-run", "--failed", "{input}"], "--failed {input} is also an input"),
        (["--dry-run", "--report", "{link}"], "--report {link} is also an input"),
        # Two outputs in one file: after a kill each is cut back to its own length.
        (["--dry-run", "--report", "{out}", "--failed", "{out}"], "--report and --failed"),
        (["--report", "{out}", "--state", "{out}"], "--report and --state"),
        (["--failed", "{out}", "--state", "{input}"], "--state {input} is also an input"),
    ],
)
def test_a_file_named_twice_is_refused_before_anything_is_touched(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    export = ndjson(tmp_path / "e.ndjson", TRACK, {**TRACK, "userId": ""})
    link = tmp_path / "link.ndjson"
    link.symlink_to(export)
    names = {"input": str(export), "link": str(link), "out": str(tmp_path / "out.txt")}
    before = export.read_bytes()
    result = runner.invoke(
        app,
        ["upload", str(export), *(flag.format(**names) for flag in flags)],
        env={**clean_env(), **CREDENTIALS},
    )
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("ctsync: ") and says.format(**names) in line
    assert export.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.ndjson", "link.ndjson"]


def test_outputs_sent_to_one_device_are_not_one_file(tmp_path: Path) -> None:
    export = ndjson(tmp_path / "e.ndjson", TRACK, {**TRACK, "userId": ""})
    result = runner.invoke(
        app,
        [
            *("upload", str(export), "--dry-run", "--json", "--preset", "classic"),
            *("--report", os.devnull, "--failed", os.devnull),
        ],
        env=clean_env(),
    )
    assert result.exit_code == 1, result.output  # one invalid record: not complete
    assert orjson.loads(result.stdout)["invalid"] == 1


@pytest.mark.parametrize("paths", [[], ["-"]])
def test_a_mapping_and_the_input_both_on_stdin_are_refused(paths: list[str]) -> None:
    """`ctsync mappings show | ctsync upload --mapping -` read the mapping and then an
    empty input: 0 records, exit 0, nothing said."""
    mapping = runner.invoke(app, ["mappings", "show"]).stdout
    result = runner.invoke(
        app, ["upload", *paths, "--mapping", "-", "--dry-run"], input=mapping, env=clean_env()
    )
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("ctsync: --mapping - and the input both read standard input")


@pytest.mark.parametrize("files", [9, 10, 11, 60])
def test_files_skipped_in_a_folder_are_counted_whatever_their_number(
    tmp_path: Path, files: int
) -> None:
    """60 CSVs beside an export said "... and 2 more notes": the count of files skipped
    was itself hidden by the summary's cut at 20 notes."""
    folder = tmp_path / "exports"
    folder.mkdir()
    for n in range(files):
        (folder / f"f{n:02}.csv").write_text("a,b\n1,2\n")
    ndjson(folder / "good.ndjson", TRACK)
    result = runner.invoke(app, ["upload", str(folder), "--dry-run", "--json"], env=clean_env())
    notes = orjson.loads(result.stdout)["notes"]
    named = [note for note in notes if re.match(r".*f\d\d\.csv: skipped", note)]
    assert len(named) == min(files, 10)
    if files > 10:
        assert notes[0] == f"{files} files skipped; the first 10 follow"
    assert not any("more notes" in note for note in notes)


def test_a_preset_and_a_mapping_file_together_are_refused(tmp_path: Path) -> None:
    """The mapping file replaces the preset: `--preset classic --mapping m.json` ran the
    mapping file and said nothing of the preset given."""
    mapping = tmp_path / "m.json"
    mapping.write_text(runner.invoke(app, ["mappings", "show"]).stdout)
    export = ndjson(tmp_path / "e.ndjson", TRACK)
    given_ = ["upload", str(export), "--dry-run", "--mapping", str(mapping)]
    result = runner.invoke(app, [*given_, "--preset", "classic"], env=clean_env())
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("ctsync: --mapping replaces the preset: give --preset or --mapping")
    assert runner.invoke(app, given_, env=clean_env()).exit_code == 0  # the mapping alone


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"[]"])
def test_an_empty_file_named_on_its_own_is_said_empty(tmp_path: Path, content: bytes) -> None:
    """Read 0 and exit 0 with no word, where the same file in a folder is 'skipped,
    empty'."""
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(content)
    export = ndjson(tmp_path / "e.ndjson", TRACK)
    result = runner.invoke(
        app, ["upload", str(empty), str(export), "--dry-run", "--json"], env=clean_env()
    )
    assert result.exit_code == 0
    summary = orjson.loads(result.stdout)
    assert summary["read"] == 1
    assert summary["notes"] == [f"{empty}: empty; nothing was read"]


def test_an_empty_stdin_is_said_empty() -> None:
    """`zcat missing.gz | ctsync upload -` exited 0 with read 0 and no word: in a script
    without pipefail the producer's failure went unseen (the walkthrough). Blank lines
    are not an empty input (a review)."""
    for stdin, notes in (
        (
            b"",
            [
                "standard input was empty; nothing was read (from a pipe: did the program "
                "before it fail?)"
            ],
        ),
        (b"\n\n  \n", []),
    ):
        args = ["upload", "-", "--dry-run", "--json"]
        result = runner.invoke(app, args, input=stdin, env=clean_env())
        assert result.exit_code == 0
        summary = orjson.loads(result.stdout)
        assert summary["read"] == 0
        assert summary["notes"] == notes


# -- the plain progress line ------------------------------------------------------------

counts = st.integers(0, 10_000_000)


def _read_back(short: str) -> float:
    """A number as the progress line writes it (`9,999`, `99.9k`, `999k`, `10.0M`)."""
    scale = {"k": 1e3, "M": 1e6}.get(short[-1], 1)
    return float(short.rstrip("kM").replace(",", "")) * scale


@given(counts, counts, counts, counts, counts, counts, st.integers(0, 10**10), st.booleans())
def test_the_plain_progress_line_fits_80_columns_up_to_10m_records(
    read: int,
    sent: int,
    accepted: int,
    invalid: int,
    skipped: int,
    failed: int,
    size: int,
    known: bool,
) -> None:
    summary = Summary(read=read, accepted=accepted)
    summary.invalid["523"], summary.skipped["page"], summary.failed["aborted"] = (
        invalid,
        skipped,
        failed,
    )
    view = RunView(Console(width=200), size if known else None)
    counter = SendCounter(DryRunSender())
    counter.records = sent
    view.sending(counter)
    view.update(summary, size // 2)
    line = "ctsync: " + view.status()
    assert len(line) <= 80, line
    # Every count not 0 is there, to within the rounding of its short form (<= 0.5%);
    # read and accepted always; sent unless invalid, skipped and failed all need room.
    always = {"read", "accepted"} | ({"sent"} if not (invalid and skipped and failed) else set())
    for name, count in [
        ("read", read),
        ("sent", sent),
        ("accepted", accepted),
        ("invalid", invalid),
        ("skipped", skipped),
        ("failed", failed),
    ]:
        found = re.search(rf"\b{name} ([\d,.]+[kM]?)(?:\s|$)", line)
        if name == "sent" and name not in always:
            continue  # there if it fits
        if count == 0 and name not in always:
            assert found is None
            continue
        assert found is not None, (name, line)
        assert abs(_read_back(found.group(1)) - count) <= max(0.005 * count, 0.5), line


# -- delete's question ----------------------------------------------------------------------


def test_delete_names_account_and_endpoint_and_no_exits_1(
    monkeypatch: pytest.MonkeyPatch, httpx_mock: HTTPXMock
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(cli, "_stdin_is_terminal", lambda: True)

    def answer_no(question: str) -> str:
        asked.append(question)
        return "n\n"

    monkeypatch.setattr(cli, "_ask", answer_no)
    result = runner.invoke(
        app,
        ["delete", "--identity", "u-1", "--identity", "u-2", "--region", "us1"],
        env=clean_env(**CREDENTIALS),
    )
    assert result.exit_code == 1
    said = result.stderr.replace("\n", " ")
    assert f"2 identities from account {ACCOUNT_ID} at https://us1.api.clevertap.com" in said
    assert asked and "nothing deleted" in result.stderr
    assert httpx_mock.get_requests() == []


# -- mappings check ---------------------------------------------------------------------


def test_mappings_check_exits_1_when_a_record_would_be_refused(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["mappings", "show", "--preset", "classic"])
    mapping = tmp_path / "classic.json"
    mapping.write_text(shown.stdout)
    good = {"type": "identify", "userId": "u1", "traits": {"phone": "+14155550007"}}
    clean = ndjson(tmp_path / "clean.ndjson", good)
    ok = runner.invoke(app, ["mappings", "check", str(mapping), str(clean)])
    assert ok.exit_code == 0, ok.output
    bad = ndjson(tmp_path / "bad.ndjson", good, {**good, "traits": {"phone": "(415) 555"}})
    refused = runner.invoke(app, ["mappings", "check", str(mapping), str(bad)])
    assert refused.exit_code == 1, refused.output
    assert "rule 516" in refused.stdout


def test_mappings_check_usage_shows_file_not_a_set() -> None:
    result = runner.invoke(app, ["mappings", "check", "--help"])
    usage = result.stdout.splitlines()[0]
    assert usage.endswith("check [OPTIONS] FILE [EVENTS]"), usage


# -- the report's id of an anonymous record -----------------------------------------------


def test_the_report_names_an_anonymous_records_id_object_id(tmp_path: Path) -> None:
    anonymous = {"type": "track", "anonymousId": "anon-7", "event": "App Launched"}
    known = {**anonymous, "userId": "u-7"}
    export = ndjson(tmp_path / "e.ndjson", anonymous, known)
    report = tmp_path / "report.ndjson"
    args = ["upload", str(export), "--dry-run", "--preset", "classic", "--report", str(report)]
    result = runner.invoke(app, args, env=clean_env())
    assert result.exit_code == 1, result.output  # App Launched is a CleverTap system event
    lines = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    who = Counter((line["identity"], line.get("objectId")) for line in lines)
    assert who == {(None, "anon-7"): 1, ("u-7", None): 1}


# -- the version ---------------------------------------------------------------------------


def test_the_version_is_0_2_0_everywhere_with_a_changelog() -> None:
    root = Path(__file__).resolve().parents[1]
    result = runner.invoke(app, ["--version"])
    assert result.stdout == "ctsync 0.2.0\n"
    assert re.search(r'(?m)^version = "0\.2\.0"$', (root / "pyproject.toml").read_text())
    headings = re.findall(r"(?m)^## (\S+)", (root / "CHANGELOG.md").read_text())
    # What is on main and not released yet is listed first, under "Unreleased".
    released = [h for h in headings if h != "Unreleased"]
    assert released[:2] == ["0.2.0", "0.1.0"]
    assert "Unreleased" not in headings[1:]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_numeric_timestamp_past_the_calendar_is_one_invalid_record_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """`"timestamp": -1e22` (or 1e300) is no time: the record is refused with 525 and
    the run goes on; it used to end the whole run with exit 70 (found by an adversarial
    test: the `ts` did not fit a 64-bit integer when the request was encoded)."""
    monkeypatch.setenv("CTSYNC_WORKER_START_AFTER", "0")
    lines = [
        {"type": "track", "event": "E", "userId": "u1", "timestamp": -1e22},
        {"type": "identify", "userId": "u2", "traits": {"a": 1}, "timestamp": 1e300},
        {"type": "track", "event": "E", "userId": "u3", "timestamp": 1714521600},
    ]
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    result = runner.invoke(
        app,
        ["upload", str(export), "--preset", "classic", "--dry-run", "--json", "--workers",
         workers],
        env=clean_env(),
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # some records did not go through
    summary = orjson.loads(result.stdout)
    assert summary["error"] is None
    assert (summary["read"], summary["invalid"], summary["accepted"]) == (3, 2, 1)
    assert summary["invalid_by_code"] == {"525": 2}
