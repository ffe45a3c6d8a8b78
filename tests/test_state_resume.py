"""Resuming: what an earlier run left pending is counted and reported once, and a state
written by ctsync 0.1 is taken over or refused with a way forward."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from ctsync import api
from ctsync.errors import UsageError
from ctsync.reader import Source
from ctsync.run import RunOptions
from ctsync.settings import ClientSettings, RetryPolicy, Secret
from ctsync.state import Span, StateFile
from tests.helpers import ACCOUNT_ID, BASE_URL, PASSCODE, CleverTap, upload_with_state, write_export

KINDS = st.lists(st.sampled_from(["good", "invalid", "skipped"]), min_size=1, max_size=30)


@examples(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=KINDS, data=st.data())
def test_a_resumed_run_counts_and_reports_once_what_lies_in_a_pending_span(
    tmp_path_factory: pytest.TempPathFactory, kinds: list[str], data: st.DataObject
) -> None:
    """An earlier run read through line R and left a batch pending from line a to line b
    (both profiles it sent in that batch): the skipped and invalid records between them
    were counted and reported by that run, and the resumed run must not again. Expected
    by hand: it sends the profiles from a to b and after R, and counts and reports only
    what lies after R."""
    good = [n for n, kind in enumerate(kinds, 1) if kind == "good"]
    assume(good)
    first = data.draw(st.sampled_from(good))
    last = data.draw(st.sampled_from([n for n in good if n >= first]))
    read_through = data.draw(st.integers(last, len(kinds)))
    where = tmp_path_factory.mktemp("resume")
    export, state_path, report = where / "a.ndjson", where / "s.db", where / "report.ndjson"
    export.write_bytes(
        b"".join(
            (
                orjson.dumps({"type": "identify", "userId": f"u{n}", "traits": {}})
                if kind == "good"
                else b'{"broken": %d' % n
                if kind == "invalid"
                else orjson.dumps({"type": "group", "userId": f"u{n}", "groupId": "g"})
            )
            + b"\n"
            for n, kind in enumerate(kinds, 1)
        )
    )
    state = StateFile(state_path)
    progress = state.open_input(Source(str(export), export, export.stat().st_size))
    progress.position = (read_through, 0)
    state.save(progress, [Span((first, 0, 0), (last, 0, 0), sent=False)])
    state.close()
    server = CleverTap()
    job = api.UploadJob(
        paths=[str(export)],
        client=client_settings(),
        state=state_path,
        outputs=api.Outputs(report=report),
    )
    summary = api.upload(job, transport=server.transport())
    after = {n: kind for n, kind in enumerate(kinds, 1) if n > read_through}
    assert sorted(server.received) == sorted(
        f"u{n}" for n in good if first <= n <= last or n > read_through
    )
    assert summary.invalid.total() == list(after.values()).count("invalid")
    assert summary.skipped.total() == list(after.values()).count("skipped")
    reported = [orjson.loads(line)["line"] for line in report.read_bytes().splitlines()]
    assert reported == [n for n, kind in after.items() if kind == "invalid"]


def client_settings() -> ClientSettings:
    return ClientSettings(
        account_id=ACCOUNT_ID,
        passcode=Secret(PASSCODE),
        base_url=BASE_URL,
        concurrency=2,
        retry=RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.01),
    )


def state_of_0_1(path: Path, export: Path, pending: str) -> None:
    """A state file as ctsync 0.1.0 (72e494f) wrote it: pending *lines* [first, last, sent],
    read through line 9."""
    probe = StateFile(path.with_name("probe.db"))
    progress = probe.open_input(Source(str(export), export, export.stat().st_size))
    probe.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, fingerprint TEXT"
            " NOT NULL, fingerprint_len INTEGER NOT NULL, done_through INTEGER NOT NULL,"
            " read_through INTEGER NOT NULL, pending TEXT NOT NULL, complete INTEGER NOT NULL,"
            " updated REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, 2, 9, ?, 0, 0)",
            (progress.key, progress.size, progress.fingerprint, progress.fingerprint_len, pending),
        )


def test_a_state_of_0_1_with_requests_on_the_wire_is_refused_with_two_ways_forward(
    tmp_path: Path, settings: ClientSettings
) -> None:
    """0.1 kept the lines around a request on the wire, not its records: taken as unknown,
    every record of those lines that is an event now was reported unknown, never sent."""
    export, state_path, server = tmp_path / "a.ndjson", tmp_path / "state.db", CleverTap()
    write_export(export, range(12))
    state_of_0_1(state_path, export, "[[3, 6, 1], [7, 8, 0]]")
    with pytest.raises(UsageError) as refused:
        upload_with_state(export, state_path, server, settings)
    assert str(refused.value) == (
        f"{state_path}: this state was written by ctsync 0.1, whose last run stopped with "
        "requests on the wire; 0.1 kept only the lines they came from (4 lines), not which "
        "of their records it sent. Either finish that run with ctsync 0.1.0 (the same "
        "command; then this version takes the state over), or run again with "
        "--retry-unknown: the records of those lines are sent again (an event among them "
        "that CleverTap had stored is stored twice)"
    )
    assert server.received == []
    with sqlite3.connect(state_path) as db:  # left as it was, for 0.1.0 to finish
        assert db.execute("SELECT pending FROM files").fetchone() == ("[[3, 6, 1], [7, 8, 0]]",)
    # The second way: lines 3-8 and what follows line 9 are sent, nothing reported unknown.
    job = api.UploadJob(
        paths=[str(export)],
        client=settings,
        state=state_path,
        run=RunOptions(batch_size=10, retry_unknown=True),
    )
    summary = api.upload(job, transport=server.transport())
    assert sorted(server.received) == sorted(f"u{i - 1}" for i in [*range(3, 9), 10, 11, 12])
    assert summary.failed.total() == 0


def test_a_state_of_0_1_with_nothing_on_the_wire_is_taken_over(
    tmp_path: Path, settings: ClientSettings
) -> None:
    export, state_path, server = tmp_path / "a.ndjson", tmp_path / "state.db", CleverTap()
    write_export(export, range(12))
    state_of_0_1(state_path, export, "[[4, 5, 0]]")
    summary = upload_with_state(export, state_path, server, settings)
    assert sorted(server.received) == sorted(f"u{i - 1}" for i in [4, 5, 10, 11, 12])
    assert summary.read == 5 and summary.accepted == 5
