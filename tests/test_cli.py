"""The command line, through Typer's runner and as a real subprocess."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pytest_httpx import HTTPXMock
from typer.testing import CliRunner

from ctsync.cli import app
from tests.helpers import ACCOUNT_ID, BASE_URL, PASSCODE, confirm_every_record

runner = CliRunner()
CREDENTIALS = {"CLEVERTAP_ACCOUNT_ID": ACCOUNT_ID, "CLEVERTAP_PASSCODE": PASSCODE}
SUMMARY_KEYS = {"read", "skipped", "invalid", "accepted", "rejected", "failed"}


@pytest.fixture
def export(tmp_path: Path) -> Path:
    messages = [
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "timestamp": "2024-01-01"},
        {"type": "track", "userId": "u1", "event": "Clicked"},
        {"type": "identify", "userId": "u2", "traits": {}, "timestamp": "2024-01-01"},
    ]
    path = tmp_path / "export.ndjson.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(m) + b"\n" for m in messages)))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_")}
    env.update(extra)
    return env


def test_dry_run_needs_no_credentials_and_prints_json(export: Path) -> None:
    result = runner.invoke(app, ["upload", str(export), "--dry-run", "--json"], env=clean_env())
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert summary.keys() >= SUMMARY_KEYS
    assert {k: summary[k] for k in SUMMARY_KEYS} == {
        "read": 3,
        "skipped": 1,
        "invalid": 0,
        "accepted": 2,
        "rejected": 0,
        "failed": 0,
    }
    assert summary["dry_run"] is True


def test_the_table_goes_to_stderr(export: Path) -> None:
    result = runner.invoke(app, ["upload", str(export), "--dry-run"], env=clean_env())
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "accepted" in result.stderr and "dry run" in result.stderr


def test_invalid_records_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_text('{"type": "identify"}\nnot json\n')
    result = runner.invoke(app, ["upload", str(path), "--dry-run", "--json"], env=clean_env())
    assert result.exit_code == 1
    assert orjson.loads(result.stdout)["invalid"] == 2


def test_missing_credentials_exit_2_with_what_to_do(export: Path) -> None:
    result = runner.invoke(app, ["upload", str(export)], env=clean_env())
    assert result.exit_code == 2
    assert "CLEVERTAP_ACCOUNT_ID" in result.stderr and "--dry-run" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("dry_run", [["--dry-run"], []], ids=["dry-run", "no-credentials"])
def test_missing_file_exit_2_without_traceback(tmp_path: Path, dry_run: list[str]) -> None:
    """The path is the first thing checked, even before the credentials."""
    result = runner.invoke(
        app, ["upload", str(tmp_path / "nope.ndjson"), *dry_run], env=clean_env()
    )
    assert result.exit_code == 2
    assert "nope.ndjson: no such file" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--batch-size", "1001"],
        ["--batch-size", "0"],
        ["--concurrency", "16"],
        ["--region", "mars"],
    ],
)
def test_bad_options_exit_2(export: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["upload", str(export), "--dry-run", *args])
    assert result.exit_code == 2


def test_output_needs_dry_run(export: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["upload", str(export), "--output", str(tmp_path / "o")], env=clean_env(**CREDENTIALS)
    )
    assert result.exit_code == 2 and "--dry-run" in result.stderr


def test_refused_credentials_exit_3_and_never_show_the_passcode(
    export: Path, tmp_path: Path, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{BASE_URL}/1/upload",
        status_code=401,
        json={"status": "fail", "error": "Account ID is not valid", "code": 401},
    )
    report = tmp_path / "report.ndjson"
    result = runner.invoke(
        app,
        ["upload", str(export), "--report", str(report), "--json"],
        env=clean_env(**CREDENTIALS),
    )
    assert result.exit_code == 3
    assert "region" in result.stderr and ACCOUNT_ID in result.stderr
    assert PASSCODE not in result.output
    assert PASSCODE not in report.read_text()
    # The summary still says how far the run got, and why it stopped (a cron job's
    # `--json >> summary.ndjson` log misses no run).
    summary = orjson.loads(result.stdout)
    assert summary["read"] == 3 and summary["skipped"] == 1 and summary["failed"] == 2
    assert "refused the credentials" in summary["error"]
    assert PASSCODE not in summary["error"]


def test_upload_sends_and_exits_0(export: Path, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(
        confirm_every_record, url="https://in1.api.clevertap.com/1/upload", is_reusable=True
    )
    result = runner.invoke(
        app, ["upload", str(export), "--region", "in1", "--json"], env=clean_env(**CREDENTIALS)
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["accepted"] == 2


def test_passcode_on_the_command_line_is_warned_about(export: Path, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(confirm_every_record, is_reusable=True)
    result = runner.invoke(
        app,
        ["upload", str(export), "--account-id", ACCOUNT_ID, "--passcode", PASSCODE],
        env=clean_env(),
    )
    assert result.exit_code == 0
    assert "CLEVERTAP_PASSCODE" in result.stderr and PASSCODE not in result.output


def test_delete_batches_identities_from_flags_and_files(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(f"user-{i}" for i in range(150)) + "\n\n")
    out = tmp_path / "requests.ndjson"
    result = runner.invoke(
        app,
        ["delete", "--identity", "extra", "--from", str(ids), "--dry-run", "--output", str(out)],
        env=clean_env(),
    )
    assert result.exit_code == 0, result.output
    bodies = [orjson.loads(line)["body"]["identity"] for line in out.read_bytes().splitlines()]
    # 3 lanes (--concurrency 3): at most 100 per request, one batch not full per lane.
    assert all(len(b) <= 100 for b in bodies) and len(bodies) <= 2 + 2
    sent = [identity for body in bodies for identity in body]
    assert sorted(sent) == sorted(["extra"] + [f"user-{i}" for i in range(150)])


def test_delete_guid_and_nothing_to_delete(tmp_path: Path) -> None:
    out = tmp_path / "requests.ndjson"
    ok = runner.invoke(
        app, ["delete", "--identity", "g1", "--guid", "--dry-run", "--output", str(out)]
    )
    assert ok.exit_code == 0
    assert orjson.loads(out.read_bytes())["body"] == {"guid": ["g1"]}
    none = runner.invoke(app, ["delete", "--dry-run"])
    assert none.exit_code == 2 and "--identity" in none.stderr


def test_as_a_subprocess_reading_stdin(export: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ctsync", "upload", "-", "--dry-run", "--json"],
        input=export.read_bytes(),
        capture_output=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["accepted"] == 2
    assert result.stderr == b"", "no progress or table on a non-terminal with --json"


DEV_FULL = Path("/dev/full")  # every write fails with ENOSPC: a full disk, on demand
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs Linux's /dev/full")


def ctsync(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ctsync", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=clean_env(),
        timeout=60,
        check=False,
    )


@needs_dev_full
@pytest.mark.parametrize(
    ("option", "what"),
    [("--report", "report"), ("--failed", "dead-letter file"), ("--output", "request output")],
)
def test_a_full_disk_is_one_line_and_exit_2(tmp_path: Path, option: str, what: str) -> None:
    path = tmp_path / "many-bad.ndjson"  # enough report lines to fill a write buffer
    path.write_bytes(b"not json\n" * 5000 + b'{"type": "identify", "userId": "u"}\n' * 5000)
    result = ctsync("upload", str(path), "--dry-run", "--quiet", option, str(DEV_FULL))
    assert result.returncode == 2
    assert f"/dev/full: cannot write the {what} (No space left on device)" in (
        result.stderr.decode()
    )
    assert b"Traceback" not in result.stderr


@needs_dev_full
def test_a_report_that_fails_only_when_closed_says_its_end_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "one-bad.ndjson"  # one report line: it stays buffered until the end
    path.write_bytes(b"not json\n")
    result = ctsync("upload", str(path), "--dry-run", "--quiet", "--report", str(DEV_FULL))
    assert result.returncode == 2
    assert "its last lines are missing" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


@needs_dev_full
def test_a_summary_that_cannot_be_written_exits_2(export: Path) -> None:
    with DEV_FULL.open("wb") as full:
        result = ctsync("upload", str(export), "--dry-run", "--json", stdout=full.fileno())
    assert result.returncode == 2
    assert b"cannot write the summary" in result.stderr and b"Traceback" not in result.stderr


def test_a_reader_that_goes_away_keeps_the_exit_code(export: Path) -> None:
    """`ctsync ... --json | head -c 0`: nobody reads the summary; no traceback, and the
    exit code still says how the run went."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = ctsync("upload", str(export), "--dry-run", "--json", stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert b"Traceback" not in result.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("ctsync ")


