"""`ctsync sandbox` as a real process, and `ctsync sandbox show`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ctsync.sandbox import (
    LISTENING_PREFIX,
    SandboxConfig,
    read_listening_url,
    running_sandbox,
    sandbox_process,
)
from ctsync.sandbox.cli import app
from ctsync.sandbox.load import run_load

from ._support import AUTH, TIMEOUT, delete, event, profile, upload

START_SECONDS = 15


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """`python -m ctsync.sandbox --port 0 --db FILE` and the URL from its first line."""
    db = tmp_path / "sandbox.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "ctsync.sandbox", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        # A child that never prints its start line is killed, so readline() returns.
        timer = threading.Timer(START_SECONDS, process.kill)
        timer.start()
        line = process.stdout.readline()
        timer.cancel()
        yield process, line, db
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=START_SECONDS)


def test_start_line_serves_and_sigterm_stops_cleanly(
    started: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, line, db = started
    assert line.startswith(LISTENING_PREFIX)
    url = read_listening_url(line)
    assert url.startswith("http://127.0.0.1:")
    assert not url.endswith(":0")
    with httpx.Client(base_url=url, headers=AUTH, timeout=TIMEOUT) as http:
        assert upload(http, [profile("u1", Name="A"), event("u1")]).json() == {
            "status": "success",
            "processed": 2,
        }
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=START_SECONDS)
    assert process.returncode == 0, stderr
    assert stdout == ""  # exactly one line in all
    assert db.is_file()


def test_sigint_stops_cleanly(started: tuple[subprocess.Popen[str], str, Path]) -> None:
    process, line, _ = started
    assert line.startswith(LISTENING_PREFIX)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=START_SECONDS)
    assert process.returncode == 0


def test_sandbox_process_helper_passes_the_config(tmp_path: Path) -> None:
    config = SandboxConfig(account_id="A", passcode="P", db=tmp_path / "s.db", latency_ms=1)
    with sandbox_process(config) as running:
        headers = {"X-CleverTap-Account-Id": "A", "X-CleverTap-Passcode": "P"}
        with httpx.Client(base_url=running.url, headers=headers, timeout=TIMEOUT) as http:
            assert upload(http, [event("u1")]).status_code == 200
            assert http.post("/1/upload", json={"d": []}, headers=AUTH).status_code == 401
        stats = running.stats()
    assert running.process.returncode is not None
    assert (stats.events, stats.requests_by_status) == (1, {200: 1, 401: 1})


def test_bad_options_exit_2_before_listening() -> None:
    result = CliRunner().invoke(app, ["--fault-rate", "0.7", "--drop-rate", "0.7"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["--port", "70000"])
    assert result.exit_code == 2


def test_to_cli_args_round_trips_through_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[SandboxConfig] = []
    monkeypatch.setattr(
        "ctsync.sandbox._server.serve", lambda config, announce: started.append(config)
    )
    configs = [
        SandboxConfig(),
        SandboxConfig(
            host="::1",
            port=9000,
            account_id="A",
            passcode="P",
            db=tmp_path / "s.db",
            latency_ms=(20, 400),
            fault_rate=0.1,
            drop_rate=0.05,
            store_then_fail_rate=0.15,
            store_then_drop_rate=0.2,
            seed=42,
            max_concurrent_uploads=4,
            max_concurrent_deletes=2,
        ),
        SandboxConfig(latency_ms=35),
    ]
    for config in configs:
        result = CliRunner().invoke(app, config.to_cli_args())
        assert result.exit_code == 0, result.output
    assert started == configs


@pytest.mark.parametrize(
    ("text", "latency"), [("0", 0), ("250", 250), ("20-400", (20, 400)), (" 5 - 5 ", (5, 5))]
)
def test_latency_ms_takes_a_number_or_a_range(
    text: str, latency: int | tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[SandboxConfig] = []
    monkeypatch.setattr(
        "ctsync.sandbox._server.serve", lambda config, announce: started.append(config)
    )
    assert CliRunner().invoke(app, ["--latency-ms", text]).exit_code == 0
    assert [config.latency_ms for config in started] == [latency]


@pytest.mark.parametrize("text", ["400-20", "-5", "20-", "fast", "1.5", "20-400-600"])
def test_a_bad_latency_exits_2_with_a_message(text: str) -> None:
    result = CliRunner().invoke(app, ["--latency-ms", text])
    assert result.exit_code == 2
    assert "latency" in result.output.lower()


def _filled_db(path: Path) -> Path:
    with (
        running_sandbox(SandboxConfig(db=path)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        upload(http, [profile("ada", Name="Ada"), event("ada", "Signed Up"), event("bo")])
        delete(http, {"identity": "bo"})
    return path


def test_show_summarises_a_database(tmp_path: Path) -> None:
    db = _filled_db(tmp_path / "sandbox.db")
    result = CliRunner().invoke(app, ["show", "--db", str(db)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("profiles", "events", "Signed Up", "ada", '"Name":"Ada"', "bo", "no"):
        assert text in result.output


def test_show_leaves_out_empty_tables(tmp_path: Path) -> None:
    db = tmp_path / "sandbox.db"
    with (
        running_sandbox(SandboxConfig(db=db)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        upload(http, [profile("ada", Name="Ada")])
    result = CliRunner().invoke(app, ["show", "--db", str(db)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "Profiles (first 10)" in result.output and '"Name":"Ada"' in result.output
    assert "Deletions" not in result.output and "Events by name" not in result.output


def test_show_as_a_process(tmp_path: Path) -> None:
    db = _filled_db(tmp_path / "sandbox.db")
    result = subprocess.run(
        [sys.executable, "-m", "ctsync.sandbox", "show", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=START_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert "Signed Up" in result.stdout


def test_show_without_a_database_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["show", "--db", str(tmp_path / "missing.db")])
    assert result.exit_code == 2


def test_show_given_a_folder_says_it_is_one(tmp_path: Path) -> None:
    """A new user's `--db .` (or a typo'd path to the folder holding the file): the
    message says what is wrong with it, not that no database is there."""
    result = CliRunner().invoke(app, ["show", "--db", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path} is a folder" in result.output


def test_the_load_generator_runs_against_a_sandbox() -> None:
    with running_sandbox() as sandbox:
        result = asyncio.run(
            run_load(sandbox.url, requests=30, records_per_request=50, concurrency=5)
        )
        stats = sandbox.stats()
    assert result.statuses == {200: 30}
    assert stats.records_accepted == result.records == 1500
    assert stats.peak_in_flight["upload"] <= 5


def test_a_database_of_the_older_batched_layout_exits_2_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE event_batches (first_seq INTEGER PRIMARY KEY, events TEXT)")
    conn.close()
    for command in (["show", "--db", str(db)], ["--db", str(db), "--port", "0"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2
        assert "older sandbox" in result.output
        assert "Traceback" not in result.output


def test_a_database_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    db = tmp_path / "no such folder" / "x.db"
    result = CliRunner().invoke(app, ["--db", str(db), "--port", "0"])
    assert result.exit_code == 2
    assert f"the folder {db.parent} does not exist" in " ".join(result.output.split())
    assert "not a sandbox database" not in result.output
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "gone" / "x.db")
    result = CliRunner().invoke(app, ["--db", str(link), "--port", "0"])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert f"it links to {tmp_path / 'gone' / 'x.db'}, in a folder that does not exist" in said


def test_a_ctsync_state_file_is_not_taken_for_a_sandbox_database(tmp_path: Path) -> None:
    """`sandbox show --db STATE` printed zeros and added the sandbox's tables to the state
    file; `sandbox --db STATE` served into it."""
    from ctsync.state import StateFile

    db = tmp_path / "state.db"
    StateFile(db).close()
    with sqlite3.connect(db) as conn:
        before = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master"))
    conn.close()
    for command in (["show", "--db", str(db)], ["--db", str(db), "--port", "0"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2
        assert "not a sandbox database (it holds other tables" in result.output
    with sqlite3.connect(db) as conn:
        assert sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master")) == before
    conn.close()
