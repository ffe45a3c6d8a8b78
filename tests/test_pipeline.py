"""The upload pipeline: ordering of uploads and deletes, accounting, batching, aborts."""

from __future__ import annotations

import asyncio
import io
import random
import re
from collections.abc import Sequence

import orjson
import pytest

from ctsync.batching import BatchKind, Planner
from ctsync.errors import AuthError, OutputError
from ctsync.ledger import ACCEPTED, Ledger, Summary, Tracked, Verdict
from ctsync.pipeline import DryRunSender, RunOptions, UploadRun
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import Source
from ctsync.records import CleverTapRecord, Delete, DeleteKey, Origin, Outcome, Upload

STDIN = Source("-", None, None)


def identify(user: str, **traits: object) -> dict[str, object]:
    return {"type": "identify", "userId": user, "traits": traits, "timestamp": "2024-01-01"}


def delete_user(user: str) -> dict[str, object]:
    return {"type": "track", "userId": user, "event": "Delete User"}


class Recorder:
    """A sender that answers after a delay and logs when each request starts and ends."""

    def __init__(self, delay: float = 0.0, reject: set[str] | None = None) -> None:
        self.delay = delay
        self.reject = reject or set()
        self.log: list[tuple[str, str, tuple[str, ...]]] = []
        self.requests = 0
        self.retries = 0

    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]:
        ids = tuple(str(r["identity"]) for r in records)
        return await self._answer("upload", ids)

    async def delete(self, key: DeleteKey, values: Sequence[str]) -> list[Verdict]:
        return await self._answer("delete", tuple(values))

    async def _answer(self, kind: str, ids: tuple[str, ...]) -> list[Verdict]:
        self.requests += 1
        self.log.append(("start", kind, ids))
        await asyncio.sleep(self.delay)
        self.log.append(("end", kind, ids))
        return [
            Verdict(Outcome.REJECTED, "516", "bad phone") if i in self.reject else ACCEPTED
            for i in ids
        ]


def run(
    messages: Sequence[object],
    sender: object,
    *,
    batch_size: int = 1000,
    report: io.BytesIO | None = None,
    failed: io.BytesIO | None = None,
) -> Summary:
    data = b"".join(orjson.dumps(m) + b"\n" for m in messages)
    upload_run = UploadRun(
        [STDIN],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=sender,  # type: ignore[arg-type]
        ledger=Ledger(report=report, dead_letters=failed),
        options=RunOptions(batch_size=batch_size),
        stdin=io.BytesIO(data),
    )
    return asyncio.run(upload_run.run())


def test_a_delete_after_an_identify_waits_for_the_upload_acknowledgement() -> None:
    sender = Recorder(delay=0.02)
    summary = run([identify("a"), identify("b"), delete_user("a"), identify("c")], sender)
    assert summary.accepted == 4 and summary.balanced
    upload_end = sender.log.index(("end", "upload", ("a", "b", "c")))
    delete_start = sender.log.index(("start", "delete", ("a",)))
    assert upload_end < delete_start


def test_an_identify_after_a_delete_goes_out_only_after_the_delete() -> None:
    sender = Recorder(delay=0.02)
    run([identify("x"), delete_user("a"), identify("a"), identify("y")], sender)
    delete_end = sender.log.index(("end", "delete", ("a",)))
    later = next(e for e in sender.log if e[0] == "start" and e[1] == "upload" and "a" in e[2])
    assert delete_end < sender.log.index(later)
    # "x" and "y", which depend on nothing, did not wait for the delete: only "a" did.
    assert sender.log.index(("start", "upload", ("x", "y"))) < delete_end
    assert ("start", "upload", ("a",)) in sender.log


