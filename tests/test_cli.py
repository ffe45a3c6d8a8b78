"""The command line, through Typer's runner and as a real subprocess."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import pty
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_httpx import HTTPXMock
from typer.testing import CliRunner

from ctsync.cli import app
from ctsync.sandbox import SandboxStore
from ctsync.settings import Secret
from tests.helpers import (
    ACCOUNT_ID,
    BASE_URL,
    PASSCODE,
    assert_exit,
    clean_env,
    confirm_every_record,
    identify,
    serving,
)

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
        ["--concurrency", "0"],
        ["--concurrency", "fast"],
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
    result = runner.invoke(
        app, ["upload", str(path), "--dry-run", "--quiet", option, str(DEV_FULL)], env=clean_env()
    )
    assert_exit(result, 2)
    assert f"/dev/full: cannot write the {what} (No space left on device)" in result.stderr
    assert "Traceback" not in result.stderr


@needs_dev_full
@pytest.mark.parametrize(
    "command",
    [
        ["mappings", "show"],
        ["mappings", "check", "{mapping}", "{export}"],
        ["sandbox", "show", "--db", "{db}"],
    ],
)
def test_a_command_s_output_on_a_full_disk_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    """What a command prints, redirected to a full disk, was called a bug (exit 70)."""
    names = {
        "mapping": tmp_path / "m.json",
        "export": tmp_path / "e.ndjson",
        "db": tmp_path / "sandbox.db",
    }
    names["mapping"].write_bytes(ctsync("mappings", "show").stdout)
    names["export"].write_bytes(b'{"type": "identify", "userId": "u1"}\n')
    SandboxStore.open(names["db"]).close()  # an empty sandbox database
    with DEV_FULL.open("wb") as full:
        result = ctsync(*(part.format(**names) for part in command), stdout=full.fileno())
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode().splitlines() == [
        "ctsync: cannot write standard output: the disk is full (No space left on device)"
    ]


@needs_dev_full
def test_a_report_that_fails_only_when_closed_says_its_end_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "one-bad.ndjson"  # one report line: it stays buffered until the end
    path.write_bytes(b"not json\n")
    result = runner.invoke(
        app,
        ["upload", str(path), "--dry-run", "--quiet", "--report", str(DEV_FULL)],
        env=clean_env(),
    )
    assert_exit(result, 2)
    assert "its last lines are missing" in result.stderr
    assert "Traceback" not in result.stderr


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


@pytest.mark.parametrize("command", ["check", "show"])
def test_mappings_whose_reader_goes_away_stop_quietly_with_141(
    tmp_path: Path, command: str
) -> None:
    """`ctsync mappings check FILE EVENTS | head`: click said nothing and exited 1, which
    for `check` means a sample would be refused; every sample here is fine. 141 is what a
    shell shows for a program SIGPIPE ended (README, Exit codes)."""
    mapping, events = tmp_path / "mapping.json", tmp_path / "events.ndjson"
    mapping.write_bytes(ctsync("mappings", "show").stdout)
    events.write_bytes(b"".join(orjson.dumps(identify(f"u{i}")) + b"\n" for i in range(2000)))
    args = ["mappings", "check", str(mapping), str(events)] if command == "check" else []
    args = args or ["mappings", "show"]
    with (tmp_path / "whole").open("wb") as whole:  # the same, read to its end
        assert ctsync(*args, stdout=whole.fileno()).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = ctsync(*args, stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, b"")


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


def test_a_mapping_path_that_is_a_folder_says_so(tmp_path: Path, export: Path) -> None:
    # It said "no such mapping file" of a folder that is there (a walkthrough).
    result = runner.invoke(app, ["upload", str(export), "--dry-run", "--mapping", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"ctsync: {tmp_path}: a folder, not a mapping file (give the file's path)"
    )


def test_quiet_with_forced_progress_is_refused(export: Path) -> None:
    result = runner.invoke(app, ["upload", str(export), "--dry-run", "--progress", "-q"])
    assert result.exit_code == 2  # issue 23: said in one line, not silently dropped
    assert len(result.stderr.splitlines()) == 1


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


# -- issue 12: the edges a person meets ------------------------------------------------


def ctsync_run(
    *args: str, env: dict[str, str] | None = None, stdin: Any = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m ctsync ARGS` as a real process (the console script's own entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "ctsync", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        stdin=stdin,
        timeout=timeout,
        check=False,
    )


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


@pytest.mark.parametrize(
    "raw",
    [PASSCODE + "\r", PASSCODE + "\t", " " + PASSCODE + "\n", PASSCODE + "\r\n"],
    ids=["crlf-cat", "tab", "spaces-newline", "crlf"],
)
@pytest.mark.parametrize("where", ["env", "file"])
def test_whitespace_around_the_passcode_is_dropped(
    export: Path, tmp_path: Path, httpx_mock: HTTPXMock, raw: str, where: str
) -> None:
    """`$(cat passcode.txt)` of a CRLF file, a trailing tab, an editor's newline: the
    header carries the passcode alone."""
    httpx_mock.add_callback(confirm_every_record, is_reusable=True)
    env = clean_env(CLEVERTAP_ACCOUNT_ID=ACCOUNT_ID)
    args = ["upload", str(export), "--json"]
    if where == "env":
        env["CLEVERTAP_PASSCODE"] = raw
    else:
        secret = tmp_path / "passcode.txt"
        secret.write_bytes(raw.encode())
        args += ["--passcode-file", str(secret)]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    requests = httpx_mock.get_requests()
    assert requests and {r.headers["X-CleverTap-Passcode"] for r in requests} == {PASSCODE}


BAD_PASSCODES = {
    "control-inside": (PASSCODE[:4] + "\r" + PASSCODE[4:]).encode(),
    "newline-inside": (PASSCODE[:4] + "\n" + PASSCODE[4:]).encode(),
    "non-ascii": (PASSCODE + "é").encode(),
    "latin-1-file": (PASSCODE + "é").encode("latin-1"),
}


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        (kind, where)
        for kind in BAD_PASSCODES
        for where in ("env", "option", "file")
        # the environment and argv hold text: Latin-1 bytes can only come from a file
        if kind != "latin-1-file" or where == "file"
    ],
)
def test_a_passcode_that_cannot_be_a_header_is_exit_2_naming_where(
    export: Path, tmp_path: Path, httpx_mock: HTTPXMock, kind: str, where: str
) -> None:
    raw = BAD_PASSCODES[kind]
    env = clean_env(CLEVERTAP_ACCOUNT_ID=ACCOUNT_ID, NO_PROXY="*")
    args = ["upload", str(export), "--endpoint", "http://127.0.0.1:9"]
    if where == "env":
        env["CLEVERTAP_PASSCODE"] = raw.decode()
        named = "CLEVERTAP_PASSCODE"
    elif where == "option":
        args += ["--passcode", raw.decode()]
        named = "--passcode"
    else:
        secret = tmp_path / "passcode.txt"
        secret.write_bytes(raw)
        args += ["--passcode-file", str(secret)]
        named = str(secret)
    result = runner.invoke(app, args, env=env)
    assert_exit(result, 2)
    assert "Traceback" not in result.stderr
    assert httpx_mock.get_requests() == []
    error = [line for line in result.stderr.splitlines() if line.startswith("ctsync:")]
    assert len(error) == 1 and named in error[0] and "passcode" in error[0]
    assert PASSCODE not in result.stderr and PASSCODE[:4] + "\\r" not in result.stderr


def test_a_non_ascii_account_id_is_exit_2(export: Path, httpx_mock: HTTPXMock) -> None:
    env = clean_env(CLEVERTAP_ACCOUNT_ID="TEST-ACC-12é", CLEVERTAP_PASSCODE=PASSCODE)
    args = ["upload", str(export), "--endpoint", "http://127.0.0.1:9"]
    result = runner.invoke(app, args, env=env)
    assert_exit(result, 2)
    assert "account ID" in one_line(result.stderr) and "Traceback" not in result.stderr
    assert httpx_mock.get_requests() == []


ECHOED_PASSCODE = "pc+S3C/RET=0d9f"  # spelled differently URL-encoded, in a repr, in JSON


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """A proxy gone wrong: its error page quotes the request's headers, raw, URL-encoded
    and as Python's repr of bytes."""

    status = 502

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        passcode = self.headers.get("X-CleverTap-Passcode", "")
        body = (
            f"proxy error; headers: X-CleverTap-Passcode: {passcode} | "
            f"q={urllib.parse.quote(passcode, safe='')} | "
            f"repr={passcode.encode()!r}"
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def echoing_proxy(status: int) -> Iterator[str]:
    handler = type("Handler", (_EchoHandler,), {"status": status})
    with serving(handler) as url:
        yield url


@pytest.mark.parametrize("status", [400, 401, 502])
def test_a_proxy_that_echoes_the_passcode_shows_it_nowhere(
    export: Path, tmp_path: Path, status: int, passcode_never_shown: list[str]
) -> None:
    """Every output of the run (stderr, the --json summary, the report, dead letters,
    the state file) carries `***` where the proxy quoted the passcode."""
    passcode_never_shown += [
        ECHOED_PASSCODE,
        urllib.parse.quote(ECHOED_PASSCODE, safe=""),
        repr(ECHOED_PASSCODE.encode())[2:-1],
    ]
    report, failed, state = tmp_path / "report.ndjson", tmp_path / "failed", tmp_path / "st"
    env = clean_env(
        CLEVERTAP_ACCOUNT_ID=ACCOUNT_ID, CLEVERTAP_PASSCODE=ECHOED_PASSCODE, NO_PROXY="*"
    )
    with echoing_proxy(status) as url:
        result = runner.invoke(
            app,
            ["upload", str(export), "--endpoint", url, "--json", "--max-retries", "0",
             "--report", str(report), "--failed", str(failed), "--state", str(state)],
            env=env,
        )  # fmt: skip
    assert_exit(result, 3 if status == 401 else 1)
    texts = {"stdout": result.stdout, "stderr": result.stderr, "report": report.read_text()}
    if status != 401:  # the proxy's page reached the report: masked there
        assert "X-CleverTap-Passcode: ***" in texts["report"]
        assert "q=***" in texts["report"] and "repr=b'***'" in texts["report"]
    else:  # 401 stops the run: its message and the summary's error
        assert "refused the credentials" in result.stderr
    for name, text in texts.items():
        for form in passcode_never_shown:
            assert form not in text, f"{form!r} in {name}"


def test_redaction_catches_every_spelling_of_a_passcode() -> None:
    """Property-style: for many passcodes, each spelling inside any text is masked."""
    from hypothesis import given
    from hypothesis import strategies as st

    from ctsync import redact

    # Without "*": text beside the mask could otherwise spell such a secret again.
    header_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="*")

    @given(
        secret=st.text(header_chars, min_size=6, max_size=40),
        before=st.text(max_size=20),
        after=st.text(max_size=20),
    )
    def check(secret: str, before: str, after: str) -> None:
        redact.forget_all()
        Secret(secret)
        for spelling in (
            secret,
            urllib.parse.quote(secret, safe=""),
            urllib.parse.quote_plus(secret),
            repr(secret)[1:-1],
            repr(secret.encode())[2:-1],
            orjson.dumps(secret).decode()[1:-1],
        ):
            masked = redact.redact(before + spelling + after)
            assert secret not in masked and spelling not in masked
            assert redact.redact_bytes((before + spelling + after).encode()).count(b"***")

    try:
        check()
    finally:
        redact.forget_all()


