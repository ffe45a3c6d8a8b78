"""End to end: runs killed with SIGKILL resume without sending anything twice beyond what
was in flight; SIGINT and SIGTERM drain, account for everything and exit 130/143; a
second run on the same state file exits 4 at once."""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest

from ctsync.sandbox import Sandbox, SandboxConfig, running_sandbox

from ._support import (
    Finished,
    Message,
    Processes,
    assert_adds_up,
    delete_user,
    duplicates,
    finish,
    identify,
    in_flight_noted,
    run_upload,
    seqs_of,
    track,
    wait_until,
    write_export,
)

EVENTS = 2000
REQUESTS = EVENTS // 20  # with --batch-size 20


def started_sending(sandbox: Sandbox, process: subprocess.Popen[str]) -> None:
    """Wait until the sandbox has seen the run's first upload request."""
    wait_until(
        lambda: sandbox.stats().requests_by_endpoint["upload"] > 0 or process.poll() is not None,
        15,
        "the first upload request",
    )
    assert process.poll() is None, "the run ended before it sent anything"


def kill_at_random(sandbox: Sandbox, process: subprocess.Popen[str], seed: int | None) -> None:
    """SIGKILL the run once the sandbox has seen a number of its upload requests drawn
    from `seed` (with `seed` None: its first), at most half of them: it is still sending."""
    requests = 1 if seed is None else random.Random(seed).randint(1, REQUESTS // 2)
    wait_until(
        lambda: (
            sandbox.stats().requests_by_endpoint["upload"] >= requests or process.poll() is not None
        ),
        30,
        f"upload request {requests}",
    )
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL


def stopped_by(
    signal_number: signal.Signals, sandbox: Sandbox, processes: Processes, *args: str | Path
) -> Finished:
    """Start `ctsync upload *args`, send it `signal_number` once the sandbox has seen 3 of
    its requests (answered after 200 ms: some are in flight), and wait for it to end."""
    process = processes.start_upload(sandbox.url, *args)
    wait_until(
        lambda: sandbox.stats().requests_by_endpoint["upload"] >= 3 or process.poll() is not None,
        30,
        "three upload requests",
    )
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal_number)
    return finish(process, timeout=40)


def resume_until_done(url: str, *args: str | Path) -> list[Finished]:
    """Re-run with the same state file until a run exits 0 (at most 3 runs)."""
    runs: list[Finished] = []
    for _ in range(3):
        run = run_upload(url, *args, timeout=30)
        runs.append(run)
        # The kill lands at a random point: a run exits 1 exactly when it fails records
        # (those on the wire at the kill, outcome-unknown), else 0.
        failed = sum(run.summary["failed_by_code"].values())
        assert run.returncode == (1 if failed else 0), run.describe()
        assert_adds_up(run.summary)
        if run.returncode == 0:
            break
    assert runs[-1].returncode == 0, runs[-1].describe()
    return runs


@pytest.mark.parametrize("seed", [None, 101, 202, 303], ids=lambda s: f"kill-{s or 'first'}")
def test_kill_9_then_resume_never_stores_an_event_twice_and_reports_what_is_unknown(
    tmp_path: Path, processes: Processes, seed: int | None
) -> None:
    export, state = tmp_path / "events.ndjson", tmp_path / "state.db"
    write_export(export, [track(f"u-{i % 61}", "Played", i) for i in range(EVENTS)])
    args: tuple[str | Path, ...] = (export, "--preset", "classic", "--state", state)
    args += ("--batch-size", "20", "--concurrency", "4")

    with running_sandbox(SandboxConfig(latency_ms=random.Random(seed).randint(20, 50))) as sandbox:
        kill_at_random(sandbox, processes.start_upload(sandbox.url, *args), seed)
        before = sandbox.stats().events
        runs = resume_until_done(sandbox.url, *args)
        counts = seqs_of(sandbox.read(lambda store: store.events()))

    assert before < EVENTS, "the killed run had already stored everything"
    # Events on the wire at the kill may or may not be stored: the resumed run does not
    # send them again (they would be stored twice) and reports each as outcome-unknown.
    unknown = sum(run.summary["failed_by_code"].get("outcome-unknown", 0) for run in runs)
    assert duplicates(counts) == 0, "an event was stored twice"
    assert sum(in_flight_noted(run.summary) for run in runs) == 0
    missing = set(range(EVENTS)) - set(counts)
    assert len(missing) <= unknown, f"{len(missing)} events missing, {unknown} reported unknown"