class ModelCleverTap:
    """Applies each request when it arrives, after a random delay answers it; records,
    per identity, whether a profile exists and the value of its last write."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.profiles: dict[str, int] = {}
        self.in_flight = self.peak = 0
        self.requests = 0
        self.retries = 0

    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]:
        for record in records:
            self.profiles[str(record["identity"])] = record["profileData"]["v"]
        return await self._answer(len(records))

    async def delete(self, key: DeleteKey, values: Sequence[str]) -> list[Verdict]:
        for value in values:
            self.profiles.pop(value, None)
        return await self._answer(len(values))

    async def _answer(self, n: int) -> list[Verdict]:
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(self.random.random() * 0.003)
        self.in_flight -= 1
        return [ACCEPTED] * n


@pytest.mark.parametrize("seed", range(12))
def test_random_identifies_and_deletes_end_as_the_input_in_order(seed: int) -> None:
    """For each identity, CleverTap ends as applying the input in order would leave it:
    deleted if its last message is a Delete User, else holding its last identify (the
    last *upload* of an identity is the only one in flight then: each upload of one
    identity here follows a delete of it, or is its first)."""
    rng = random.Random(seed)
    messages: list[dict[str, object]] = []
    expected: dict[str, int] = {}
    pending_delete: set[str] = set()
    for n in range(400):
        user = f"u{rng.randrange(25)}"
        if user in expected and user not in pending_delete and rng.random() < 0.5:
            messages.append(delete_user(user))
            del expected[user]
            pending_delete.add(user)
        elif user not in expected:
            messages.append(identify(user, v=n))
            expected[user] = n
            pending_delete.discard(user)
        else:
            messages.append(identify(f"other{n}", v=n))  # an unrelated user: fills batches
            expected[f"other{n}"] = n
    clevertap = ModelCleverTap(seed)
    summary = run(messages, clevertap, batch_size=rng.choice([3, 7, 20]))
    assert summary.balanced and summary.accepted == len(messages)
    assert clevertap.profiles == expected
    assert clevertap.peak > 1, "requests never overlapped: the test proves nothing"


def test_an_upload_waiting_for_a_delete_does_not_hold_back_other_uploads() -> None:
    planner = Planner(batch_size=3)
    owner = Tracked(Origin("-", 1), None, {}, 9)
    ready = planner.add(Delete("identity", "a"), owner)
    for user in ["b", "a", "c", "a", "d"]:
        ready += planner.add(Upload({"type": "profile", "identity": user}), owner)
    assert [b.payloads for b in ready] == [[{"type": "profile", "identity": i} for i in "bcd"]]
    assert ready[0].deps == []  # out at once, before the delete is even sealed
    ready += planner.flush()
    (delete,) = [b for b in ready if b.kind is BatchKind.DELETE_IDENTITY]
    (parked,) = [b for b in ready[1:] if b.kind is BatchKind.UPLOAD]
    assert [p["identity"] for p in parked.payloads] == ["a", "a"]  # in order,
    assert parked.deps == [delete]  # after the delete
    assert ready.index(delete) < ready.index(parked)


def test_independent_identities_do_not_wait_for_each_other() -> None:
    planner = Planner(batch_size=2)
    owner = Tracked(Origin("-", 1), None, {}, 6)
    ready = []
    for user in "abcd":
        ready += planner.add(Upload({"type": "profile", "identity": user}), owner)
    ready += planner.add(Delete("identity", "z"), owner)
    ready += planner.flush()
    assert [(b.kind, len(b), b.deps) for b in ready] == [
        (BatchKind.UPLOAD, 2, []),
        (BatchKind.UPLOAD, 2, []),
        (BatchKind.DELETE_IDENTITY, 1, []),
    ]


def test_batches_are_cut_at_the_batch_size_and_deletes_at_100() -> None:
    planner = Planner(batch_size=3)
    owner = Tracked(Origin("-", 1), None, {}, 1000)
    ready = []
    for i in range(7):
        ready += planner.add(Upload({"type": "profile", "identity": f"u{i}"}), owner)
    for i in range(150):
        ready += planner.add(Delete("guid", f"g{i}"), owner)
    ready += planner.flush()
    sizes = [(b.kind.value, len(b)) for b in ready]
    assert sizes == [
        ("upload", 3),
        ("upload", 3),
        ("guid", 100),
        ("upload", 1),
        ("guid", 50),
    ]


def test_a_batch_spans_its_lines_but_never_a_line_of_another_batch() -> None:
    """With --state, a batch's pending lines are re-read after a crash: they must not
    take in the line of a deletion that CleverTap may already have acknowledged."""
    planner = Planner()
    operations: list[tuple[int, Upload | Delete]] = [
        (1, Upload({"type": "profile", "identity": "a"})),
        (4, Upload({"type": "profile", "identity": "b"})),  # lines 2-3 skipped
        (5, Delete("identity", "x")),
        (6, Upload({"type": "profile", "identity": "c"})),
        (7, Upload({"type": "profile", "identity": "d"})),
    ]
    for line, operation in operations:
        planner.add(operation, Tracked(Origin("f", line), None, {}, 1))
    uploads, deletes = planner.flush()
    assert uploads.spans() == {"f": [(1, 4), (6, 7)]}
    assert deletes.spans() == {"f": [(5, 5)]}


def test_at_most_100_tokens_per_upload() -> None:
    planner = Planner()
    owner = Tracked(Origin("-", 1), None, {}, 1000)
    ready = []
    for i in range(150):
        token = {"type": "token", "objectId": f"o{i}", "tokenData": {"id": "t", "type": "fcm"}}
        ready += planner.add(Upload(token), owner)
    ready += planner.flush()
    assert [len(b) for b in ready] == [100, 50]


def test_every_record_is_accounted_for_and_reported() -> None:
    report, failed = io.BytesIO(), io.BytesIO()
    messages: list[object] = [
        identify("ok"),
        identify("bad-phone", phone="123"),
        {"type": "identify", "traits": {}},  # no userId
        {"type": "page", "userId": "p"},
        [1, 2],
        identify("x" * 120),
    ]
    sender = Recorder(reject={"bad-phone"})
    summary = run(messages, sender, report=report, failed=failed)
    counts = {k: summary.as_dict()[k] for k in ("read", "skipped", "invalid", "accepted")}
    assert counts == {"read": 6, "skipped": 1, "invalid": 3, "accepted": 1}
    assert (summary.rejected, summary.failed.total()) == ({"516": 1}, 0)
    assert summary.balanced
    lines = [orjson.loads(x) for x in report.getvalue().splitlines()]
    assert [(x["line"], x["stage"], x["code"]) for x in lines] == [
        (3, "validate", "523"),
        (5, "parse", "not-an-object"),
        (6, "validate", "523"),
        (2, "api", "516"),
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[-1].pop("run"))
    assert lines[-1] == {
        "source": "-",
        "line": 2,
        "messageId": None,
        "identity": "bad-phone",
        "stage": "api",
        "code": "516",
        "message": "bad phone",
    }
    dead = failed.getvalue().splitlines()
    assert len(dead) == 4 and orjson.loads(dead[-1]) == messages[1]


class SteppingSender:
    """Answers after `steps` turns of the event loop, as an HTTP exchange does (write,
    read headers, read body...), and notes how many records had been read by then."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.run: UploadRun | None = None
        self.read_at_answer: list[int] = []
        self.requests = 0
        self.retries = 0

    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]:
        self.requests += 1
        for _ in range(self.steps):
            await asyncio.sleep(0)
        assert self.run is not None
        self.read_at_answer.append(self.run.summary.read)
        return [ACCEPTED] * len(records)

    async def delete(self, key: DeleteKey, values: Sequence[str]) -> list[Verdict]:
        raise AssertionError("no deletions here")