def test_a_busy_port_is_one_line_naming_it_and_suggesting_port_0() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ctsync_run("sandbox", "--port", str(port), timeout=30)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(port) in line and "--port 0" in line and "in use" in line


@pytest.mark.parametrize(
    "command", [["sandbox", "show", "--db"], ["sandbox", "--port", "0", "--db"]]
)
def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a database\n" * 200)
    result = ctsync_run(*command, str(notes), timeout=30)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(notes) in line and "not a sandbox database" in line


def test_closed_stdin_is_one_line_exit_2() -> None:
    """`ctsync upload - <&-`: Python's sys.stdin is None."""
    result = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m ctsync upload - --dry-run <&-"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "standard input is closed" in one_line(result.stderr)


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE inputs SET pending = 'not json'",
        "UPDATE inputs SET pending = '[1, 2]'",
        "ALTER TABLE inputs DROP COLUMN updated",
    ],
    ids=["pending-not-json", "pending-wrong-shape", "schema-off"],
)
def test_a_hand_edited_state_file_is_one_line_naming_it(
    export: Path, tmp_path: Path, httpx_mock: HTTPXMock, damage: str
) -> None:
    httpx_mock.add_callback(confirm_every_record, is_reusable=True)
    state = tmp_path / "run.state"
    env = clean_env(**CREDENTIALS)
    first = runner.invoke(app, ["upload", str(export), "--state", str(state)], env=env)
    assert first.exit_code == 0, first.output
    export.write_bytes(export.read_bytes())  # same content: the state says "complete"
    with sqlite3.connect(state) as db:
        db.execute("UPDATE inputs SET complete = 0")
        db.execute(damage)
    again = runner.invoke(app, ["upload", str(export), "--state", str(state)], env=env)
    assert again.exit_code == 2, again.output
    assert again.exception is None or isinstance(again.exception, SystemExit)
    assert str(state) in again.stderr and "state file" in again.stderr