@pytest.mark.parametrize("seed", [None, 7], ids=lambda s: f"kill-{s or 'first'}")
def test_kill_9_then_resume_leaves_no_profile_missing(
    tmp_path: Path, processes: Processes, seed: int | None
) -> None:
    export, state = tmp_path / "profiles.ndjson", tmp_path / "state.db"
    users = [f"u-{i}" for i in range(EVENTS)]
    write_export(export, [identify(user, n=n) for n, user in enumerate(users)])
    args = (export, "--state", state, "--batch-size", "20", "--concurrency", "4")

    with running_sandbox(SandboxConfig(latency_ms=random.Random(seed).randint(20, 50))) as sandbox:
        kill_at_random(sandbox, processes.start_upload(sandbox.url, *args), seed)
        before = sandbox.stats().profiles
        runs = resume_until_done(sandbox.url, *args)
        writes = sandbox.read(lambda store: store.profile_writes())

    assert before < EVENTS
    assert set(writes) == set(users), "a profile is missing after the resume"
    noted = sum(in_flight_noted(run.summary) for run in runs)
    rewritten = sum(writes.values()) - len(users)
    assert rewritten <= noted, (
        f"{rewritten} profile records sent twice, but the resumed run noted only {noted} "
        f"records in flight; notes: {[run.summary['notes'] for run in runs]}"
    )


def test_sigint_lets_requests_in_flight_finish_and_exits_130(
    tmp_path: Path, processes: Processes
) -> None:
    export = tmp_path / "events.ndjson"
    write_export(export, [track(f"u-{i % 61}", "Played", i) for i in range(EVENTS)])

    with running_sandbox(SandboxConfig(latency_ms=200)) as sandbox:
        run = stopped_by(
            signal.SIGINT, sandbox, processes, export, "--preset", "classic", "--batch-size", "20"
        )
        stats = sandbox.stats()
        counts = seqs_of(sandbox.read(lambda store: store.events()))

    assert run.returncode == 130, run.describe()
    summary = run.summary
    assert_adds_up(summary)
    assert summary["interrupted"] is True and summary["signal"] == "SIGINT"
    assert 0 < summary["accepted"] < EVENTS
    assert set(summary["failed_by_code"]) <= {"interrupted", "aborted"}
    # In-flight requests were let finish: the sandbox holds exactly what was accepted.
    assert stats.in_flight["upload"] == 0
    assert sum(counts.values()) == len(counts) == summary["accepted"]


def test_sigterm_exits_143_and_a_rerun_with_state_sends_the_rest_once(
    tmp_path: Path, processes: Processes
) -> None:
    export, state = tmp_path / "events.ndjson", tmp_path / "state.db"
    write_export(export, [track(f"u-{i % 61}", "Played", i) for i in range(EVENTS)])
    args = (export, "--preset", "classic", "--batch-size", "20", "--state", state)

    with running_sandbox(SandboxConfig(latency_ms=200)) as sandbox:
        first = stopped_by(signal.SIGTERM, sandbox, processes, *args)
        stored_first = sandbox.stats().events
        second = run_upload(sandbox.url, *args, timeout=40)
        counts = seqs_of(sandbox.read(lambda store: store.events()))

    assert first.returncode == 143, first.describe()
    assert_adds_up(first.summary)
    assert first.summary["interrupted"] is True and first.summary["signal"] == "SIGTERM"
    assert 0 < first.summary["accepted"] == stored_first < EVENTS
    assert second.returncode == 0, second.describe()
    assert_adds_up(second.summary)
    assert in_flight_noted(second.summary) == 0  # the first run drained: nothing unknown
    missing = sorted(set(range(EVENTS)) - set(counts))
    assert not missing, f"{len(missing)} events never stored, e.g. seq {missing[:5]}"
    assert duplicates(counts) == 0
    assert first.summary["accepted"] + second.summary["accepted"] == EVENTS


