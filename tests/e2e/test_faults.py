"""End to end: a full disk and signals at any moment.

A full disk is a real one: a 64 KiB tmpfs mounted in the test's directory (root only;
skipped elsewhere), filled to a random level before the run. SIGTERM comes at random
moments from the first millisecond of the process, importing included."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import orjson
import pytest

from ctsync.sandbox import SandboxConfig, running_sandbox

from ._support import (
    TS,
    Processes,
    assert_adds_up,
    ctsync_env,
    duplicates,
    finish,
    identify,
    ndjson_line,
    run_upload,
    seqs_of,
    track,
    upload_command,
    wait_until,
)

TMPFS_BYTES = 8 << 20  # room for the state's write-ahead log, which grows to 4 MiB


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def mixed_export(path: Path, count: int) -> tuple[list[bytes], set[int]]:
    """Profiles, one in three lines invalid (each unique): the line numbers that fail."""
    lines, failing = [], set()
    for n in range(count):
        if n % 3 == 1:
            lines.append(b'{"broken": %d' % n)
            failing.add(n + 1)
        else:
            lines.append(ndjson_line(identify(f"u{n}", plan=f"p{n}")))
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines, failing


def whole_lines(path: Path) -> list[bytes]:
    """The lines of an output, checking it ends on a whole line."""
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), f"{path.name} ends with half a line"
    return data.splitlines()


@pytest.mark.parametrize("seed", range(8))
def test_a_full_disk_keeps_the_counts_and_whole_lines_and_a_resume_reports_each_once(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    source = tmp_path / "export.ndjson"
    lines, failing = mixed_export(source, 3000)
    with small_disk(tmp_path / "disk") as disk, running_sandbox(SandboxConfig()) as sandbox:
        filler = disk / "filler"
        filler.write_bytes(b"x" * (TMPFS_BYTES - rng.randrange(4096, 600 * 1024)))
        report, failed, state = disk / "report.ndjson", disk / "failed.ndjson", disk / "s"
        args = (
            source,
            "--state",
            state,
            "--report",
            report,
            "--failed",
            failed,
            "--batch-size",
            "50",
        )
        full = run_upload(sandbox.url, *args)
        assert "Traceback" not in full.stderr, full.describe()
        if full.returncode == 2:
            assert "disk is full" in full.stderr or "No space left" in full.stderr, full.stderr
            if full.stdout.strip():  # the run had started: its counts still add up
                assert_adds_up(full.summary)
                summary = full.summary
                not_done = summary["read"] - summary["accepted"] - summary["invalid"]
                codes = summary["failed_by_code"]
                assert set(codes) <= {"disk-full", "aborted"}, codes
                assert sum(codes.values()) == not_done
        else:
            assert full.returncode == 1, full.describe()  # it fitted: the invalid records
        reported_before, _ = len(whole_lines(report)), whole_lines(failed)
        filler.unlink()  # room again: the same command resumes
        again = run_upload(sandbox.url, *args)
        # Where the disk filled is drawn. The resume reports at least the invalid lines
        # the first run could not write (and those it wrote after its last checkpoint,
        # which it takes out first), and exits 1 exactly when it reported some.
        assert_adds_up(again.summary)
        assert again.summary["invalid"] >= len(failing) - reported_before
        assert again.returncode == (1 if again.summary["invalid"] else 0), again.describe()
        reported = Counter(orjson.loads(line)["line"] for line in whole_lines(report))
        letters = Counter(whole_lines(failed))
    assert reported == Counter(failing)
    assert letters == Counter(lines[n - 1] for n in failing)


def test_a_full_disk_before_the_run_is_called_a_full_disk(tmp_path: Path) -> None:
    source = tmp_path / "export.ndjson"
    mixed_export(source, 10)
    with small_disk(tmp_path / "disk") as disk, running_sandbox(SandboxConfig()) as sandbox:
        filler = disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"x" * 1024)
        for flag, name in (("--state", "s"), ("--report", "report.ndjson")):
            done = run_upload(sandbox.url, source, "--state", disk / "s", flag, disk / name)
            assert done.returncode == 2, done.describe()
            assert "the disk is full" in done.stderr, done.stderr
            assert "not a ctsync state file" not in done.stderr
            assert "Traceback" not in done.stderr
        assert sandbox.stats().requests_by_endpoint["upload"] == 0


def catches(pid: int, how: signal.Signals) -> bool:
    """Whether the process has a handler for the signal (the kernel's SigCgt mask)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (how - 1) & 1)
    return False


def test_sigterm_while_the_cli_loads_ends_with_143_never_a_crash(
    tmp_path: Path, processes: Processes
) -> None:
    """Raised from the signal handler in the middle of a C extension's initialisation
    (orjson's, about 20 ms after start), SIGTERM crashed the interpreter with SIGSEGV in
    half of the tries: the signal now waits for the CLI's import to end. 24 moments over
    the first 60 ms after ctsync handles SIGTERM, each one must end with 143 and a word."""
    source = tmp_path / "export.ndjson"
    source.write_bytes(ndjson_line({**identify("u1"), "timestamp": TS}) + b"\n")
    for delay in [0.005 * step for step in range(1, 13)] * 2:
        process = processes.start_upload("http://127.0.0.1:9", source)
        wait_until(partial(catches, process.pid, signal.SIGTERM), 20, "ctsync to start")
        time.sleep(delay)  # a kill moment, not a race: every moment must end the same
        process.send_signal(signal.SIGTERM)
        run = finish(process)
        assert run.returncode == 143, (delay, run.describe())
        assert "Traceback" not in run.stderr and "ctsync: " in run.stderr, run.describe()


@pytest.mark.parametrize(
    ("seed", "how"), [(seed, signal.SIGTERM) for seed in range(6)] + [(6, signal.SIGINT)]
)
def test_sigterm_at_any_moment_ends_with_143_and_a_summary_once_anything_was_read(
    tmp_path: Path, processes: Processes, seed: int, how: signal.Signals
) -> None:
    """And Ctrl-C (SIGINT) with 130."""
    code = 143 if how is signal.SIGTERM else 130
    rng = random.Random(seed)
    source = tmp_path / "export.ndjson"
    source.write_bytes(
        b"".join(ndjson_line({**identify(f"u{n}"), "timestamp": TS}) + b"\n" for n in range(3000))
    )
    with running_sandbox(SandboxConfig(latency_ms=20)) as sandbox:
        # The moment comes from the process having started (Popen returns once it runs
        # the new program): from its first millisecond, importing included.
        process = processes.start_upload(sandbox.url, source, "--batch-size", "20")
        if how is signal.SIGINT:
            # Python's own SIGINT handler (a KeyboardInterrupt traceback) is there before
            # ctsync runs: from the moment ctsync handles signals (its SIGTERM handler).
            wait_until(lambda: catches(process.pid, signal.SIGTERM), 20, "ctsync to start")
        time.sleep(rng.choice([0.0, 0.001, rng.uniform(0.0, 0.6), rng.uniform(0.3, 1.5)]))
        handled = catches(process.pid, how)
        process.send_signal(how)
        run = finish(process)
        sent = sandbox.stats().requests_by_endpoint["upload"]
    assert "Traceback" not in run.stderr, run.describe()
    if run.stdout.strip():
        summary = run.summary
        assert_adds_up(summary)
        # The exit status says what the summary says.
        assert run.returncode == (code if summary["interrupted"] else 0), run.describe()
        return
    # No summary: nothing was sent. Either ctsync said it stopped before its run, or the
    # signal came before Python ran any of ctsync (the shell shows 143 for that too).
    assert sent == 0, run.describe()
    if run.returncode < 0 and not handled:
        # Before ctsync handles the signal the process is Python's own start-up: the
        # signal ends it (once in CI it died of SIGSEGV 5 ms after it was started, before
        # any of ctsync could run; not seen in 150 tries here).
        assert run.stderr == "", run.describe()
    elif run.returncode == -how:
        raise AssertionError(f"ctsync handled {how.name}, yet it ended the process")
    else:
        assert run.returncode == code, run.describe()
        said = "stopped by SIGTERM" if code == 143 else "interrupted (Ctrl-C)"
        said += "; nothing was sent"
        assert run.stderr.strip().endswith(f"ctsync: {said}"), run.describe()


@pytest.mark.parametrize(
    ("command", "how", "code", "said"),
    [
        ("upload", signal.SIGTERM, 143, "ctsync: stopped by SIGTERM; nothing was sent"),
        ("upload", signal.SIGINT, 130, "ctsync: interrupted (Ctrl-C); nothing was sent"),
        ("mappings", signal.SIGINT, 130, "ctsync: interrupted (Ctrl-C)"),
    ],
)
def test_a_signal_while_the_cli_is_imported_ends_with_one_line(
    tmp_path: Path, command: str, how: signal.Signals, code: int, said: str
) -> None:
    """The signal that ctsync is importing its CLI: `-X importtime` writes a line as each
    module is imported, and typer is imported by the CLI only (half a second in all).
    Ctrl-C said only "interrupted"; a command that sends says nothing was sent."""
    source = tmp_path / "export.ndjson"
    mixed_export(source, 10)
    args = ["upload", "--dry-run", str(source)] if command == "upload" else ["mappings", "show"]
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "ctsync", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if line.split("|")[-1].strip() == "typer.colors":
                break
        else:
            raise AssertionError("typer was never imported")
        process.send_signal(how)
        stdout, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code
    assert rest.rstrip().splitlines()[-1] == said, rest[-500:]
    assert stdout == ""


@pytest.mark.parametrize("room", [3000, 40_000])
def test_a_full_disk_under_the_request_output_leaves_whole_lines(tmp_path: Path, room: int) -> None:
    source = tmp_path / "export.ndjson"
    mixed_export(source, 3000)
    with small_disk(tmp_path / "disk") as disk:
        (disk / "filler").write_bytes(b"x" * (TMPFS_BYTES - room))
        output = disk / "requests.ndjson"
        command = [sys.executable, "-m", "ctsync", "upload", "--dry-run", "--json"]
        done = subprocess.run(
            [*command, "--batch-size", "10", "--output", str(output), str(source)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        requests = [orjson.loads(line) for line in whole_lines(output)]
    assert done.returncode == 2, done.stderr
    assert "requests.ndjson: cannot write the request output (No space left" in done.stderr
    assert "Traceback" not in done.stderr
    assert_adds_up(orjson.loads(done.stdout))
    assert all(request["path"] == "/1/upload" for request in requests)


OLD = "72e494f"  # ctsync 0.1.0


def test_a_state_of_0_1_killed_mid_run_is_refused_then_resumed_with_retry_unknown(
    tmp_path: Path, processes: Processes
) -> None:
    """ctsync 0.1.0 itself (from this repository's history) is killed while requests are
    on the wire; this version refuses its state with two ways forward, and the second way
    (--retry-unknown) stores every event, none of them more than once beyond the lines
    0.1.0 had on the wire."""
    old = tmp_path / "old"
    old.mkdir()
    root = Path(__file__).resolve().parents[2]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", OLD, "ctsync"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"ctsync 0.1.0 ({OLD}) is not in this checkout's history")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    source = tmp_path / "export.ndjson"
    count = 3000
    source.write_bytes(
        b"".join(
            ndjson_line(track(f"u{n % 300}", "Played", n) if n % 4 else identify(f"u{n}")) + b"\n"
            for n in range(count)
        )
    )
    state = tmp_path / "s"
    args = (source, "--state", state, "--batch-size", "50", "--preset", "classic")
    with running_sandbox(SandboxConfig(latency_ms=60)) as sandbox:
        killed = subprocess.Popen(
            [*upload_command(sandbox.url, *args)],
            cwd=old,
            env=ctsync_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: (
                    sandbox.stats().requests_by_endpoint["upload"] >= 5 or killed.poll() is not None
                ),
                30,
                "ctsync 0.1.0 to send",
            )
            assert killed.poll() is None, "0.1.0 finished before it could be killed"
            killed.send_signal(signal.SIGKILL)
        finally:
            killed.wait(10)
        with sqlite3.connect(state) as db:
            pending = orjson.loads(db.execute("SELECT pending FROM files").fetchone()[0])
        on_wire = sum(last - first + 1 for first, last, sent in pending if sent)
        if not on_wire:
            pytest.skip("0.1.0 was killed with nothing on the wire")
        refused = run_upload(sandbox.url, *args)
        assert refused.returncode == 2, refused.describe()
        assert "written by ctsync 0.1" in refused.stderr and "--retry-unknown" in refused.stderr
        assert "Traceback" not in refused.stderr
        resumed = run_upload(sandbox.url, *args, "--retry-unknown")
        assert resumed.returncode == 0, resumed.describe()
        assert_adds_up(resumed.summary)
        stored = seqs_of(sandbox.read(lambda store: store.events()))
    events = {n for n in range(count) if n % 4}
    assert set(stored) == events  # every event, none reported unknown and left unsent
    assert duplicates(stored) <= on_wire