def test_an_unexpected_error_is_one_line_a_file_and_exit_70(tmp_path: Path, export: Path) -> None:
    """A bug (here: the mapper raising) never shows a raw traceback: one line saying
    to report it, the traceback in a file, exit 70. The passcode is in neither."""
    script = (
        "import sys\n"
        "import ctsync.run.intake\n"
        "def broken(*args, **kwargs):\n"
        f"    raise RuntimeError('boom with {PASSCODE}')\n"
        "ctsync.run.intake.Intake.take = broken\n"
        "from ctsync.__main__ import main\n"
        "sys.argv = ['ctsync', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = clean_env(**CREDENTIALS, TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script, "upload", str(export), "--dry-run",
         "--passcode", PASSCODE],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 70
    assert "Traceback" not in result.stderr
    line = one_line(result.stderr)
    assert "please report this" in line and "RuntimeError" in line
    (crash,) = tmp_path.glob("ctsync-crash-*.txt")
    assert str(crash) in line
    text = crash.read_text()
    assert "Traceback" in text and "in broken" in text
    assert PASSCODE not in text and PASSCODE not in line


class Terminal:
    """`ctsync` on a pseudo-terminal: stdin, stdout and stderr are a terminal, and
    Ctrl-C / Ctrl-D typed into it do what they do for a person."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes ctsync
            os.execve(sys.executable, [sys.executable, "-m", "ctsync", *args], env)
        self.output = b""

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.screen()}"
            self._pump(0.1)

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait_until_read(self, typed: bytes, timeout: float = 30) -> None:
        """Until ctsync has taken what was typed: the terminal echoed it (so its input
        queue holds it), then that queue is empty."""
        import fcntl
        import termios

        self.expect(typed.decode().strip(), timeout)
        terminal = os.open(os.readlink(f"/proc/{self.pid}/fd/0"), os.O_RDONLY | os.O_NOCTTY)
        try:
            deadline = time.monotonic() + timeout  # a guard against a hang, not a measure
            waiting = bytearray(4)
            while True:
                fcntl.ioctl(terminal, termios.FIONREAD, waiting)
                if int.from_bytes(waiting, sys.byteorder) == 0:
                    return
                assert time.monotonic() < deadline, f"input never read:\n{self.screen()}"
                self._pump(0.01)
        finally:
            os.close(terminal)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._pump(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._pump(0.2)
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"still running after {timeout} s:\n{self.screen()}")

    def screen(self) -> str:
        return self.output.decode("utf-8", "replace")

    def json(self) -> dict[str, Any]:
        for line in reversed(self.screen().splitlines()):
            if line.startswith('{"read"'):
                value = orjson.loads(line)
                assert isinstance(value, dict)
                return value
        raise AssertionError(f"no summary in:\n{self.screen()}")

    def _pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            with contextlib.suppress(OSError):
                self.output += os.read(self.fd, 65536)


IDENTIFY_LINE = b'{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}\n'


@pytest.mark.parametrize(("key", "code"), [(b"\x04", 0), (b"\x03", 130)], ids=["ctrl-d", "ctrl-c"])
def test_stdin_from_a_terminal_says_so_and_ctrl_c_works(key: bytes, code: int) -> None:
    term = Terminal("upload", "--dry-run", "--json", env=clean_env(TERM="dumb"))
    term.expect("reading Segment messages from standard input (Ctrl-D to finish, Ctrl-C to stop)")
    term.type(IDENTIFY_LINE)
    term.wait_until_read(IDENTIFY_LINE)  # else Ctrl-C could come before ctsync took it
    term.type(key)
    assert term.wait() == code, term.screen()
    summary = term.json()
    assert summary["read"] == 1 and summary["dry_run"] is True
    assert summary["interrupted"] is (code == 130)
    if code == 130:  # the record read but not sent is accounted for
        assert summary["failed_by_code"] == {"interrupted": 1}
        assert "stopping (Ctrl-C)" in term.screen()


@pytest.mark.parametrize(("key", "code"), [(b"\x04", 0), (b"\x03", 130)], ids=["ctrl-d", "ctrl-c"])
def test_mappings_check_from_a_terminal_says_so_and_checks_each_line_as_typed(
    tmp_path: Path, key: bytes, code: int
) -> None:
    mapping = tmp_path / "mapping.json"
    mapping.write_text(runner.invoke(app, ["mappings", "show"]).stdout)
    term = Terminal("mappings", "check", str(mapping), "-", env=clean_env(TERM="dumb"))
    term.expect("reading Segment messages from standard input (Ctrl-D to finish, Ctrl-C to stop)")
    term.type(IDENTIFY_LINE)
    term.expect("line 1: fires: Event Type is Identify")  # before the input ends
    term.type(key)
    assert term.wait() == code, term.screen()
    if code == 130:
        assert "ctsync: interrupted" in term.screen() and "Aborted" not in term.screen()


def test_only_named_pipes_are_named_so(tmp_path: Path) -> None:
    """`ctsync upload <(cmd)` reads /dev/fd/N, a link to a pipe whose writer already runs:
    not a named pipe waiting for one (a review found the note printed for it)."""
    from ctsync.cli import _named_pipes
    from ctsync.reader import LocalFile

    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    plain = tmp_path / "e.ndjson"
    plain.write_bytes(IDENTIFY_LINE)
    read_end, write_end = os.pipe()
    try:
        sources = [
            LocalFile(str(path), Path(path), 0) for path in (fifo, plain, f"/dev/fd/{read_end}")
        ]
        assert _named_pipes(sources) == [str(fifo)]  # type: ignore[arg-type]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_named_pipe_without_a_writer_says_what_it_waits_for(tmp_path: Path) -> None:
    """`ctsync upload FIFO` waited in silence until a program wrote to the pipe; at a
    terminal it now says so, then reads what comes."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    term = Terminal("upload", str(fifo), "--dry-run", "--no-progress", env=clean_env(TERM="dumb"))
    term.expect(f"{fifo} is a named pipe: reading it waits until a program writes to it")
    with open(fifo, "wb") as writer:
        writer.write(IDENTIFY_LINE)
    assert term.wait() == 0, term.screen()
    assert "accepted" in term.screen()


