"""End to end over real HTTP: every record arrives exactly once, faults are retried without
duplicates, per-record rejections are reported, order survives concurrency, and no more
than 15 uploads are ever in flight."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from ctsync.sandbox import SandboxConfig, running_sandbox, sandbox_process

from ._support import (
    Message,
    assert_adds_up,
    dead_letters,
    delete_user,
    identify,
    read_ndjson,
    run_upload,
    seqs_of,
    track,
    write_export,
)


def test_every_record_arrives_exactly_once_and_the_summary_adds_up(tmp_path: Path) -> None:
    rng = random.Random(1)
    profiles = [identify(f"u-{i}", plan=rng.choice(["free", "pro"]), n=i) for i in range(300)]
    events = [track(f"u-{rng.randrange(300)}", "Song Played", seq) for seq in range(900)]
    pages: list[Message] = [
        {"type": "page", "userId": f"u-{i}", "name": "Home", "properties": {"seq": 900 + i}}
        for i in range(30)
    ]
    groups: list[Message] = [
        {"type": "group", "userId": f"u-{i}", "groupId": "g"} for i in range(20)
    ]
    malformed = [b'{"type": "track", "userId": "u-1", "event": ' for _ in range(5)]
    anonymous = [track(None, "Song Played", 10_000 + i) for i in range(5)]  # 523: no identity
    body: list[bytes | Message] = [*profiles[1:], *events, *pages, *groups]
    body += [*malformed, *anonymous]
    rng.shuffle(body)
    export = tmp_path / "export.ndjson"
    write_export(export, [profiles[0], *body])  # a whole message first: NDJSON, not a document
    report = tmp_path / "report.ndjson"

    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:
        run = run_upload(
            sandbox.url, export, "--preset", "classic", "--batch-size", "50", "--report", report
        )
        stats = sandbox.stats()
        writes = sandbox.read(lambda store: store.profile_writes())
        stored = seqs_of(sandbox.read(lambda store: store.events()))

    assert run.returncode == 1, run.describe()  # the invalid records
    summary = run.summary
    assert_adds_up(summary)
    assert summary["read"] == 300 + 900 + 30 + 20 + 5 + 5
    assert summary["accepted"] == 300 + 900 + 30
    assert summary["skipped_by_reason"] == {"group": 20}
    assert summary["invalid_by_code"] == {"malformed-json": 5, "523": 5}
    assert summary["rejected"] == summary["failed"] == 0
    # The store holds exactly what the summary says: each profile written once, each
    # track and page message stored as exactly one event.
    assert writes == {f"u-{i}": 1 for i in range(300)}
    assert stored == {seq: 1 for seq in range(930)}
    assert stats.records_accepted == summary["accepted"]
    assert stats.records_rejected == 0
    # Each of the 15 lanes (--concurrency auto) ends with at most one batch not full.
    assert stats.requests_by_endpoint["upload"] == summary["requests"] <= -(-1230 // 50) + 14
    assert len(read_ndjson(report)) == 10


def test_429_and_503_are_retried_and_a_500_leaves_events_unknown(tmp_path: Path) -> None:
    export = tmp_path / "export.ndjson"
    messages = [identify(f"u-{i}", n=i) for i in range(400)]
    messages += [track(f"u-{seq % 400}", "Viewed", seq) for seq in range(1100)]
    lines = write_export(export, messages)
    report = tmp_path / "report.ndjson"

    config = SandboxConfig(latency_ms=5, fault_rate=0.2, seed=11)
    with running_sandbox(config) as sandbox:
        run = run_upload(
            sandbox.url, export, "--preset", "classic", "--batch-size", "50",
            "--max-retries", "15", "--report", report,
        )  # fmt: skip
        stats = sandbox.stats()
        writes = sandbox.read(lambda store: store.profile_writes())
        stored = seqs_of(sandbox.read(lambda store: store.events()))

    summary = run.summary
    assert_adds_up(summary)
    assert stats.faults["429"] > 0 and stats.faults["503"] > 0 and stats.faults["500"] > 0
    assert summary["requests"] == stats.requests_by_endpoint["upload"]
    # A 500 may come after CleverTap stored the batch: its events are not sent again
    # (they could be stored twice); its profile updates are, being safe to repeat.
    assert set(summary["failed_by_code"]) == {"outcome-unknown"}
    assert run.returncode == 1, run.describe()
    assert writes == {f"u-{i}": 1 for i in range(400)}
    unknown = {
        int(orjson.loads(lines[e["line"] - 1])["properties"]["seq"]) for e in read_ndjson(report)
    }
    assert len(unknown) == summary["failed"]
    assert max(stored.values()) == 1, "an event was stored twice"
    assert unknown.isdisjoint(stored)  # this sandbox's 500 stores nothing
    assert unknown | set(stored) == set(range(1100))
    assert summary["accepted"] == 400 + len(stored)


def test_dropped_connections_resend_profile_batches_without_duplicates(tmp_path: Path) -> None:
    export = tmp_path / "profiles.ndjson"
    write_export(export, [identify(f"u-{i}", n=i) for i in range(600)])

    config = SandboxConfig(latency_ms=5, drop_rate=0.25, seed=5)
    with running_sandbox(config) as sandbox:
        run = run_upload(sandbox.url, export, "--batch-size", "50", "--max-retries", "15")
        stats = sandbox.stats()
        writes = sandbox.read(lambda store: store.profile_writes())

    assert run.returncode == 0, run.describe()
    summary = run.summary
    assert_adds_up(summary)
    assert summary["accepted"] == 600
    assert stats.faults["drop"] > 0
    assert summary["retries"] == stats.faults["drop"]
    assert writes == {f"u-{i}": 1 for i in range(600)}


def test_dropped_event_batches_fail_as_outcome_unknown_and_are_never_resent(
    tmp_path: Path,
) -> None:
    export = tmp_path / "events.ndjson"
    lines = write_export(export, [track(f"u-{i % 37}", "Clicked", i) for i in range(1000)])
    report, failed = tmp_path / "report.ndjson", tmp_path / "failed.ndjson"

    config = SandboxConfig(latency_ms=5, drop_rate=0.3, seed=3)
    with running_sandbox(config) as sandbox:
        run = run_upload(
            sandbox.url, export, "--preset", "classic", "--batch-size", "50",
            "--concurrency", "1",  # one lane: every request holds 50 records
            "--max-retries", "15", "--report", report, "--failed", failed,
        )  # fmt: skip
        stats = sandbox.stats()
        stored = seqs_of(sandbox.read(lambda store: store.events()))

    assert run.returncode == 1, run.describe()
    summary = run.summary
    assert_adds_up(summary)
    drops = stats.faults["drop"]
    assert drops > 0
    # Each dropped request is one batch of 50 whose outcome is unknown: never re-sent.
    assert summary["failed_by_code"] == {"outcome-unknown": 50 * drops}
    assert summary["accepted"] == 1000 - 50 * drops
    assert stats.requests_by_endpoint["upload"] == summary["requests"] == 20
    assert summary["retries"] == 0
    assert max(stored.values()) == 1, "an event was stored twice"
    assert sum(stored.values()) == summary["accepted"]
    entries = read_ndjson(report)
    assert {(e["code"], e["stage"]) for e in entries} == {("outcome-unknown", "transport")}
    unknown = {int(orjson.loads(lines[e["line"] - 1])["properties"]["seq"]) for e in entries}
    assert len(unknown) == 50 * drops
    assert unknown.isdisjoint(stored)  # the sandbox dropped them before storing
    assert unknown | set(stored) == set(range(1000))
    assert sorted(dead_letters(failed)) == sorted(lines[e["line"] - 1] for e in entries)


def test_a_record_rejected_with_516_is_reported_and_its_batch_is_not_resent(
    tmp_path: Path,
) -> None:
    bad = {17, 88, 150}  # 1-based lines with a phone number CleverTap refuses
    messages = [
        identify(f"u-{line}", Phone="12345" if line in bad else "+14155550123", n=line)
        for line in range(1, 201)
    ]
    export = tmp_path / "export.ndjson"
    lines = write_export(export, messages)
    report, failed = tmp_path / "report.ndjson", tmp_path / "failed.ndjson"

    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:
        run = run_upload(
            sandbox.url, export, "--validate", "off", "--batch-size", "50",
            "--concurrency", "1",  # one lane: 4 requests of 50
            "--report", report, "--failed", failed,
        )  # fmt: skip
        stats = sandbox.stats()
        writes = sandbox.read(lambda store: store.profile_writes())

    assert run.returncode == 1, run.describe()
    summary = run.summary
    assert_adds_up(summary)
    assert summary["accepted"] == 197
    assert summary["rejected_by_code"] == {"516": 3}
    entries = sorted(read_ndjson(report), key=lambda e: int(e["line"]))
    assert [(e["source"], e["line"], e["code"], e["stage"]) for e in entries] == [
        (str(export), line, "516", "api") for line in sorted(bad)
    ]
    assert [e["identity"] for e in entries] == [f"u-{line}" for line in sorted(bad)]
    # Only 4 requests: the accepted records of the batches with a rejection were not re-sent.
    assert stats.requests_by_endpoint["upload"] == summary["requests"] == 4
    assert summary["retries"] == 0
    assert stats.records_accepted == 197 and stats.rejected_by_code == {516: 3}
    assert writes == {f"u-{line}": 1 for line in range(1, 201) if line not in bad}
    assert sorted(dead_letters(failed)) == sorted(lines[line - 1] for line in bad)


def test_deletes_and_identifies_of_one_user_keep_their_input_order(tmp_path: Path) -> None:
    messages: list[Message] = []
    for i in range(100):
        messages.append(identify(f"u-{i}", v=1))
        if i % 2 == 1:
            messages.append(delete_user(f"u-{i - 1}"))  # even users: deleted after identify
    messages += [identify(f"u-{i}", v=2) for i in range(0, 50, 2)]  # re-created after delete
    export = tmp_path / "export.ndjson"
    write_export(export, messages)

    with running_sandbox(SandboxConfig(latency_ms=30)) as sandbox:
        run = run_upload(sandbox.url, export, "--batch-size", "10", "--concurrency", "10")
        stats = sandbox.stats()
        profiles = {p.identifier: p for p in sandbox.read(lambda store: store.profiles())}
        deletions = sandbox.read(lambda store: store.deletions())

    assert run.returncode == 0, run.describe()
    summary = run.summary
    assert_adds_up(summary)
    assert summary["accepted"] == 100 + 50 + 25
    assert stats.peak_in_flight["upload"] > 1, "the batches never overlapped"
    by_user = {d.value: d for d in deletions}
    assert len(deletions) == len(by_user) == 50
    assert all(d.existed for d in deletions), "a delete overtook the identify before it"
    expected = {f"u-{i}": 1 for i in range(1, 100, 2)} | {f"u-{i}": 2 for i in range(0, 50, 2)}
    assert {name: p.data["v"] for name, p in profiles.items()} == expected
    for i in range(0, 50, 2):
        profile = profiles[f"u-{i}"]
        assert profile.writes == 1  # written once since it was re-created
        assert profile.last_seq > by_user[f"u-{i}"].seq
    for i in range(1, 100, 2):
        assert profiles[f"u-{i}"].writes == 1


def test_no_more_than_15_uploads_are_ever_in_flight(tmp_path: Path) -> None:
    export = tmp_path / "profiles.ndjson"
    write_export(export, [identify(f"u-{i}", n=i) for i in range(900)])

    with sandbox_process(SandboxConfig(latency_ms=100)) as sandbox:
        run = run_upload(
            sandbox.url, export, "--batch-size", "10", "--concurrency", "15", "--max-retries", "0"
        )
        stats = sandbox.stats()

    assert run.returncode == 0, run.describe()
    assert_adds_up(run.summary)
    assert run.summary["accepted"] == 900
    assert 1 < stats.peak_in_flight["upload"] <= 15
    assert set(stats.requests_by_status) == {200}  # never a 429 for too many at once
    # 15 lanes, each ending with at most one batch not full.
    assert 90 <= stats.requests_by_status[200] <= 90 + 14
    assert stats.records_accepted == 900
