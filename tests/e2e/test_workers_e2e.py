"""End to end with `--workers 2`: a worker killed mid-run stops the run (exit 70, one
line, every record read accounted for, no process left behind) and `--state` resumes it
without storing an event twice; Ctrl-C reaches the whole process group and still ends
the run cleanly; `kill -9` of the main process leaves no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ctsync.sandbox import SandboxConfig, running_sandbox

from ._support import (
    Processes,
    assert_adds_up,
    ctsync_env,
    duplicates,
    finish,
    run_upload,
    seqs_of,
    track,
    upload_command,
    wait_until,
    write_export,
)

EVENTS = 3000
# Workers from the first byte, on blocks of a few lines: a small export keeps them busy.
WORKER_ENV = {"CTSYNC_WORKER_BLOCK_BYTES": "3000", "CTSYNC_WORKER_START_AFTER": "0"}


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def workers_of(pid: int) -> list[int]:
    """The worker processes of a ctsync run (children running spawn_main)."""
    found = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                if b"spawn_main" in cmdline.read():
                    found.append(child)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(args: list[str], url: str) -> subprocess.Popen[str]:
    env = {**ctsync_env(), **WORKER_ENV}
    return subprocess.Popen(
        upload_command(url, *args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as at a terminal
    )


def export_of(tmp_path: Path) -> Path:
    export = tmp_path / "events.ndjson"
    write_export(export, [track(f"u-{i % 61}", "Played", i) for i in range(EVENTS)])
    return export


def test_a_killed_worker_stops_the_run_and_state_resumes_it(
    tmp_path: Path, processes: Processes
) -> None:
    export, state = export_of(tmp_path), tmp_path / "state.db"
    args = [str(export), "--preset", "classic", "--workers", "2", "--state", str(state)]
    args += ["--batch-size", "20", "--concurrency", "2", "--report", str(tmp_path / "r.ndjson")]
    with running_sandbox(SandboxConfig(latency_ms=40)) as sandbox:
        process = start(args, sandbox.url)
        try:
            wait_until(lambda: len(workers_of(process.pid)) == 2, 20, "two worker processes")
            wait_until(
                lambda: sandbox.stats().requests_by_endpoint["upload"] > 2, 20, "some uploads"
            )
            tree = descendants(process.pid)
            os.kill(workers_of(process.pid)[0], signal.SIGKILL)
            killed = finish(process, timeout=30)  # never a hang
        finally:
            if process.poll() is None:
                process.kill()
        assert killed.returncode == 70, killed.describe()
        assert "Traceback" not in killed.stderr
        assert "worker process stopped" in killed.stderr, killed.stderr
        summary = killed.summary
        assert_adds_up(summary)
        assert 0 < summary["read"] < EVENTS, summary
        wait_until(lambda: not any(alive(pid) for pid in tree), 10, "no process left behind")

        env = {**ctsync_env(), **WORKER_ENV}
        again = run_upload(sandbox.url, *args, env=env, timeout=60)
        assert again.returncode == 0, again.describe()
        assert_adds_up(again.summary)
        counts = seqs_of(sandbox.read(lambda store: store.events()))
    assert duplicates(counts) == 0, "an event was stored twice"
    unknown = summary["failed_by_code"].get("outcome-unknown", 0)
    missing = set(range(EVENTS)) - set(counts)
    assert len(missing) <= unknown, f"{len(missing)} events missing, {unknown} reported unknown"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_process_group_ends_the_run_cleanly(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    """A terminal's Ctrl-C (or a service manager's SIGTERM) reaches the workers too: they
    leave it to the main process, which drains and exits 130 (143), every record
    accounted for."""
    export = export_of(tmp_path)
    args = [str(export), "--preset", "classic", "--workers", "2"]
    args += ["--batch-size", "20", "--concurrency", "2"]
    with running_sandbox(SandboxConfig(latency_ms=40)) as sandbox:
        process = start(args, sandbox.url)
        try:
            wait_until(lambda: len(workers_of(process.pid)) == 2, 20, "two worker processes")
            tree = descendants(process.pid)
            os.killpg(process.pid, signum)
            stopped = finish(process, timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert stopped.returncode == code, stopped.describe()
    assert "Traceback" not in stopped.stderr, stopped.stderr
    assert_adds_up(stopped.summary)
    assert stopped.summary["interrupted"] is True
    wait_until(lambda: not any(alive(pid) for pid in tree), 10, "no process left behind")


def test_kill_9_of_the_main_process_leaves_no_worker_behind(tmp_path: Path) -> None:
    export = export_of(tmp_path)
    args = [str(export), "--preset", "classic", "--workers", "2", "--batch-size", "20"]
    with running_sandbox(SandboxConfig(latency_ms=40)) as sandbox:
        process = start(args, sandbox.url)
        try:
            wait_until(lambda: len(workers_of(process.pid)) == 2, 20, "two worker processes")
            tree = descendants(process.pid)
            process.kill()
            process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        wait_until(lambda: not any(alive(pid) for pid in tree), 10, "the workers to exit")