@contextlib.contextmanager
def held_run(export: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], Any]]:
    """`ctsync upload EXPORT --batch-size 1 EXTRA` against a sandbox that holds every
    answer until the test releases it; the process is killed and the sandbox stopped at
    the end. Plain progress lines come every 0.05 s instead of every 10 s."""
    from ctsync.sandbox import running_sandbox

    with running_sandbox() as sandbox:
        sandbox.hold()
        env = clean_env(
            CLEVERTAP_ACCOUNT_ID="sandbox", CLEVERTAP_PASSCODE="sandbox", NO_PROXY="*",
            CTSYNC_PROGRESS_INTERVAL="0.05",
        )  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "ctsync", "upload", str(export), "--endpoint", sandbox.url,
             "--batch-size", "1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            yield process, sandbox
        finally:
            process.kill()
            process.communicate()
            sandbox.release()


def wait_for_in_flight(sandbox: Any, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60  # a guard against a hang, not a measure
    while sandbox.stats().in_flight.get("upload", 0) < count:
        assert process.poll() is None, "the run ended before sending"
        assert time.monotonic() < deadline, "the requests never arrived"
        time.sleep(0.02)


def stderr_until(process: subprocess.Popen[str], wanted: str) -> str:
    """What the process wrote to stderr, up to and including a line containing `wanted`."""
    assert process.stderr is not None
    fd, seen = process.stderr.fileno(), b""
    deadline = time.monotonic() + 60  # a guard against a hang, not a measure
    while wanted.encode() not in seen:
        assert time.monotonic() < deadline, f"never printed {wanted!r}; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr closed before {wanted!r}; got {seen!r}"
            seen += chunk
    return seen.decode()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_first_signal_says_what_it_waits_for(export: Path, sig: int, code: int) -> None:
    """Two identify records, one per request, held by the sandbox: a first signal while
    they are in flight names them, the drain deadline and the second Ctrl-C; released,
    they finish."""
    with held_run(export, "--json") as (process, sandbox):
        wait_for_in_flight(sandbox, 2, process)
        process.send_signal(sig)
        again = (
            "press Ctrl-C again to stop now"
            if sig == signal.SIGINT
            else "a second SIGTERM (or Ctrl-C) stops now"
        )
        before = stderr_until(process, again)
        sandbox.release()
        stdout, stderr = process.communicate(timeout=60)
    stderr = before + stderr
    assert process.returncode == code, stderr
    what = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert (
        f"ctsync: stopping ({what}): waiting up to 30 s for 2 requests in flight; {again}"
    ) in stderr
    assert orjson.loads(stdout)["accepted"] == 2  # the drain let them finish


def test_progress_on_a_pipe_is_a_plain_line_at_each_interval(export: Path) -> None:
    """`--progress` into a log: no cursor movement, labelled lines at each interval
    (10 s for people; shortened for the test), while the requests are in flight."""
    with held_run(export, "--progress", "--json") as (process, sandbox):
        wait_for_in_flight(sandbox, 2, process)
        before = stderr_until(process, "sent 2")
        sandbox.release()
        _, stderr = process.communicate(timeout=60)
    stderr = before + stderr
    assert process.returncode == 0, stderr
    assert "\x1b" not in stderr, "no control sequences in a log"
    line = next(line for line in stderr.splitlines() if "sent 2" in line)
    assert line.startswith("ctsync: read")
    for label in ("read 3", "sent 2", "accepted 0", "skipped 1"):
        assert label in line
    assert "invalid" not in line and "failed" not in line  # 0: left out (80 columns)
    assert "rec/s" in line and "MB" in line and re.search(r"eta \d+:\d\d:\d\d", line)


def test_live_progress_at_a_terminal_is_labelled_and_counts_down_while_stopping(
    export: Path,
) -> None:
    from ctsync.sandbox import running_sandbox

    with running_sandbox() as sandbox:
        sandbox.hold()
        env = clean_env(
            CLEVERTAP_ACCOUNT_ID="sandbox", CLEVERTAP_PASSCODE="sandbox", NO_PROXY="*",
            TERM="xterm", COLUMNS="160",
        )  # fmt: skip
        term = Terminal(
            "upload", str(export), "--endpoint", sandbox.url, "--batch-size", "1", env=env
        )
        term.expect("sent 2")
        for label in ("read 3", "invalid 0", "skipped 1", "failed 0", "rec/s", "eta 0:"):
            term.expect(label)
        term.type(b"\x03")
        term.expect("waiting up to 30 s for 2 requests in flight")
        term.expect("stopping: 2 requests in flight, 0:00:")
        sandbox.release()
        assert term.wait() == 130


def test_a_dry_run_stopped_by_an_output_error_is_still_a_dry_run(export: Path) -> None:
    if not DEV_FULL.exists():
        pytest.skip("needs Linux's /dev/full")
    args = ["upload", str(export), "--dry-run", "--output", str(DEV_FULL)]
    result = runner.invoke(app, [*args, "--json"], env=clean_env())
    assert_exit(result, 2)
    assert orjson.loads(result.stdout)["dry_run"] is True
    table = runner.invoke(app, args, env=clean_env())
    assert_exit(table, 2)
    assert "would be sent" in table.stderr and "by CleverTap" not in table.stderr


@pytest.mark.parametrize("spelling", ["IN1", "In1", "in1"])
def test_regions_are_case_insensitive(export: Path, httpx_mock: HTTPXMock, spelling: str) -> None:
    httpx_mock.add_callback(
        confirm_every_record, url="https://in1.api.clevertap.com/1/upload", is_reusable=True
    )
    by_option = runner.invoke(
        app, ["upload", str(export), "--region", spelling], env=clean_env(**CREDENTIALS)
    )
    assert by_option.exit_code == 0, by_option.output
    by_env = runner.invoke(
        app, ["upload", str(export)], env=clean_env(**CREDENTIALS, CLEVERTAP_REGION=spelling)
    )
    assert by_env.exit_code == 0, by_env.output


COMMANDS = [
    [],
    ["upload"],
    ["delete"],
    ["sandbox"],
    ["sandbox", "show"],
    ["mappings"],
    ["mappings", "show"],
    ["mappings", "check"],
]


def test_upload_usage_says_it_takes_several_paths() -> None:
    """`ctsync upload a.ndjson b.ndjson dir/` works: the usage line said `[PATH]`."""
    result = runner.invoke(app, ["upload", "--help"], env=clean_env(COLUMNS="80"))
    assert_exit(result, 0)
    assert result.stdout.splitlines()[0].strip() == "Usage: ctsync upload [OPTIONS] [PATH]..."
    assert "s3:// or gs:// bucket path" in " ".join(result.stdout.split())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ctsync")
def test_help_is_readable_at_80_columns(command: list[str]) -> None:
    # Click lays help out 2 columns short of the terminal's width (78 at COLUMNS=80, as
    # `ctsync --help` prints it there); the runner would otherwise lay it out at 80.
    result = runner.invoke(
        app, [*command, "--help"], env=clean_env(COLUMNS="80"), terminal_width=78
    )
    assert_exit(result, 0)
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and "..." not in text.replace("[PATH]...", "").replace("ARGS]...", "")
    assert "<bool>" not in text and "<str>" not in text and "<list" not in text
    for twin in ("--no-dry-run", "--no-json", "--no-guid", "--no-yes", "--no-quiet"):
        assert twin not in text


def test_one_request_is_one_request(tmp_path: Path) -> None:
    path = tmp_path / "one.ndjson"
    path.write_bytes(IDENTIFY_LINE)
    result = runner.invoke(app, ["upload", str(path), "--dry-run"], env=clean_env())
    assert "1 request" in result.stderr and "1 requests" not in result.stderr


def test_a_broken_mapping_file_is_exit_2_in_every_subcommand(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"subscriptions": [{"name": "s1", "trigger": "type = "}]}')
    events = tmp_path / "events.ndjson"
    events.write_bytes(IDENTIFY_LINE)
    check = runner.invoke(app, ["mappings", "check", str(broken)])
    upload = runner.invoke(app, ["upload", str(events), "--dry-run", "--mapping", str(broken)])
    assert check.exit_code == upload.exit_code == 2
    missing = runner.invoke(app, ["mappings", "check", str(tmp_path / "nope.json")])
    missing_upload = runner.invoke(
        app, ["upload", str(events), "--dry-run", "--mapping", str(tmp_path / "nope.json")]
    )
    assert missing.exit_code == missing_upload.exit_code == 2


def test_delete_at_a_terminal_says_how_many_and_asks(tmp_path: Path) -> None:
    """Answering no deletes nothing; the sandbox sees no request."""
    from ctsync.sandbox import running_sandbox

    ids = tmp_path / "gdpr.txt"
    ids.write_text("u-1\nu-2\n\nu-3\n")
    with running_sandbox() as sandbox:
        env = clean_env(CLEVERTAP_ACCOUNT_ID="sandbox", CLEVERTAP_PASSCODE="sandbox", NO_PROXY="*")
        # (an account ID other than the passcode, which would be masked)
        named = {**env, "CLEVERTAP_ACCOUNT_ID": "ACME-PROD-1"}
        term = Terminal("delete", "--from", str(ids), "--endpoint", sandbox.url, env=named)
        term.expect("deletes the CleverTap profiles of 3 identities")
        term.expect(f"from account ACME-PROD-1 at {sandbox.url};")
        term.expect("Delete them? [y/N]")
        term.type(b"n\n")
        assert term.wait() == 1
        assert "nothing deleted" in term.screen()
        assert sum(sandbox.stats().requests_by_status.values()) == 0
        stopped = Terminal("delete", "--from", str(ids), "--endpoint", sandbox.url, env=env)
        stopped.expect("Delete them? [y/N]")
        stopped.type(b"\x03")
        assert stopped.wait() == 130
        assert "nothing deleted" in stopped.screen() and "Traceback" not in stopped.screen()
        assert sum(sandbox.stats().requests_by_status.values()) == 0
        ended = Terminal("delete", "--from", str(ids), "--endpoint", sandbox.url, env=env)
        ended.expect("Delete them? [y/N]")
        ended.type(b"\x04")  # Ctrl-D: no answer is not a yes (README: exit 1)
        assert ended.wait() == 1
        assert "ctsync: nothing deleted" in ended.screen() and "interrupted" not in ended.screen()
        assert sum(sandbox.stats().requests_by_status.values()) == 0
        yes = Terminal("delete", "--from", str(ids), "--endpoint", sandbox.url, env=env)
        yes.expect("Delete them? [y/N]")
        yes.type(b"y\n")
        assert yes.wait() == 0
        assert sandbox.read(lambda store: store.counts().deletions) == 3


def test_delete_with_yes_or_without_a_terminal_never_asks(tmp_path: Path) -> None:
    from ctsync.sandbox import running_sandbox

    with running_sandbox() as sandbox:
        env = clean_env(CLEVERTAP_ACCOUNT_ID="sandbox", CLEVERTAP_PASSCODE="sandbox", NO_PROXY="*")
        term = Terminal("delete", "--identity", "u-1", "--yes", "--endpoint", sandbox.url, env=env)
        assert term.wait() == 0
        assert "Delete them?" not in term.screen()
        piped = ctsync_run(
            "delete", "--identity", "u-2", "--endpoint", sandbox.url, "--json", env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert piped.returncode == 0 and "Delete them?" not in piped.stderr
        assert sandbox.read(lambda store: store.counts().deletions) == 2