def test_sigterm_with_deletions_pending_and_a_rerun_with_state_deletes_every_user(
    tmp_path: Path, processes: Processes
) -> None:
    """Identifies and Delete Users of different users: uploads and deletions go in
    separate batches, so when the run stops a deletion batch is still being filled."""
    export, state = tmp_path / "mixed.ndjson", tmp_path / "state.db"
    messages: list[Message] = []
    for i in range(1500):
        messages += [identify(f"a-{i}", n=i), delete_user(f"d-{i}")]
    write_export(export, messages)
    args = (export, "--batch-size", "20", "--state", state)

    with running_sandbox(SandboxConfig(latency_ms=200)) as sandbox:
        first = stopped_by(signal.SIGTERM, sandbox, processes, *args)
        second = run_upload(sandbox.url, *args, timeout=40)
        deleted = [d.value for d in sandbox.read(lambda store: store.deletions())]
        writes = sandbox.read(lambda store: store.profile_writes())

    assert first.returncode == 143, first.describe()
    assert_adds_up(first.summary)
    assert 0 < first.summary["accepted"] < 3000
    assert second.returncode == 0, second.describe()
    assert_adds_up(second.summary)
    missing = sorted({f"d-{i}" for i in range(1500)} - set(deleted), key=lambda d: int(d[2:]))
    assert not missing, (
        f"{len(missing)} users were never deleted, e.g. {missing[:3]}; first run: "
        f"failed {first.summary['failed_by_code']}, second run read {second.summary['read']}"
    )
    assert len(deleted) == 1500  # each deletion sent once
    assert set(writes) == {f"a-{i}" for i in range(1500)}
    twice = sorted((user for user, n in writes.items() if n > 1), key=lambda u: int(u[2:]))
    assert not twice, (
        f"{len(twice)} identifies answered in the first run were sent again, e.g. {twice[:3]}"
    )


def test_a_second_run_on_the_same_state_exits_4_at_once(
    tmp_path: Path, processes: Processes
) -> None:
    export, state = tmp_path / "profiles.ndjson", tmp_path / "state.db"
    write_export(export, [identify(f"u-{i}", n=i) for i in range(1000)])
    args = (export, "--state", state, "--batch-size", "10", "--concurrency", "5")

    with running_sandbox(SandboxConfig()) as sandbox:
        # The first run's answers are held: it cannot end, nor release the state, until
        # the second one has been refused (a second run that waited would never end).
        sandbox.hold()
        holder = processes.start_upload(sandbox.url, *args)
        started_sending(sandbox, holder)
        second = run_upload(sandbox.url, *args, timeout=60)
        still_running = holder.poll() is None
        sandbox.release()
        first = finish(holder, timeout=60)
        writes = sandbox.read(lambda store: store.profile_writes())

    assert second.returncode == 4, second.describe()
    assert still_running, "the first run ended before the second one was refused"
    assert "another ctsync run" in second.stderr
    assert f"pid {holder.pid}" in second.stderr
    assert str(state) in second.stderr.replace("\n", "")
    assert "Traceback" not in second.stderr
    assert second.stdout == ""  # refused before it read or sent anything
    assert first.returncode == 0, first.describe()
    assert first.summary["accepted"] == 1000
    assert writes == {f"u-{i}": 1 for i in range(1000)}
