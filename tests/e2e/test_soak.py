"""The small fault soak, in the slow tier (`make soak` runs the long one): real
`ctsync upload --state` runs SIGKILLed at random moments against a sandbox with latency
jitter and every fault, then run to completion; the sandbox's database must hold the
input applied in order.

`CTSYNC_SOAK_SEED=N` picks the seed (default 1); a failure names it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.soak import PRESETS, Findings, Run, SoakConfig, check, generate, soak
from ctsync.sandbox import SandboxStore
from ctsync.sandbox._validation import check_upload

SECONDS = 100.0  # about what the soak takes; it stops killing after half of it
RUN_TIMEOUT = 30.0  # for each run to the end (they take a few seconds)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers-{n}")
def test_kills_and_faults_lose_nothing_duplicate_nothing_and_keep_profile_order(
    tmp_path: Path, workers: int
) -> None:
    """With 2 workers (which prepare the records from the first line on) the soak is
    shorter: a third of the time and kills, enough for a few kills per preset."""
    seed = int(os.environ.get("CTSYNC_SOAK_SEED", "1"))
    seconds = SECONDS if workers == 1 else SECONDS / 3
    config = SoakConfig(
        seed=seed,
        messages=1500,
        kills=6 if workers == 1 else 3,
        max_seconds=seconds,
        run_timeout=RUN_TIMEOUT,
        workers=workers,
    )
    findings = soak(config, tmp_path)
    figures = "\n".join(
        [found.figures() + "".join(f"\n  FAIL: {p}" for p in found.problems) for found in findings]
    )
    assert [found.preset for found in findings] == list(PRESETS)
    assert all(found.kills > 0 for found in findings), figures
    assert all(found.ok for found in findings), f"soak seed {seed} failed:\n{figures}"


def test_the_soak_input_is_a_pure_function_of_the_seed() -> None:
    first, again, other = (generate(SoakConfig(seed=s, messages=400)) for s in (5, 5, 6))
    assert first.lines == again.lines
    assert first.lines != other.lines
    kinds = {(m["type"], m.get("event")) for m in first.messages}
    assert kinds == {("identify", None), ("track", "Product Viewed"), ("track", "Delete User")}
    envelopes = [
        orjson.loads(line)["batch"] for line in first.lines if line.startswith(b'{"batch":')
    ]
    assert max(map(len, envelopes)) > 2 * SoakConfig().batch_size  # one line, several batches
    assert first.tokens("classic") and not first.tokens("actions")
    # Identities repeat, so the order of their writes matters.
    assert len({m["userId"] for m in first.messages}) < len(first.messages) / 4


# -- the soak's check, against databases written by hand --------------------------------

SUMMARY = {"read": 1, "skipped": 0, "invalid": 0, "accepted": 1, "rejected": 0, "failed": 0}


def _records(message: dict[str, Any]) -> list[dict[str, Any]]:
    """What the classic preset makes of a soak message, written here from the README."""
    user, ts = message["userId"], 1_714_564_800
    if message["type"] == "identify":
        return [{"type": "profile", "identity": user, "ts": ts, "profileData": message["traits"]}]
    records = [
        {
            "type": "event",
            "identity": user,
            "ts": ts,
            "evtName": message["event"],
            "evtData": message["properties"],
        }
    ]
    if "context" in message:
        token = {"id": message["context"]["device"]["token"], "type": "fcm"}
        records.append({"type": "token", "objectId": message["anonymousId"], "tokenData": token})
    return records


def _checked(
    tmp_path: Path,
    messages: list[dict[str, Any]],
    *,
    unknown: tuple[str, ...] = (),
    sent_after: int = 0,
    preset: str = "classic",
) -> Findings:
    model = generate(SoakConfig(seed=7, messages=300))
    db = tmp_path / "sandbox.db"
    db.unlink(missing_ok=True)
    store = SandboxStore.open(db)
    for message in messages:
        # classic: everything; actions: profiles and deletions only.
        if preset == "classic" or message["type"] == "identify":
            store.apply_upload(check_upload(_records(message)))
        elif message["event"] == "Delete User":
            store.apply_delete("identity", [message["userId"]])
    store.close()
    report = tmp_path / "report.ndjson"
    report.write_bytes(
        b"".join(orjson.dumps({"messageId": m, "code": "outcome-unknown"}) + b"\n" for m in unknown)
    )
    runs = [
        Run(killed=True, returncode=-9, summary=None, report=report, stderr=""),
        Run(False, 0, {**SUMMARY, "requests": 3}, tmp_path / "none", ""),
        Run(False, 0, {**SUMMARY, "requests": sent_after}, tmp_path / "none", ""),
    ]
    return check(preset, model, runs, db, SoakConfig())


def test_the_check_passes_the_input_applied_once_in_order(tmp_path: Path) -> None:
    messages = generate(SoakConfig(seed=7, messages=300)).messages
    found = _checked(tmp_path, messages)
    assert found.ok, found.problems
    assert (found.lost, found.duplicates, found.wrong_profiles) == (0, 0, 0)


def test_the_check_finds_a_lost_event_unless_it_was_reported_unknown(tmp_path: Path) -> None:
    messages = generate(SoakConfig(seed=7, messages=300)).messages
    track = next(n for n, m in enumerate(messages) if m["type"] == "track" and "context" not in m)
    without = messages[:track] + messages[track + 1 :]
    lost = _checked(tmp_path, without)
    assert (lost.ok, lost.lost) == (False, 1)
    reported = _checked(tmp_path, without, unknown=(messages[track]["messageId"],))
    assert reported.ok, reported.problems
    assert (reported.unknown_reported, reported.unknown_stored) == (1, 0)


def test_the_check_finds_an_event_stored_twice_even_if_reported_unknown(tmp_path: Path) -> None:
    messages = generate(SoakConfig(seed=7, messages=300)).messages
    track = next(m for m in messages if m["type"] == "track" and "context" not in m)
    found = _checked(tmp_path, [*messages, track], unknown=(track["messageId"],))
    assert (found.ok, found.duplicates, found.lost) == (False, 1, 0)


def test_the_check_finds_profile_writes_out_of_order(tmp_path: Path) -> None:
    messages = generate(SoakConfig(seed=7, messages=300)).messages
    last = max(n for n, m in enumerate(messages) if m["type"] == "identify")
    user = messages[last]["userId"]
    before = max(
        n
        for n, m in enumerate(messages[:last])
        if m["type"] == "identify"
        and m["userId"] == user
        and m["traits"] != messages[last]["traits"]
    )
    swapped = list(messages)
    swapped[before], swapped[last] = swapped[last], swapped[before]
    found = _checked(tmp_path, swapped)
    assert (found.ok, found.wrong_profiles) == (False, 1)


def test_the_check_finds_a_missing_token_and_a_last_run_that_sent(tmp_path: Path) -> None:
    messages = generate(SoakConfig(seed=7, messages=300)).messages
    no_token = [{k: v for k, v in m.items() if k != "context"} for m in messages]
    found = _checked(tmp_path, no_token, sent_after=2)
    assert not found.ok
    assert found.missing_tokens == len(
        {m["context"]["device"]["token"] for m in messages if "context" in m}
    )
    assert any("still sent 2 requests" in problem for problem in found.problems)


def test_the_check_applies_deletions_in_order_under_the_actions_preset(tmp_path: Path) -> None:
    messages = generate(SoakConfig(seed=7, messages=300)).messages
    found = _checked(tmp_path, messages, preset="actions")
    assert found.ok, found.problems
    deletes = [m for m in messages if m["type"] == "track" and m["event"] == "Delete User"]
    # Every deletion sent at the very end instead of in its place.
    late = [m for m in messages if m not in deletes] + deletes
    assert not _checked(tmp_path, late, preset="actions").ok
    # No deletion at all.
    kept = [m for m in messages if m not in deletes]
    assert not _checked(tmp_path, kept, preset="actions").ok


def test_the_check_says_when_a_stale_profile_was_right(tmp_path: Path) -> None:
    messages = generate(SoakConfig(seed=7, messages=300)).messages
    last = max(n for n, m in enumerate(messages) if m["type"] == "identify")
    user = messages[last]["userId"]
    before = max(
        n for n, m in enumerate(messages[:last]) if m["userId"] == user and m["type"] == "identify"
    )
    found = _checked(tmp_path, messages[:last] + messages[last + 1 :])
    assert found.wrong_profiles == 1
    assert f"what it was after {messages[before]['messageId']}" in found.problems[0]
