"""End to end: messageId dedupe against the sandbox. Overlapping exports across two runs
on one state file, a kill -9 between them, and a re-drive of `--failed`: every message
is stored once, none twice, and what CleverTap refused is sent again."""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from ctsync.sandbox import SandboxConfig, running_sandbox

from ._support import (
    Finished,
    Message,
    Processes,
    assert_adds_up,
    dead_letters,
    identify,
    run_upload,
    seqs_of,
    track,
    wait_until,
    write_export,
)


def export(folder: Path, name: str, seqs: list[int]) -> Path:
    """An export of one track for each `seq`, with messageId `tr-<seq>`."""
    messages: list[Message] = [track(f"u-{seq % 13}", "Played", seq) for seq in seqs]
    path = folder / name
    write_export(path, messages)
    return path


def overlapping(tmp_path: Path) -> list[Path]:
    """Three exports of 120 messages: a.ndjson 0-59 (0-9 twice), b.ndjson 30-89,
    c.ndjson 60-119."""
    return [
        export(tmp_path, "a.ndjson", [*range(60), *range(10)]),
        export(tmp_path, "b.ndjson", list(range(30, 90))),
        export(tmp_path, "c.ndjson", list(range(60, 120))),
    ]


def skipped_copies(run: Finished) -> int:
    return int(run.summary["skipped_by_reason"].get("duplicate-message-id", 0))


def test_overlapping_exports_in_two_runs_on_one_state_store_each_event_once(
    tmp_path: Path,
) -> None:
    a, b, c = overlapping(tmp_path)
    state = tmp_path / "state.db"
    with running_sandbox(SandboxConfig(latency_ms=(1, 10))) as sandbox:
        first = run_upload(sandbox.url, a, "--preset", "classic", "--state", state)
        second = run_upload(
            sandbox.url, b, c, "--preset", "classic", "--state", state, "--batch-size", "7"
        )
        counts = seqs_of(sandbox.read(lambda store: store.events()))

    for run in (first, second):
        assert run.returncode == 0, run.describe()
        assert_adds_up(run.summary)
    assert counts == Counter(range(120)), "an event is missing or stored twice"
    # By hand: a.ndjson repeats 0-9; b.ndjson repeats 30-59 of a; c.ndjson 60-89 of b.
    assert skipped_copies(first) == 10
    assert skipped_copies(second) == 60
    assert first.summary["accepted"] + second.summary["accepted"] == 120


def test_without_dedupe_every_copy_is_stored(tmp_path: Path) -> None:
    a, b, _ = overlapping(tmp_path)
    with running_sandbox(SandboxConfig()) as sandbox:
        run = run_upload(sandbox.url, a, b, "--preset", "classic", "--no-dedupe")
        counts = seqs_of(sandbox.read(lambda store: store.events()))
    assert run.returncode == 0, run.describe()
    assert run.summary["accepted"] == 130
    assert counts == Counter([*range(60), *range(10), *range(30, 90)])


@pytest.mark.parametrize("seed", [None, 5, 17], ids=lambda s: f"kill-{s or 'first'}")
def test_a_kill_9_between_overlapping_exports_stores_no_event_twice(
    tmp_path: Path, processes: Processes, seed: int | None
) -> None:
    """Killed at a random request of its first run, then resumed: no copy of a message
    that was accepted or on the wire is sent, every other message is. 600 other messages
    come between a.ndjson and its copies, so that the run is killed before it reads
    them: the copies are met by the run that resumes."""
    a, b, c = overlapping(tmp_path)
    exports = [a, export(tmp_path, "between.ndjson", list(range(1000, 1600))), b, c]
    state = tmp_path / "state.db"
    args: tuple[str | Path, ...] = (*exports, "--preset", "classic", "--state", state)
    args += ("--batch-size", "3", "--concurrency", "2", "--workers", "1")
    requests = 1 if seed is None else random.Random(seed).randint(1, 20)
    with running_sandbox(SandboxConfig(latency_ms=(5, 30), seed=seed or 0)) as sandbox:
        process = processes.start_upload(sandbox.url, *args)
        wait_until(
            lambda: (
                sandbox.stats().requests_by_endpoint["upload"] >= requests
                or process.poll() is not None
            ),
            30,
            f"upload request {requests}",
        )
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        runs = [run_upload(sandbox.url, *args)]
        if runs[-1].returncode != 0:
            runs.append(run_upload(sandbox.url, *args))
        counts = seqs_of(sandbox.read(lambda store: store.events()))

    for run in runs:
        assert_adds_up(run.summary)
    assert runs[-1].returncode == 0, runs[-1].describe()
    assert max(counts.values()) == 1, "an event was stored twice"
    unknown = sum(run.summary["failed_by_code"].get("outcome-unknown", 0) for run in runs)
    missing = {*range(120), *range(1000, 1600)} - set(counts)
    assert len(missing) <= unknown, f"{sorted(missing)} missing, {unknown} reported unknown"


def test_a_redrive_of_failed_on_the_same_state_sends_what_clevertap_refused(
    tmp_path: Path,
) -> None:
    """Refused records are not remembered: their dead letters, re-driven with the same
    state, are sent again (refused again here), and once fixed they are accepted; the
    accepted copies in the same re-drive are skipped."""
    bad = {4, 9}
    messages = [
        identify(f"u-{n}", Phone="12345" if n in bad else "+14155550123") for n in range(12)
    ]
    export, failed, state = tmp_path / "x.ndjson", tmp_path / "failed.ndjson", tmp_path / "s.db"
    lines = write_export(export, messages)
    common = ("--validate", "off", "--state", state)
    with running_sandbox(SandboxConfig()) as sandbox:
        first = run_upload(sandbox.url, export, *common, "--failed", failed)
        assert first.summary["rejected_by_code"] == {"516": 2}, first.describe()
        assert sorted(dead_letters(failed)) == sorted(lines[n] for n in bad)
        again = tmp_path / "again.ndjson"
        again.write_bytes(failed.read_bytes() + lines[0] + b"\n")  # and one accepted copy
        redriven = run_upload(sandbox.url, again, *common)
        fixed = tmp_path / "fixed.ndjson"
        fixed.write_bytes(failed.read_bytes().replace(b'"12345"', b'"+14155550199"'))
        third = run_upload(sandbox.url, fixed, *common)
        writes = sandbox.read(lambda store: store.profile_writes())

    assert redriven.summary["rejected_by_code"] == {"516": 2}, redriven.describe()
    assert redriven.summary["skipped_by_reason"] == {"duplicate-message-id": 1}
    assert third.returncode == 0, third.describe()
    assert third.summary["accepted"] == 2
    assert set(writes) == {f"u-{n}" for n in range(12)}
    for run in (first, redriven, third):
        assert_adds_up(run.summary)
