"""End to end: `--report` and `--failed` are committed with the state. Across any sequence
of kills (SIGKILL and SIGTERM, at random moments, in long stretches of skipped and
invalid records too) and resumes, each record that did not go through is in the report
once and in the dead letters once, and every line of both is whole.

The model of what fails is written from the input alone: the lines built invalid (not
JSON, or an identify without any id) fail, every other record goes through (profile
updates and events, with --retry-unknown: nothing is left outcome-unknown) or is skipped
(group)."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path
from subprocess import Popen
from typing import Any

import orjson
import pytest

from ctsync.sandbox import Sandbox, SandboxConfig, running_sandbox

from ._support import (
    TS,
    Processes,
    assert_adds_up,
    ctsync_env,
    finish,
    identify,
    ndjson_line,
    run_upload,
    track,
    wait_until,
)

CHUNKS = 6
GOOD, BAD, SKIPPED = 150, 1200, 1200  # per chunk: long stretches of invalid and skipped


def export(path: Path) -> tuple[list[bytes], set[int], int]:
    """The input, the line numbers that must fail (built invalid), and how many records
    are skipped. Every failing line is unique, so a line written twice shows."""
    lines: list[bytes] = []
    failing: set[int] = set()
    skipped = 0
    for chunk in range(CHUNKS):
        for i in range(GOOD):
            n = chunk * GOOD + i
            message = identify(f"u{n}", plan=f"p{n}") if i % 2 else track(f"u{n}", "Seen", n)
            lines.append(ndjson_line(message))
        for i in range(BAD):
            n = chunk * BAD + i
            lines.append(
                b'{"broken": %d' % n
                if i % 2
                else ndjson_line(
                    {"type": "identify", "messageId": f"bad-{n}", "timestamp": TS, "traits": {}}
                )
            )
            failing.add(len(lines))
        for i in range(SKIPPED):
            group = {"type": "group", "userId": f"g{i}", "groupId": "x", "messageId": f"g-{i}"}
            lines.append(ndjson_line(group))
            skipped += 1
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines, failing, skipped


def start(
    sandbox: Sandbox, processes: Processes, report: Path, env: dict[str, str], *args: str | Path
) -> Popen[str]:
    """Start a run and wait until it sends or writes to its report (or ends)."""
    requests = sandbox.stats().requests_by_endpoint["upload"]
    size = report.stat().st_size if report.exists() else 0
    process = processes.start_upload(sandbox.url, *args, env=env)
    wait_until(
        lambda: (
            sandbox.stats().requests_by_endpoint["upload"] > requests
            or (report.exists() and report.stat().st_size != size)
            or process.poll() is not None
        ),
        20,
        "the run to start sending or reporting",
    )
    return process


def check_outputs(lines: list[bytes], failing: set[int], report: Path, failed: Path) -> None:
    """Exactly one report line and one dead letter per failing record, none for the
    others, and every line whole (each report line parses)."""
    data = report.read_bytes()
    assert data.endswith(b"\n"), "the report ends on a whole line"
    entries = [orjson.loads(line) for line in data.splitlines()]
    by_line = Counter(entry["line"] for entry in entries)
    assert {n for n, count in by_line.items() if count > 1} == set(), "a record reported twice"
    assert set(by_line) == failing
    letters = failed.read_bytes()
    assert letters.endswith(b"\n"), "the dead letters end on a whole line"
    assert Counter(letters.splitlines()) == Counter(lines[n - 1] for n in failing)


@pytest.mark.parametrize(("seed", "workers"), [(11, 1), (23, 2)])
def test_kills_and_resumes_leave_each_failed_record_once_in_report_and_dead_letters(
    tmp_path: Path, processes: Processes, seed: int, workers: int
) -> None:
    kills_then_resume(tmp_path, processes, seed, kills=4, workers=workers)


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "workers"), [(5, 1), (6, 2), (7, 1), (8, 2)])
def test_many_kills_and_resumes_leave_each_failed_record_once(
    tmp_path: Path, processes: Processes, seed: int, workers: int
) -> None:
    kills_then_resume(tmp_path, processes, seed, kills=15, workers=workers)


def exit_status(summary: dict[str, Any]) -> int:
    """README, Exit codes: 143 for a run stopped by SIGTERM, else 1 when a record was
    invalid, rejected or failed or a file unreadable, else 0."""
    if summary["interrupted"]:
        return 143
    refused = summary["invalid"] + summary["rejected"] + summary["failed"]
    return 1 if refused or summary["unreadable_files"] else 0


def kills_then_resume(
    tmp_path: Path, processes: Processes, seed: int, kills: int, workers: int
) -> None:
    rng = random.Random(seed)
    source = tmp_path / "export.ndjson"
    lines, failing, skipped = export(source)
    report, failed, state = tmp_path / "report.ndjson", tmp_path / "failed.ndjson", tmp_path / "s"
    args = (
        source,
        "--state",
        state,
        "--report",
        report,
        "--failed",
        failed,
        "--batch-size",
        "10",
        "--retry-unknown",
        "--preset",
        "classic",
        "--workers",
        str(workers),
    )
    # Worker processes on this small input too, in blocks of 64 KiB.
    env = {**ctsync_env(), "CTSYNC_WORKER_START_AFTER": "0", "CTSYNC_WORKER_BLOCK_BYTES": "65536"}
    counted = Counter[str]()  # what the runs that printed a summary counted
    killed_hard = False
    with running_sandbox(SandboxConfig(latency_ms=(10, 40), seed=seed)) as sandbox:
        for _ in range(kills):
            process = start(sandbox, processes, report, env, *args)
            if process.poll() is None:
                time.sleep(rng.uniform(0.0, 0.8))  # a random moment, not a race to win
            how = rng.choice([signal.SIGKILL, signal.SIGTERM])
            if process.poll() is None:
                process.send_signal(how)
            run = finish(process)
            if run.returncode == -signal.SIGKILL:
                killed_hard = True
                continue
            if not run.stdout.strip():
                # A SIGTERM before the run read anything: no summary, by design (issue 23:
                # "once anything was read, a summary"), and one line that says so.
                assert run.returncode == 143, run.describe()
                assert run.stderr.strip().endswith("ctsync: stopped by SIGTERM; nothing was sent")
                continue
            # The SIGTERM comes at a drawn moment, before or after the run ends: the exit
            # status says what the summary says (a SIGTERM after the end changes neither).
            assert run.returncode == exit_status(run.summary), run.describe()
            assert_adds_up(run.summary)
            counted.update(invalid=run.summary["invalid"], skipped=run.summary["skipped"])
            if not run.summary["interrupted"]:  # it ended on its own (exit 0 or 1)
                break
        last = run_upload(sandbox.url, *args, env=env, timeout=60)
        # 1 when it read invalid records, 0 when the earlier runs had read them all.
        assert last.returncode == exit_status(last.summary), last.describe()
        assert_adds_up(last.summary)
        counted.update(invalid=last.summary["invalid"], skipped=last.summary["skipped"])
        stored = sandbox.stats()
    check_outputs(lines, failing, report, failed)
    # A record is counted by one summary at most: a resumed run does not count again what
    # a run that printed its summary counted (a run killed by SIGKILL printed none).
    if killed_hard:
        assert counted["invalid"] <= len(failing) and counted["skipped"] <= skipped
    else:
        assert counted == Counter(invalid=len(failing), skipped=skipped)
    assert stored.events >= CHUNKS * GOOD // 2