def test_requests_advance_while_the_next_batch_is_read() -> None:
    """Sending overlaps reading: a request that needs 20 turns of the event loop is
    answered while the next batch is being read, not after the whole input."""
    data = b"".join(orjson.dumps(identify(f"u{i}")) + b"\n" for i in range(5000))
    sender = SteppingSender(steps=20)
    sender.run = UploadRun(
        [STDIN],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=sender,
        ledger=Ledger(),
        stdin=io.BytesIO(data),
    )
    summary = asyncio.run(sender.run.run())
    assert summary.accepted == 5000 and len(sender.read_at_answer) == 5
    assert sender.read_at_answer[0] < 2000  # answered while the 2nd batch was being read


def test_dry_run_writes_exact_request_bodies() -> None:
    output = io.BytesIO()
    summary = run([identify("a", plan="pro"), delete_user("a")], DryRunSender(output))
    assert summary.accepted == 2
    requests = [orjson.loads(line) for line in output.getvalue().splitlines()]
    assert requests == [
        {
            "method": "POST",
            "path": "/1/upload",
            "body": {
                "d": [
                    {
                        "type": "profile",
                        "identity": "a",
                        "ts": 1704067200,
                        "profileData": {"plan": "pro"},
                    }
                ]
            },
        },
        {"method": "POST", "path": "/1/delete/profiles.json", "body": {"identity": ["a"]}},
    ]


class Refusing(Recorder):
    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]:
        await asyncio.sleep(0)
        raise AuthError("refused")


def test_refused_credentials_stop_the_run_and_the_counts_still_add_up() -> None:
    data = b"".join(orjson.dumps(identify(f"u{i}")) + b"\n" for i in range(50))
    upload_run = UploadRun(
        [STDIN],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=Refusing(),
        ledger=Ledger(),
        options=RunOptions(batch_size=10),
        stdin=io.BytesIO(data),
    )
    with pytest.raises(AuthError):
        asyncio.run(upload_run.run())
    summary = upload_run.summary
    assert summary.balanced and summary.read >= 10
    assert summary.failed["aborted"] == summary.read
    assert summary.accepted == 0


class FullDisk(io.BytesIO):
    """A report file on a disk that fills up after `room` bytes."""

    name = "report.ndjson"

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.room:
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_a_report_that_cannot_be_written_stops_the_run_and_the_counts_still_add_up() -> None:
    lines = [b"not json" if i % 10 == 0 else orjson.dumps(identify(f"u{i}")) for i in range(500)]
    sender = Recorder()
    upload_run = UploadRun(
        [STDIN],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=sender,
        ledger=Ledger(report=FullDisk(room=1000)),
        options=RunOptions(batch_size=10),
        stdin=io.BytesIO(b"\n".join(lines) + b"\n"),
    )
    with pytest.raises(OutputError, match=r"report.ndjson: cannot write the report \(No space"):
        asyncio.run(upload_run.run())
    summary = upload_run.summary
    assert summary.balanced and summary.read < 500  # it stopped early
    sent = sum(len(ids) for event, _, ids in sender.log if event == "start")
    assert summary.accepted + summary.failed["aborted"] == sent  # what went out is counted
    assert summary.invalid["malformed-json"] > 0