def test_a_shown_preset_used_as_a_mapping_file_gives_the_same_requests(
    tmp_path: Path,
) -> None:
    export = tmp_path / "mixed.ndjson"
    messages = [
        {
            "type": "identify",
            "userId": "u1",
            "timestamp": "2024-01-01T00:00:00Z",
            "traits": {"since": "2019-02-01", "plan": "pro"},
        },
        {"type": "track", "userId": "u1", "event": "Delete User"},
        {"type": "page", "userId": "u2", "name": "Home"},
        {"type": "identify", "anonymousId": "a-only"},
    ]
    export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    shown = runner.invoke(app, ["mappings", "show", "--preset", "actions"])
    assert shown.exit_code == 0
    mapping = tmp_path / "actions.json"
    mapping.write_text(shown.stdout)
    outputs: list[tuple[bytes, int]] = []
    for how in (["--preset", "actions"], ["--mapping", str(mapping)]):
        out = tmp_path / f"requests-{len(outputs)}.ndjson"
        result = runner.invoke(
            app, ["upload", str(export), "--dry-run", "--json", "--output", str(out), *how]
        )
        assert result.exit_code == 1  # the anonymous identify has no identity
        outputs.append((out.read_bytes(), orjson.loads(result.stdout)["invalid"]))
    assert outputs[0] == outputs[1]
    assert outputs[0][0].count(b"\n") == 2


