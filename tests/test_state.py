"""Resumable runs: a re-run sends nothing twice, picks up growth, and one run at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import orjson
import pytest

from ctsync import api
from ctsync.errors import LockedError, UsageError
from ctsync.ledger import ACCEPTED, Ledger, Summary, Verdict
from ctsync.model import OnWire
from ctsync.pipeline import RunOptions, UploadRun
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import Source, collect_sources
from ctsync.settings import ClientSettings
from ctsync.state import Span, StateFile
from ctsync.summary import Routine
from tests.helpers import FakeSender, Kind, assert_accounted


class CleverTap:
    """A stand-in CleverTap that stores every identity it is sent, in order."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            records = orjson.loads(request.content)["d"]
            with self.lock:
                self.received.extend(r["identity"] for r in records)
            return httpx.Response(200, json={"status": "success", "processed": len(records)})

        return httpx.MockTransport(handle)


def write_export(path: Path, users: range) -> None:
    lines = (
        orjson.dumps({"type": "identify", "userId": f"u{i}", "traits": {"i": i}}) + b"\n"
        for i in users
    )
    path.write_bytes(b"".join(lines))


def upload(path: Path, state: Path, server: CleverTap, settings: ClientSettings) -> Summary:
    job = api.UploadJob(
        paths=[str(path)], client=settings, state=state, run=RunOptions(batch_size=10)
    )
    return api.upload(job, transport=server.transport())


def test_a_rerun_sends_nothing_again(tmp_path: Path, settings: ClientSettings) -> None:
    export, state, server = tmp_path / "a.ndjson", tmp_path / "state.db", CleverTap()
    write_export(export, range(95))
    first = upload(export, state, server, settings)
    assert first.accepted == 95 and len(server.received) == 95
    for _ in range(4):  # the nightly cron job, again and again: a finished file stays so
        again = upload(export, state, server, settings)
        assert again.read == 0 and len(server.received) == 95
        assert again.routine[Routine.FINISHED_EARLIER] == 1
        assert "1 input finished in an earlier run; skipped" in again.note_lines()


def test_a_growing_file_sends_only_what_was_added(tmp_path: Path, settings: ClientSettings) -> None:
    export, state, server = tmp_path / "a.ndjson", tmp_path / "state.db", CleverTap()
    write_export(export, range(30))
    upload(export, state, server, settings)
    with export.open("ab") as out:
        out.write(orjson.dumps({"type": "identify", "userId": "late", "traits": {}}) + b"\n")
    summary = upload(export, state, server, settings)
    assert summary.read == 1
    assert sorted(server.received[:30]) == sorted(f"u{i}" for i in range(30))
    assert server.received[30:] == ["late"]


def test_a_rewritten_file_is_read_from_the_start(tmp_path: Path, settings: ClientSettings) -> None:
    export, state, server = tmp_path / "a.ndjson", tmp_path / "state.db", CleverTap()
    write_export(export, range(30))
    upload(export, state, server, settings)
    write_export(export, range(100, 140))
    summary = upload(export, state, server, settings)
    assert summary.read == 40
    assert any("changed since the last run" in note for note in summary.notes)


def test_resume_after_a_crash_sends_only_unfinished_lines(
    tmp_path: Path, settings: ClientSettings
) -> None:
    export, state_path, server = tmp_path / "a.ndjson", tmp_path / "state.db", CleverTap()
    write_export(export, range(100))
    # What a killed run leaves: lines 1-40 done, 41-50 in flight, 51-60 read but not
    # sent, 61-70 answered out of order, and nothing read after line 70.
    state = StateFile(state_path)
    progress = state.open_input(Source(str(export), export, export.stat().st_size))
    progress.position = (70, 0)
    state.save(
        progress,
        [Span((41, 0, 0), (50, 0, 0), sent=True), Span((51, 0, 0), (60, 0, 0), sent=False)],
    )
    state.close()
    summary = upload(export, state_path, server, settings)
    # Profile updates are safe to repeat: the ones on the wire are sent again.
    expected = [f"u{i - 1}" for i in [*range(41, 61), *range(71, 101)]]
    assert sorted(server.received) == sorted(expected)
    assert summary.read == 50
    assert summary.routine[Routine.RESENT] == 10


