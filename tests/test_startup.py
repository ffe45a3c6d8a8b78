"""Each command imports only what it uses: a dry run never loads the HTTP client, the
sandbox's server or pydantic; an upload never loads the sandbox's server. Checked on a
real `python -X importtime -m ctsync` process, which lists every module it imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LINE = b'{"type":"identify","userId":"u1","traits":{"plan":"pro"}}\n'


def imported_by(*args: str) -> set[str]:
    env = {**os.environ, "NO_PROXY": "*"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ctsync", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "ctsync.cli" in modules, done.stderr[-2000:]
    return modules


def loaded(modules: set[str], *roots: str) -> set[str]:
    return {m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)}


def test_a_dry_run_loads_no_http_client_no_sandbox_and_no_pydantic(tmp_path: Path) -> None:
    export = tmp_path / "one.ndjson"
    export.write_bytes(LINE)
    modules = imported_by("upload", str(export), "--dry-run", "--quiet")
    assert "ctsync.run.coordinator" in modules  # it did run
    unwanted = ("httpx", "httpcore", "h11", "ctsync.client", "pydantic", "boto3", "google")
    assert loaded(modules, *unwanted) == set()
    assert loaded(modules, "ctsync.sandbox") <= {
        "ctsync.sandbox",
        "ctsync.sandbox._config",
        "ctsync.sandbox.cli",
    }


def test_a_quiet_run_loads_no_rich_and_a_shown_summary_does(tmp_path: Path) -> None:
    """`--quiet --json` (cron, the bench's start-up row) prints nothing on stderr: Rich
    was a fifth of a one-line dry run's imports. The table of a run that shows it, and
    an error, still come through Rich."""
    export = tmp_path / "one.ndjson"
    export.write_bytes(LINE)
    quiet = imported_by("upload", str(export), "--dry-run", "--quiet", "--json")
    assert "ctsync.run.coordinator" in quiet  # it did run
    assert loaded(quiet, "rich", "ctsync.console") == set()
    shown = imported_by("upload", str(export), "--dry-run")
    assert {"rich.console", "rich.table", "ctsync.console"} <= shown
    refused = imported_by("upload", str(tmp_path / "missing.ndjson"), "--dry-run", "--quiet")
    assert "rich.console" in refused  # its one line on stderr


@pytest.mark.parametrize("command", [["--help"], ["upload", "--help"], ["delete", "--help"]])
def test_help_loads_no_sandbox_server(command: list[str]) -> None:
    modules = imported_by(*command)
    assert loaded(modules, "ctsync.sandbox._server", "ctsync.sandbox._store", "httpx") == set()


def test_an_upload_loads_the_client_and_not_the_sandbox_server(tmp_path: Path) -> None:
    export = tmp_path / "one.ndjson"
    export.write_bytes(LINE)
    # Nothing listens on port 9 of loopback: the run loads the client and fails to connect.
    modules = imported_by(
        "upload", str(export), "--quiet", "--endpoint", "http://127.0.0.1:9",
        "--account-id", "acc", "--passcode", "pc", "--max-retries", "0",
    )  # fmt: skip
    assert "ctsync.client" in modules
    assert loaded(modules, "ctsync.sandbox._server", "ctsync.sandbox._store") == set()


def test_a_worker_process_loads_no_event_loop_no_planner_and_no_dateutil() -> None:
    # What a worker imports to prepare blocks: the stage, the reader, the presets and
    # their rules. The package's coordinator (asyncio, the ledger, the planner) came
    # with `ctsync.run` and cost a third of each worker's start-up.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import ctsync.run.workers, ctsync.mappers, ctsync.presets, ctsync.prepare"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert {"ctsync.run.stage", "ctsync.presets", "ctsync.rules"} <= modules
    unwanted = ("asyncio", "ctsync.run.coordinator", "ctsync.batching", "dateutil", "httpx")
    assert loaded(modules, *unwanted) == set()


def test_the_names_the_run_package_defers_are_there_for_every_caller() -> None:
    # `ctsync.run` imports its parts when first asked for (above): a Python caller, a
    # type checker at run time and `dir()` must not notice. In a fresh interpreter: here
    # the test's own imports have asked for every name already.
    script = """
import typing
import ctsync.run, ctsync.errors, ctsync.summary
listed = dir(ctsync.run)
assert all(name in listed for name in ctsync.run.__all__), listed
for name in ctsync.run.__all__:
    assert getattr(ctsync.run, name).__name__ == name
try:
    ctsync.run.nothing_of_that_name
except AttributeError:
    pass
else:
    raise AssertionError("a name the package does not have")
assert "concurrency" in typing.get_type_hints(ctsync.summary.Summary)
assert "summary" in typing.get_type_hints(ctsync.errors.CtsyncError.__init__)
print("held")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "held", done.stderr[-2000:]
