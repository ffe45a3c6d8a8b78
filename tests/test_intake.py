"""The run's intake (`ctsync.run.intake`) where a record is not planned: a copy of a
sent messageId inside a batch a stopped run left pending, and device tokens of records
that are copies or refused (they count as sent only once their record is planned).
Found by an adversarial pass over the one record path; each failed before its fix."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ctsync.dedupe import MessageIds, window_ms
from ctsync.ledger import ACCEPTED, Ledger, Summary, Verdict
from ctsync.model import OnWire
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import Source, collect_sources
from ctsync.run import DryRunSender, RunOptions, UploadRun
from ctsync.run.stage import Recipe
from ctsync.run.workers import WorkerPool, Workers
from ctsync.state import StateFile
from tests.helpers import FakeSender, Kind, assert_accounted
from tests.test_workers import recipe_for, run_once

# -- messageId dedupe across a stopped run and its resume --------------------------------


class EventRecorder(FakeSender):
    """Accepts every upload; keeps each event's `seq`. Stops the run (as a first Ctrl-C or
    SIGTERM would) while answering request number `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.run: UploadRun | None = None
        self.seqs: list[int] = []
        self.requests = 0
        self.retries = 0

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        self.requests += 1
        if on_wire is not None:
            on_wire()
        await asyncio.sleep(0)
        if self.requests == self.stop_at and self.run is not None:
            self.run.stop()
        for body in bodies:
            record = orjson.loads(body)
            if record["type"] == "event":
                self.seqs.append(record["evtData"]["seq"])
        return [ACCEPTED] * len(bodies)


def run_classic_with_state(export: Path, state_path: Path, sender: EventRecorder) -> Summary:
    """One run as `ctsync upload EXPORT --preset classic --state STATE` makes it
    (messageId dedupe on, kept in the state file), one lane, 10 records a request."""
    state = StateFile(state_path)
    try:
        ids = state.message_ids(window_ms(30))
        try:
            sender.run = UploadRun(
                collect_sources([str(export)]),
                mapper=build_preset(Preset.CLASSIC, MappingOptions()),
                sender=sender,
                ledger=Ledger(),
                options=RunOptions(batch_size=10, window=2, lanes=1),
                state=state,
                message_ids=ids,
            )
            return asyncio.run(sender.run.run())
        finally:
            ids.close()
    finally:
        state.close()


def track(seq: int, message_id: str) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": message_id,
        "timestamp": "2024-05-01T12:00:00Z",
        "userId": "u1",
        "event": "Played",
        "properties": {"seq": seq},
    }


def test_a_copy_skipped_as_duplicate_inside_a_pending_batch_is_not_sent_on_resume(
    tmp_path: Path,
) -> None:
    """README (Duplicate messages, Running from cron): a message whose messageId this run
    or an earlier one on the same --state sent is skipped as `duplicate-message-id`, and a
    resumed run never counts again a skipped record an earlier run counted.

    Line 15 is an exact copy of line 1 (Segment's archives hold such copies). The first
    run sends lines 1-10 (accepted), skips line 15 as a duplicate, and is stopped with the
    next batch (lines 11-21, around line 15) not sent. The resumed run reads that batch's
    lines again: line 15 is planned as if it were a pending record of the earlier run and
    sent, so CleverTap stores the event of line 1 twice."""
    export, state_path = tmp_path / "a.ndjson", tmp_path / "state.db"
    messages = [track(n, f"m-{n}") for n in range(1, 31)]
    messages[14] = messages[0]  # line 15: an exact copy of line 1
    export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))

    first = EventRecorder(stop_at=1)
    one = run_classic_with_state(export, state_path, first)
    assert one.interrupted
    assert_accounted(one)
    assert one.skipped["duplicate-message-id"] == 1
    assert 1 in first.seqs  # line 1 went through in the first run

    second = EventRecorder()
    two = run_classic_with_state(export, state_path, second)
    assert_accounted(two)
    stored = Counter(first.seqs + second.seqs)
    assert stored[1] == 1, f"the event of line 1 was sent {stored[1]} times"
    assert sorted(stored) == [n for n in range(1, 31) if n != 15]
    # The copy was counted skipped by the first run; the resumed run must not count it
    # again (as accepted).
    assert one.accepted + two.accepted == 29


# -- device tokens ------------------------------------------------------------------------

TOKEN = {"device": {"token": "tok-2", "type": "android"}}


def screen(message_id: str, **fields: Any) -> bytes:
    message = {
        "type": "screen",
        "messageId": message_id,
        "timestamp": "2024-05-01T12:00:00Z",
        "anonymousId": "a1",
        **fields,
    }
    return orjson.dumps(message)


def tokens_sent(requests: bytes) -> list[tuple[str, str]]:
    sent = []
    for line in requests.splitlines():
        for record in orjson.loads(line)["body"]["d"]:
            if record["type"] == "token":
                sent.append((record["objectId"], record["tokenData"]["id"]))
    return sent


def test_a_token_on_a_duplicate_message_does_not_depend_on_workers(
    tmp_path: Path, worker_pool: WorkerPool
) -> None:
    """README (--workers): the processes only prepare records; `--workers 1` and
    `--workers 2` must send the same requests. Line 2 reuses line 1's messageId (skipped
    as a duplicate) and carries a device token; line 3 carries the same token for the same
    anonymousId. One process marks the token sent while mapping line 2 (which is never
    sent) and leaves it out of line 3; two workers send it with line 3."""
    export = tmp_path / "export.ndjson"
    export.write_bytes(
        b"\n".join(
            [
                orjson.dumps(
                    {
                        "type": "identify",
                        "messageId": "m1",
                        "timestamp": "2024-05-01T12:00:00Z",
                        "userId": "u2",
                        "traits": {"plan": "pro"},
                    }
                ),
                screen("m1", userId="u4", context=TOKEN),
                screen("m3", context=TOKEN),
            ]
        )
        + b"\n"
    )
    built = recipe_for("classic", "strict")
    one = dry_run_deduped(export, built, None)
    workers = Workers(count=2, recipe=built, block_bytes=1, start_after=0, pool=worker_pool)
    two = dry_run_deduped(export, built, workers)
    assert tokens_sent(two) == [("a1", "tok-2")]  # line 3's token, once
    assert tokens_sent(one) == tokens_sent(two)


def dry_run_deduped(export: Path, built: Recipe, workers: Workers | None) -> bytes:
    """A dry run as `ctsync upload --dry-run` makes it (messageId dedupe on): its requests."""
    requests = io.BytesIO()
    if workers is None:  # one process, as `ctsync upload --workers 1` runs it
        workers = Workers(count=1, recipe=built)
    tokens: set[tuple[str, str]] = set()
    ids = MessageIds.temporary(window_ms(30))
    run = UploadRun(
        [Source(str(export), export, export.stat().st_size)],
        mapper=built.mapper(tokens),
        tokens=tokens,
        sender=DryRunSender(requests),
        ledger=Ledger(dry_run=True),
        validator=built.validator(),
        workers=workers,
        message_ids=ids,
    )
    try:
        assert_accounted(asyncio.run(run.run()))
    finally:
        ids.close()
    return requests.getvalue()


def test_a_token_of_a_refused_record_does_not_keep_a_later_record_from_sending_it(
    tmp_path: Path,
) -> None:
    """README (classic preset, context.device.token): a token record goes once per device
    token and profile per run, and every token that cannot be sent is counted in
    dropped_values. Line 1 is refused (an invalid Email, code 515) and sends nothing;
    line 2, accepted, carries the same token for the same anonymousId: line 2 sends it
    (mapping line 1 once marked it sent, and it was lost)."""
    export = tmp_path / "export.ndjson"
    export.write_bytes(refused_identify("x1") + b"\n" + screen("x2", context=TOKEN) + b"\n")
    requests, _, _, summary, _ = run_once(export, recipe_for("classic", "strict"), "strict", None)
    assert (summary["invalid"], summary["accepted"]) == (1, 1)
    assert summary["dropped_values"] == {}
    assert tokens_sent(requests) == [("a1", "tok-2")]


def refused_identify(message_id: str) -> bytes:
    """An identify that carries the device token and is refused (an invalid Email)."""
    identify = {
        "type": "identify",
        "messageId": message_id,
        "timestamp": "2024-05-01T12:00:00Z",
        "userId": "u3",
        "anonymousId": "a1",
        "traits": {"email": "bad"},
        "context": TOKEN,
    }
    return orjson.dumps(identify)


def test_a_record_prepared_again_and_refused_sends_no_token_and_keeps_none_from_others(
    tmp_path: Path, worker_pool: WorkerPool
) -> None:
    """Line 2, a copy of line 1's messageId, carries a token: the stage counts it sent, the
    run does not (the copy is never sent). Line 3 carries the same token and is refused
    (an invalid Email): the stage's lookup disagrees with the run's set, so the run
    prepares it again against its own set, where the token is new; refused, the record
    sends nothing and its token must not stay counted. Line 4, accepted, sends it."""
    export = tmp_path / "export.ndjson"
    refused = orjson.loads(refused_identify("m3"))
    first = {"type": "track", "event": "Played", "messageId": "m1", "userId": "u1"}
    first["timestamp"] = "2024-05-01T12:00:00Z"
    lines = [first, orjson.loads(screen("m1", context=TOKEN)), refused]
    lines.append(orjson.loads(screen("m4", context=TOKEN)))
    export.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    built = recipe_for("classic", "strict")
    workers = Workers(count=2, recipe=built, block_bytes=1, start_after=0, pool=worker_pool)
    for each in (None, workers):
        assert tokens_sent(dry_run_deduped(export, built, each)) == [("a1", "tok-2")]