def test_one_run_at_a_time(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.db")
    try:
        with pytest.raises(LockedError, match=r"another ctsync run .*pid"):
            StateFile(tmp_path / "state.db")
    finally:
        state.close()
    StateFile(tmp_path / "state.db").close()  # free again once the holder is gone


def test_state_needs_files_and_a_real_run(tmp_path: Path, settings: ClientSettings) -> None:
    with pytest.raises(UsageError, match="stdin"):
        api.upload(api.UploadJob(paths=["-"], client=settings, state=tmp_path / "s.db"))
    export = tmp_path / "a.ndjson"
    write_export(export, range(1))
    with pytest.raises(UsageError, match="dry run"):
        api.upload(api.UploadJob(paths=[str(export)], state=tmp_path / "s.db"))


def test_not_a_state_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_text("this is not sqlite, just text that goes on long enough" * 10)
    with pytest.raises(UsageError, match="not a ctsync state file"):
        StateFile(bogus)


class Stopper(FakeSender):
    """A sender that accepts every upload after a short wait. It can stop the run just
    before it answers request number `stop_at`, and calls `on_request` as each goes out."""

    def __init__(
        self, stop_at: int | None = None, on_request: Callable[[], None] | None = None
    ) -> None:
        self.stop_at = stop_at
        self.on_request = on_request
        self.run: UploadRun | None = None
        self.received: list[str] = []
        self.requests = 0
        self.retries = 0

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        assert kind == "upload", "no deletions in this export"
        self.requests += 1
        if on_wire is not None:
            on_wire()
        if self.on_request is not None:
            self.on_request()
        number = self.requests
        await asyncio.sleep(0.01)
        if number == self.stop_at and self.run is not None:
            self.run.stop()  # while the reader waits for room in the window
        self.received += [str(orjson.loads(b)["identity"]) for b in bodies]
        return [ACCEPTED] * len(bodies)


def run_with_state(export: Path, state_path: Path, sender: Stopper) -> Summary:
    state = StateFile(state_path)
    try:
        sender.run = UploadRun(
            collect_sources([str(export)]),
            mapper=build_preset(Preset.ACTIONS, MappingOptions()),
            sender=sender,
            ledger=Ledger(),
            options=RunOptions(batch_size=10, window=2, lanes=1),
            state=state,
        )
        return asyncio.run(sender.run.run())
    finally:
        state.close()


def pending_spans(state_path: Path) -> list[list[int]]:
    with sqlite3.connect(state_path) as db:
        (pending,) = db.execute("SELECT pending FROM inputs").fetchone()
    spans: list[list[int]] = orjson.loads(pending)
    return spans


def test_a_stopped_run_leaves_what_it_did_not_send_for_the_next_run(tmp_path: Path) -> None:
    export, state_path = tmp_path / "a.ndjson", tmp_path / "state.db"
    write_export(export, range(95))
    first = Stopper(stop_at=1)
    summary = run_with_state(export, state_path, first)
    assert summary.interrupted
    assert_accounted(summary)
    assert summary.accepted == len(first.received) < 95
    assert summary.failed["interrupted"] == summary.read - summary.accepted > 0

    second = Stopper()
    rerun = run_with_state(export, state_path, second)
    assert_accounted(rerun)
    assert rerun.accepted == len(second.received)
    assert sorted(first.received + second.received) == sorted(f"u{i}" for i in range(95))


def test_the_state_marks_a_batch_in_flight_before_it_goes_out(tmp_path: Path) -> None:
    """A kill -9 while the request is on the wire must leave its lines pending and
    marked sent: the next run re-sends them and says their outcome was unknown."""
    export, state_path = tmp_path / "a.ndjson", tmp_path / "state.db"
    write_export(export, range(25))
    seen: list[list[list[int]]] = []
    run_with_state(
        export, state_path, Stopper(on_request=lambda: seen.append(pending_spans(state_path)))
    )
    # Lines 1-10 (each record's part 0, operation 0), sent, while the first request is out.
    assert seen[0][0] == [[1, 0, 0], [10, 0, 0], 1]
    assert pending_spans(state_path) == []
