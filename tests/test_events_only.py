"""Issue 23, point 5: re-driving a `--failed` file must not put an older profile value
over a newer one. `--events-only` sends the events and tokens of the file and leaves its
profile writes out, counted as skipped."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ctsync.cli import app
from ctsync.options import EventsOnly
from ctsync.records import MapResult, Message, Skip, Upload
from tests.helpers import clean_env

runner = CliRunner()


def sent(requests: Path) -> list[dict[str, Any]]:
    """Every CleverTap record a dry run's --output holds, in order."""
    records = []
    for line in requests.read_bytes().splitlines():
        records.extend(orjson.loads(line)["body"]["d"])
    return records


def dry_run(
    tmp: Path, lines: list[Message], *flags: str, exit_code: int, **environ: str
) -> tuple[Any, list[Any]]:
    """The `--json` summary and the records sent of a dry run of `lines`, which must exit
    with `exit_code`."""
    export, requests = tmp / "failed.ndjson", tmp / "requests.ndjson"
    export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in lines))
    requests.unlink(missing_ok=True)
    args = ["upload", str(export), "--dry-run", "--output", str(requests), "--json", *flags]
    result = runner.invoke(app, args, env=clean_env(**environ))
    assert result.exit_code == exit_code, result.output
    return orjson.loads(result.stdout), sent(requests) if requests.exists() else []


def old_identify(user: str) -> Message:
    return {
        "type": "identify",
        "userId": user,
        "traits": {"plan": "free"},
        "timestamp": "2024-01-01",
    }


def track(user: str, event: str = "Clicked") -> Message:
    return {"type": "track", "userId": user, "event": event, "timestamp": "2024-01-02"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_redrive_sends_the_events_and_not_the_old_profile_writes(
    tmp_path: Path, workers: str
) -> None:
    lines = [old_identify("u1"), track("u1"), old_identify("u2"), track("u2", "Paid")] * 50
    # Small blocks so that --workers 2 really hands lines to worker processes.
    tuning = {"CTSYNC_WORKER_BLOCK_BYTES": "2048", "CTSYNC_WORKER_START_AFTER": "0"}
    flags = ["--preset", "classic", "--events-only", "--workers", workers]
    summary, records = dry_run(tmp_path, lines, *flags, exit_code=0, **tuning)
    assert [r["type"] for r in records] == ["event"] * 100
    assert Counter((r["identity"], r["evtName"]) for r in records) == {
        ("u1", "Clicked"): 50,
        ("u2", "Paid"): 50,
    }
    assert summary["accepted"] == 100
    assert summary["skipped_by_reason"] == {"events-only:identify": 100}
    assert summary["read"] == 200 and not summary["invalid"]


def test_two_workers_count_a_left_out_profile_write_once() -> None:
    """Identifies of a few users with one device token each, cut in blocks that two
    worker processes prepare with token sets of their own: every profile write is
    counted once in dropped_values, as one process counts it, and each token goes once."""
    lines = [
        {
            "type": "identify",
            "userId": f"u{n % 5}",
            "anonymousId": f"a{n % 5}",
            "traits": {"plan": "pro"},
            "context": {"device": {"token": f"t{n % 5}", "type": "android"}},
            "timestamp": "2024-01-01",
        }
        for n in range(120)
    ]
    tuning = {"CTSYNC_WORKER_BLOCK_BYTES": "1024", "CTSYNC_WORKER_START_AFTER": "0"}
    flags = ("--preset", "classic", "--events-only")
    summaries = {}
    for workers in ("1", "2"):
        with tempfile.TemporaryDirectory() as tmp:
            summary, records = dry_run(
                Path(tmp), lines, *flags, "--workers", workers, exit_code=0, **tuning
            )
        assert sorted(r["objectId"] for r in records) == [f"a{n}" for n in range(5)]
        assert summary["dropped_values"] == {"profile:--events-only": 120}
        assert summary["skipped_by_reason"] == {"token already sent": 115}
        summaries[workers] = summary
    assert summaries["1"]["accepted"] == summaries["2"]["accepted"] == 5


kinds = st.sampled_from(["identify", "track", "page", "screen", "group", "alias"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.tuples(kinds, st.integers(0, 3)), max_size=12), st.booleans())
def test_only_the_profile_records_go(
    tmp_path: Path, messages: list[tuple[str, int]], classic: bool
) -> None:
    lines = [
        {
            "type": kind,
            "userId": f"u{user}",
            "anonymousId": f"a{user}",
            "event": "Opened",
            "traits": {"plan": "pro"},
            "context": {"device": {"token": f"t{user}", "type": "android"}},
            "timestamp": "2024-01-01",
        }
        for kind, user in messages
    ]
    preset = ["--preset", "classic"] if classic else []
    # classic sends an alias's previousId as its objectId: these have none, invalid 526
    # (exit 1, in both runs); the actions preset skips aliases.
    exit_code = 1 if classic and any(kind == "alias" for kind, _ in messages) else 0
    everything, all_records = dry_run(tmp_path, lines, *preset, exit_code=exit_code)
    events_only, records = dry_run(tmp_path, lines, *preset, "--events-only", exit_code=exit_code)
    # The same records as a plain run, less every profile record (requests group records
    # by profile: compared as multisets).
    assert sorted(map(orjson.dumps, records)) == sorted(
        orjson.dumps(r) for r in all_records if r["type"] != "profile"
    )
    assert everything["read"] == events_only["read"] == len(lines)
    assert everything["invalid_by_code"] == events_only["invalid_by_code"]
    # Each identify is one profile write (both presets): left out, its message skipped,
    # or counted in dropped_values when the message also carries a device token (then
    # skipped as "token already sent" if that token went out already).
    identifies = sum(kind == "identify" for kind, _ in messages)
    new_skips = Counter(events_only["skipped_by_reason"]) - Counter(everything["skipped_by_reason"])
    assert set(new_skips) <= {"events-only:identify", "token already sent"}
    left_out = events_only["dropped_values"].get("profile:--events-only", 0)
    assert new_skips["events-only:identify"] + left_out == identifies
    assert events_only["accepted"] == everything["accepted"] - new_skips.total()


def test_a_message_with_an_event_and_a_profile_write_keeps_the_event() -> None:
    profile = Upload({"type": "profile", "identity": "u1", "profileData": {"plan": "free"}})
    event = Upload({"type": "event", "identity": "u1", "evtName": "Paid", "evtData": {}})

    def inner(message: Message) -> MapResult:
        return [profile, event]

    mapper = EventsOnly(inner)
    assert mapper({"type": "track"}) == [event]
    assert mapper.dropped == {"profile:--events-only": 1}

    def identify(message: Message) -> MapResult:
        return [profile]

    assert EventsOnly(identify)({"type": "identify"}) == Skip("events-only:identify")