def test_a_broken_mapping_file_stops_before_reading(tmp_path: Path, export: Path) -> None:
    mapping = tmp_path / "broken.json"
    mapping.write_text(
        '{"subscriptions": [{"name": "s1", "enabled": true, "trigger": "type = ",'
        ' "action": "userUpload", "mapping": {}}]}'
    )
    result = runner.invoke(app, ["upload", str(export), "--dry-run", "--mapping", str(mapping)])
    assert result.exit_code == 2
    assert "s1" in result.stderr and "Traceback" not in result.output


def test_progress_can_be_forced_on_a_pipe(export: Path) -> None:
    result = runner.invoke(app, ["upload", str(export), "--dry-run", "--progress", "-q"])
    assert result.exit_code == 0
    assert result.stderr == "", "--quiet silences progress too"
    shown = runner.invoke(app, ["upload", str(export), "--dry-run", "--progress", "--json"])
    assert "read 3" in shown.stderr


def test_passcode_file_is_read_and_never_echoed(
    export: Path, tmp_path: Path, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_callback(confirm_every_record, is_reusable=True)
    secret = tmp_path / "passcode"
    secret.write_text(PASSCODE + "\n")
    result = runner.invoke(
        app,
        ["upload", str(export), "--passcode-file", str(secret), "--json"],
        env=clean_env(CLEVERTAP_ACCOUNT_ID=ACCOUNT_ID),
    )
    assert result.exit_code == 0, result.output
    requests = httpx_mock.get_requests()
    assert requests and all(r.headers["X-CleverTap-Passcode"] == PASSCODE for r in requests)
    assert PASSCODE not in result.output and "warning" not in result.stderr
