"""The upload pipeline: ordering of uploads and deletes, accounting, batching, aborts."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from ctsync import batching
from ctsync.api import UploadJob
from ctsync.batching import Planner
from ctsync.errors import AuthError, OutputError
from ctsync.ledger import ACCEPTED, Ledger, Output, Summary, Verdict
from ctsync.model import OnWire
from ctsync.prepare import Op, ValidateMode, encode, profile_hash
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import Source
from ctsync.records import Delete, Outcome, Upload
from ctsync.run import DryRunSender, RunOptions, UploadRun, coordinator
from ctsync.run.stage import Recipe
from ctsync.run.workers import WorkerPool, Workers
from tests.helpers import (
    FakeSender,
    Kind,
    Step,
    assert_accounted,
    deletions_hold,
    linking_mapper,
    no_validator,
    owner,
)

STDIN = Source("-", None, None)


def identify(user: str, **traits: object) -> dict[str, object]:
    return {"type": "identify", "userId": user, "traits": traits, "timestamp": "2024-01-01"}


def delete_user(user: str) -> dict[str, object]:
    return {"type": "track", "userId": user, "event": "Delete User"}


class Recorder(FakeSender):
    """A sender that answers after a delay and logs when each request starts and ends."""

    def __init__(self, delay: float = 0.0, reject: set[str] | None = None) -> None:
        self.delay = delay
        self.reject = reject or set()
        self.log: list[tuple[str, str, tuple[str, ...]]] = []
        self.requests = 0
        self.retries = 0

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        if kind == "upload":
            return await self._answer(kind, tuple(str(orjson.loads(b)["identity"]) for b in bodies))
        return await self._answer(kind, tuple(orjson.loads(b) for b in bodies))

    async def _answer(self, kind: str, ids: tuple[str, ...]) -> list[Verdict]:
        self.requests += 1
        self.log.append(("start", kind, ids))
        await asyncio.sleep(self.delay)
        self.log.append(("end", kind, ids))
        return [
            Verdict(Outcome.REJECTED, "516", "bad phone") if i in self.reject else ACCEPTED
            for i in ids
        ]

    def first(self, event: str, kind: str, identity: str) -> int:
        """Where in the log a request of `kind` holding `identity` first had `event`."""
        return next(
            n
            for n, (e, k, ids) in enumerate(self.log)
            if (e, k) == (event, kind) and identity in ids
        )


def run(
    messages: Sequence[object],
    sender: object,
    *,
    batch_size: int = 1000,
    lanes: int = 10,
    window: int = RunOptions().window,
    report: io.BytesIO | None = None,
    failed: io.BytesIO | None = None,
    timeout: float | None = None,
) -> Summary:
    """An upload of `messages` with the actions preset; `timeout` (seconds): a run that
    has not ended by then fails the test instead of hanging it."""
    data = b"".join(orjson.dumps(m) + b"\n" for m in messages)
    upload_run = UploadRun(
        [STDIN],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=sender,  # type: ignore[arg-type]
        ledger=Ledger(report=report, dead_letters=failed),
        options=RunOptions(batch_size=batch_size, lanes=lanes, window=window),
        stdin=io.BytesIO(data),
    )
    return asyncio.run(asyncio.wait_for(upload_run.run(), timeout))


def test_a_delete_after_an_identify_waits_for_the_upload_acknowledgement() -> None:
    sender = Recorder(delay=0.02)
    summary = run([identify("a"), identify("b"), delete_user("a"), identify("c")], sender)
    assert summary.accepted == 4
    assert sender.first("end", "upload", "a") < sender.first("start", "delete", "a")


def test_an_identify_after_a_delete_goes_out_only_after_the_delete() -> None:
    sender = Recorder(delay=0.02)
    run([identify("x"), delete_user("a"), identify("a"), identify("y")], sender)
    assert sender.first("end", "delete", "a") < sender.first("start", "upload", "a")


def test_the_writes_after_a_refused_deletion_still_go_after_its_answer() -> None:
    """A deletion refused for good is reported, and the writes after it are sent once it
    has its answer (to the profile it did not delete), as Segment sends each message."""
    sender = Recorder(delay=0.02, reject={"a"})  # refuses every record of "a"
    report = io.BytesIO()
    summary = run(
        [delete_user("a"), identify("a", plan="pro"), identify("y")], sender, report=report
    )
    assert sender.first("end", "delete", "a") < sender.first("start", "upload", "a")
    assert (summary.accepted, summary.rejected) == (1, {"516": 2})
    assert len(report.getvalue().splitlines()) == 2
    assert_accounted(summary)


class HoldsOneProfile(FakeSender):
    """Answers uploads after 50 ms, except the one holding `held`: that one waits until
    a deletion has gone out (3 s at most, so that a run that waits for it still ends)."""

    def __init__(self, held: str) -> None:
        self.held = held
        self.log: list[str] = []
        self.deleted: asyncio.Event | None = None

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        if self.deleted is None:
            self.deleted = asyncio.Event()
        if kind == "delete":
            self.log.append("deletion sent")
            self.deleted.set()
        elif self.held in (orjson.loads(body)["identity"] for body in bodies):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.deleted.wait(), 3.0)
            self.log.append(f"{self.held} answered")
        else:
            await asyncio.sleep(0.05)  # the input is read and planned meanwhile
        return [ACCEPTED] * len(bodies)


def test_a_deletion_goes_out_when_what_it_waits_for_is_answered_not_when_all_is() -> None:
    """Two lanes: a's write, then its deletion, wait in one; b's write is slow in the
    other. a's deletion goes as soon as a's write is answered, not once every lane is
    idle (that would hold every deletion behind the slowest request in flight)."""
    users = [f"user-{n}" for n in range(20)]
    a = users[0]
    b = next(user for user in users if profile_hash(user) % 2 != profile_hash(a) % 2)
    sender = HoldsOneProfile(held=b)
    summary = run(
        [identify(a), identify(b), delete_user(a)], sender, batch_size=1, lanes=2, timeout=20
    )
    assert summary.accepted == 3
    assert sender.log == ["deletion sent", f"{b} answered"]


def test_other_identities_do_not_wait_for_a_delete() -> None:
    users = [f"u{i}" for i in range(40)]
    sender = Recorder(delay=0.02)
    run([delete_user("a"), identify("a"), *(identify(u) for u in users)], sender, lanes=4)
    delete_end = sender.first("end", "delete", "a")
    early = {u for u in users if sender.first("start", "upload", u) < delete_end}
    assert len(early) > len(users) // 2  # the lanes without "a" went on at once


@pytest.mark.parametrize("window", [1, 2])
def test_deletions_waiting_for_open_uploads_never_stall_the_reader(window: int) -> None:
    """200 identifies fill no request (1,000 each), then their 200 deletions fill two
    deletion requests, which must wait for the writes before them. With a backpressure
    window of one or two sealed requests, the reader waits for them, and nothing is on
    the wire: the uploads they wait for go out part full instead of the run hanging.
    Then every profile is deleted after its write and written again after, in order."""
    users = [f"u{i}" for i in range(200)]
    messages = [*(identify(u) for u in users), *(delete_user(u) for u in users)]
    messages += [identify(u, again=True) for u in users]
    sender = Recorder(delay=0.001)
    summary = run(messages, sender, lanes=3, window=window, timeout=60)
    assert_accounted(summary)
    assert summary.accepted == len(messages)
    for user in users:
        write = sender.first("end", "upload", user)
        assert write < sender.first("start", "delete", user)
        assert sender.first("end", "delete", user) < max(
            n for n, (e, k, ids) in enumerate(sender.log) if e == "start" and user in ids
        )
    deletions = [ids for e, k, ids in sender.log if (e, k) == ("start", "delete")]
    assert sorted(len(ids) for ids in deletions) == [100, 100]


def test_a_deletion_forced_out_waits_for_the_write_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the bound of operations waiting for deletions, the deletion and the upload
    batch it waits for are sealed together: the upload must still go (and be answered)
    first, or CleverTap applies the older write after the deletion. (Found by an
    adversarial tester: the deletion was handed over first and found its upload batch
    neither open nor queued.)"""
    monkeypatch.setattr(batching, "DEFER_AT_MOST", 5)
    messages = [identify("a", email="old@example.com"), delete_user("a")]
    messages += [identify("a", n=n) for n in range(6)]  # one past the bound
    sender = Recorder(delay=0.01)
    summary = run(messages, sender, lanes=1)
    assert summary.accepted == len(messages)
    assert sender.first("end", "upload", "a") < sender.first("start", "delete", "a")


def test_a_window_full_of_deletions_waiting_for_uploads_does_not_hang() -> None:
    """CleverTap's limits (a window of 32 sealed requests, 1,000 records, 100 ids), 10
    lanes: 31 full deletion batches wait for upload batches still filling; one lane's
    batch fills and goes, which fills the window; right after its answer, the next
    record seals a 32nd waiting deletion batch. The lane's task had just ended but was
    still counted as running, so the stall breaker did not fire and nothing woke the
    reader again (found by an adversarial tester; also from the command line)."""
    lanes = 10
    users = [f"w{i}" for i in range(3200)]
    lane_z = profile_hash("z") % lanes
    in_lane_z = sum(1 for u in users if profile_hash(u) % lanes == lane_z)
    messages = [identify(u) for u in users]
    messages += [delete_user(u) for u in users[:3199]]  # 31 full batches and 99
    messages += [identify("z", n=n) for n in range(1000 - in_lane_z)]  # fills z's lane
    messages += [delete_user(users[3199])]  # the 32nd waiting deletion batch
    sender = Recorder(delay=0.02)
    summary = run(messages, sender, lanes=lanes, timeout=60)
    assert_accounted(summary)
    assert summary.accepted == len(messages)


class ModelCleverTap(FakeSender):
    """Applies each request when it arrives, after a random delay answers it; records,
    per identity, whether a profile exists and the value of its last write."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.profiles: dict[str, int] = {}
        self.in_flight = self.peak = 0
        self.requests = 0
        self.retries = 0

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        for value in map(orjson.loads, bodies):
            if kind == "upload":
                self.profiles[str(value["identity"])] = value["profileData"]["v"]
            else:
                self.profiles.pop(value, None)
        return await self._answer(len(bodies))

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
    assert_accounted(summary)
    assert summary.accepted == len(messages)
    assert clevertap.profiles == expected
    assert clevertap.peak > 1, "requests never overlapped: the test proves nothing"


class LinkingCleverTap(ModelCleverTap):
    """Lands each upload record on every profile it writes (its identity, its objectId,
    and the user's an objectId is linked to by `Identity`) at a random moment while its
    request is on its way; records, per profile, the writes in the order they landed."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.landed: dict[str, list[int]] = {}

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        assert kind == "upload"
        await asyncio.sleep(self.random.random() * 0.003)
        for record in map(orjson.loads, bodies):
            data = record["profileData"]
            for name in (record.get("identity"), record.get("objectId"), data.get("Identity")):
                if name is not None:
                    self.landed.setdefault(name, []).append(data["n"])
        return await self._answer(len(bodies))  # (answered after a random time more)


LINKING = Recipe(mapper=linking_mapper, validator=no_validator, mode=ValidateMode.OFF)
"""The recipe of `tests.helpers.linking_mapper` (links, events and deletions)."""


def files_of(tmp_path: Path, blocks: list[list[dict[str, object]]]) -> list[Source]:
    """Each block of messages in a file of its own: a block of the run each, and many
    blocks of a few lines hold no link, so their records are plain (the run plans them
    after their block's others, a lane at a time)."""
    sources = []
    for number, block in enumerate(blocks):
        export = tmp_path / f"export{number:04}.ndjson"
        export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in block))
        sources.append(Source(str(export), export, export.stat().st_size))
    return sources


def run_as(
    way: str,
    sources: list[Source],
    sender: FakeSender,
    recipe: Recipe,
    pool: WorkerPool,
    *,
    batch_size: int,
    lanes: int,
) -> Summary:
    """A run of `sources` prepared `way`: one by one in the run's process, in bulk (a
    block's plain records planned a lane at a time, `wire.gather`), or by two workers."""
    recipe = replace(recipe, bulk_from=1 if way != "one by one" else 10**9)
    workers = Workers(
        count=2 if way == "two workers" else 1,
        recipe=recipe,
        block_bytes=1000,
        start_after=0,
        pool=pool if way == "two workers" else None,
    )
    upload_run = UploadRun(
        sources,
        mapper=recipe.mapper(set()),
        sender=sender,
        ledger=Ledger(),
        options=RunOptions(batch_size=batch_size, lanes=lanes),
        workers=workers,
    )
    return asyncio.run(asyncio.wait_for(upload_run.run(), 60))


@pytest.mark.parametrize(
    ("seed", "way"),
    [(seed, "one by one") for seed in range(6)]
    + [(seed, "in bulk") for seed in range(6, 12)]
    + [(12, "two workers"), (13, "two workers")],
)
def test_a_link_lands_in_order_on_the_device_and_on_the_user(
    seed: int, way: str, tmp_path: Path, worker_pool: WorkerPool
) -> None:
    """--link-anonymous: an identify with both ids writes the device's profile (its
    objectId) and links it to the user, so it must land after every earlier write of
    either profile and before every later one, though the two profiles' other writes
    go in different lanes. Shared devices: each is linked to several users in turn (a
    family tablet), between anonymous writes and the users' own. Against a model that
    knows only the input, every profile gets its writes exactly once, in input order.
    One by one, as the run's own process prepares them; in bulk (a block's plain
    records planned a lane at a time after its others, `wire.gather`); and from two
    worker processes."""
    rng = random.Random(seed)
    devices = [f"device{n}" for n in range(6)]
    users = [f"user{n}" for n in range(10)]
    messages: list[dict[str, object]] = []
    expected: dict[str, list[int]] = {}
    for n in range(600):
        device, user = rng.choice(devices), rng.choice(users)
        shape = rng.random()
        message: dict[str, object] = {"type": "identify", "traits": {"n": n}}
        message["timestamp"] = "2024-01-01T00:00:00Z"
        if shape < 0.4:  # a link
            message |= {"userId": user, "anonymousId": device}
            touched = [device, user]
        elif shape < 0.7:
            message["anonymousId"] = device
            touched = [device]
        else:
            message["userId"] = user
            touched = [user]
        messages.append(message)
        for name in touched:
            expected.setdefault(name, []).append(n)
    sources = files_of(tmp_path, [messages[n : n + 5] for n in range(0, len(messages), 5)])
    clevertap = LinkingCleverTap(seed)
    recipe = UploadJob(preset=Preset.CLASSIC, mapping=MappingOptions(link_anonymous=True)).recipe
    size = rng.choice([3, 7, 20])
    summary = run_as(way, sources, clevertap, recipe, worker_pool, batch_size=size, lanes=10)
    assert_accounted(summary)
    assert summary.accepted == len(messages)
    assert clevertap.landed == expected
    assert clevertap.peak > 1, "requests never overlapped: the test proves nothing"


class LandingCleverTap(ModelCleverTap):
    """Notes the moment each record lands: all of a request's at once, at a random
    moment while it is on its way (moments are numbered in the order they came). A
    deletion's record is the earliest deletion of its value not landed yet."""

    def __init__(self, seed: int, deletions: dict[str, list[int]]) -> None:
        super().__init__(seed)
        self.landed: dict[int, int] = {}
        self._deletions = deletions  # each value's deletions (their `n`), in input order
        self._moment = 0

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        await asyncio.sleep(self.random.random() * 0.003)
        self._moment += 1
        for value in map(orjson.loads, bodies):
            if kind == "delete":
                n = self._deletions[value].pop(0)
            else:
                n = (value.get("profileData") or value["evtData"])["n"]
            assert n not in self.landed, f"message {n} landed twice"
            self.landed[n] = self._moment
        return await self._answer(len(bodies))


@pytest.mark.parametrize(
    ("seed", "way"),
    [(seed, "one by one") for seed in range(4)]
    + [(seed, "in bulk") for seed in range(4, 8)]
    + [(8, "two workers"), (9, "two workers")],
)
def test_a_deletion_deletes_what_a_link_merged_in_order(
    seed: int, way: str, tmp_path: Path, worker_pool: WorkerPool
) -> None:
    """A link (an identify with both ids: the device's profile takes the user's
    identity) makes one CleverTap profile of two, which a deletion by either key then
    deletes whole. So a deletion must land after the earlier writes and events of the
    device as well as the user's, and the later ones of both must land after it: a
    device's event that landed first would be deleted with the user (lost), and an
    earlier one that landed after would outlive the deletion. Against a model that
    knows only the input (`deletions_hold`); one by one, in bulk, from two workers."""
    rng = random.Random(seed)
    devices = [f"device{n}" for n in range(6)]
    users = [f"user{n}" for n in range(10)]
    messages: list[dict[str, object]] = []
    steps: list[Step] = []
    deletions: dict[str, list[int]] = {}
    for n in range(1, 601):
        device, user = rng.choice(devices), rng.choice(users)
        shape = rng.random()
        if shape < 0.25:
            messages.append({"type": "identify", "userId": user, "anonymousId": device})
            steps.append(("link", (user, device)))
        elif shape < 0.4:
            messages.append({"type": "identify", "anonymousId": device})
            steps.append(("write", (device,)))
        elif shape < 0.55:
            messages.append({"type": "identify", "userId": user})
            steps.append(("write", (user,)))
        elif shape < 0.7:
            messages.append({"type": "track", "anonymousId": device})
            steps.append(("event", (device,)))
        elif shape < 0.8:
            messages.append({"type": "track", "userId": user})
            steps.append(("event", (user,)))
        else:
            key = user if shape < 0.92 else device
            messages.append({"type": "delete", "userId" if key == user else "anonymousId": key})
            steps.append(("delete", (key,)))
            deletions.setdefault(key, []).append(n)
        messages[-1]["n"] = n
    sources = files_of(tmp_path, [messages[n : n + 5] for n in range(0, len(messages), 5)])
    clevertap = LandingCleverTap(seed, deletions)
    size = rng.choice([3, 7, 20])
    summary = run_as(way, sources, clevertap, LINKING, worker_pool, batch_size=size, lanes=10)
    assert_accounted(summary)
    assert summary.accepted == len(messages)
    assert sorted(clevertap.landed) == list(range(1, len(messages) + 1))
    deletions_hold(steps, clevertap.landed)
    assert clevertap.peak > 1, "requests never overlapped: the test proves nothing"


@pytest.mark.parametrize(
    ("lanes", "way"), [(1, "in bulk"), (4, "in bulk"), (1, "two workers"), (4, "one by one")]
)
def test_a_block_that_links_into_a_group_and_deletes_it_keeps_the_group_in_order(
    lanes: int, way: str, tmp_path: Path, worker_pool: WorkerPool
) -> None:
    """An earlier block linked d to u; this block links d to v (so u, d and v are one
    profile), then has an event of u, then deletes v. The stage, which sees one block,
    kept u's event in bulk (nothing in the block names u), so it was planned after the
    deletion and landed after it (an adversarial tester's case)."""
    blocks: list[list[dict[str, object]]] = [
        [{"type": "identify", "userId": "u", "anonymousId": "d"}],
        [
            {"type": "identify", "userId": "v", "anonymousId": "d"},
            {"type": "track", "userId": "u"},
            {"type": "delete", "userId": "v"},
        ],
    ]
    steps: list[Step] = [
        ("link", ("u", "d")), ("link", ("v", "d")), ("event", ("u",)), ("delete", ("v",)),
    ]  # fmt: skip
    for n, message in enumerate((m for block in blocks for m in block), 1):
        message["n"] = n
    clevertap = LandingCleverTap(0, {"v": [4]})
    sources = files_of(tmp_path, blocks)
    summary = run_as(way, sources, clevertap, LINKING, worker_pool, batch_size=10, lanes=lanes)
    assert_accounted(summary)
    assert summary.accepted == 4
    deletions_hold(steps, clevertap.landed)


def test_links_past_the_bound_are_told_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "LINKED_AT_MOST", 2)
    monkeypatch.setattr(coordinator, "LINKED_AT_MOST", 2)
    messages = [
        {"type": "identify", "userId": "user1", "anonymousId": "device1", "n": 1},
        {"type": "identify", "userId": "user2", "anonymousId": "device2", "n": 2},
        {"type": "identify", "userId": "user3", "anonymousId": "device3", "n": 3},
        {"type": "delete", "userId": "user1", "n": 4},
    ]
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    clevertap = LandingCleverTap(0, {"user1": [4]})
    upload_run = UploadRun(
        [Source(str(export), export, export.stat().st_size)],
        mapper=linking_mapper(set()),
        sender=clevertap,
        ledger=Ledger(),
    )
    summary = asyncio.run(asyncio.wait_for(upload_run.run(), 60))
    assert summary.accepted == 4
    assert (
        "2 links of a device to a user were not remembered (past the first 2 profiles "
        "linked, or 1,000 in one group: a device shared by that many users): a later "
        "deletion of one of their profiles was not ordered against the other's writes and "
        "events"
    ) in summary.notes


def profile(user: str) -> Op:
    return encode(Upload({"type": "profile", "identity": user}))


def test_batches_are_cut_at_the_batch_size_and_deletes_at_100() -> None:
    planner = Planner(lanes=1, batch_size=3)
    sealed = []
    for i in range(7):
        sealed += planner.add(profile(f"u{i}"), owner(1), "f", (i + 1, 0, 0))
    for i in range(150):
        sealed += planner.add(encode(Delete("guid", f"g{i}")), owner(1), "f", (i + 8, 0, 0))
    sealed += planner.flush()
    assert [(b.kind.value, len(b)) for b in sealed] == [
        ("upload", 3),
        ("upload", 3),
        ("guid", 100),  # deletions fill their own batches, outside the lanes
        ("upload", 1),
        ("guid", 50),
    ]


def test_a_batch_runs_over_its_positions_but_never_over_another_batch_or_a_gap() -> None:
    """With --state, a batch's pending positions are re-read after a crash: they must
    not take in the position of another batch, which CleverTap may have acknowledged,
    nor one an earlier run settled (a gap)."""
    planner = Planner(lanes=1)
    steps: list[tuple[tuple[int, int, int], Op, bool]] = [
        ((1, 0, 0), profile("a"), False),
        ((4, 0, 0), profile("b"), False),  # lines 2-3 skipped or invalid: same run
        ((5, 0, 0), encode(Delete("identity", "x")), False),
        ((6, 0, 0), profile("c"), False),
        ((7, 0, 0), profile("d"), False),
        ((9, 2, 1), profile("e"), True),  # positions before it were done in an earlier run
    ]
    for position, op, gap in steps:
        planner.add(op, owner(position[0]), "f", position, gap)
    uploads, deletes = planner.flush()
    assert uploads.runs == {
        "f": [[(1, 0, 0), (4, 0, 0)], [(6, 0, 0), (7, 0, 0)], [(9, 2, 1), (9, 2, 1)]]
    }
    assert deletes.runs == {"f": [[(5, 0, 0), (5, 0, 0)]]}


def test_at_most_100_tokens_per_upload() -> None:
    planner = Planner(lanes=1)
    sealed = []
    for i in range(150):
        token = {"type": "token", "objectId": "o", "tokenData": {"id": f"t{i}", "type": "fcm"}}
        sealed += planner.add(encode(Upload(token)), owner(i + 1), "f", (i + 1, 0, 0))
    sealed += planner.flush()
    assert [len(b) for b in sealed] == [100, 50]


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
    assert_accounted(summary)
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
        "part": 0,
        "messageId": None,
        "identity": "bad-phone",
        "stage": "api",
        "code": "516",
        "message": "bad phone",
    }
    dead = failed.getvalue().splitlines()
    assert len(dead) == 4 and orjson.loads(dead[-1]) == messages[1]


class SteppingSender(FakeSender):
    """Answers after `steps` turns of the event loop, as an HTTP exchange does (write,
    read headers, read body...), and notes how many records had been read by then."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.run: UploadRun | None = None
        self.read_at_answer: list[int] = []
        self.requests = 0
        self.retries = 0

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        assert kind == "upload", "no deletions here"
        self.requests += 1
        for _ in range(self.steps):
            await asyncio.sleep(0)
        assert self.run is not None
        self.read_at_answer.append(self.run.summary.read)
        return [ACCEPTED] * len(bodies)


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
        options=RunOptions(lanes=1),
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


class DeletingThreeAtATime(Recorder):
    """Deletion requests answered three at a time, as CleverTap takes them."""

    def __init__(self) -> None:
        super().__init__(delay=0.02)
        self.slots = asyncio.Semaphore(3)

    async def _answer(self, kind: str, ids: tuple[str, ...]) -> list[Verdict]:
        if kind == "upload":
            return await super()._answer(kind, ids)
        async with self.slots:
            return await super()._answer(kind, ids)


def test_deletions_planned_at_the_end_wait_for_a_slot_to_fill_their_request() -> None:
    """1,000 users identified and deleted; one in ten identified and deleted again, which
    waits for the first deletion's answer, so 10 of them come with each answer at the end.
    Sealed at every answer, they went in 30, 30, 30 and 10 (four round trips of
    CleverTap's three deletion slots); while three deletion requests are unanswered, a
    new one would wait anyway, so they fill one request instead. Each user's writes and
    deletions keep their order."""
    messages: list[dict[str, object]] = []
    for i in range(1000):
        user = f"u{i}"
        messages += [identify(user), delete_user(user)]
        if i % 10 == 0:
            messages += [identify(user, again=True), delete_user(user)]
    sender = DeletingThreeAtATime()
    upload_run = UploadRun(
        [STDIN],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=sender,
        ledger=Ledger(),
        options=RunOptions(),
        stdin=io.BytesIO(b"".join(orjson.dumps(m) + b"\n" for m in messages)),
    )
    asyncio.run(upload_run.run())
    deletions = [ids for event, kind, ids in sender.log if (event, kind) == ("start", "delete")]
    assert [len(ids) for ids in deletions[:10]] == [100] * 10
    again = deletions[10:]
    assert sorted(user for ids in again for user in ids) == sorted(
        f"u{i}" for i in range(0, 1000, 10)
    )
    assert len(again) <= 2, [len(ids) for ids in again]
    seen: dict[str, list[str]] = {}
    for event, kind, ids in sender.log:
        if event == "start":
            for user in ids:
                seen.setdefault(user, []).append(kind)
    for i in range(1000):
        twice = ["upload", "delete", "upload", "delete"]
        assert seen[f"u{i}"] == (twice if i % 10 == 0 else twice[:2]), i


class Refusing(Recorder):
    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        if on_wire is not None:
            on_wire()
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
    assert summary.read >= 10
    # Each record is counted once: failed, whether its request went out or not.
    assert summary.failed["aborted"] + summary.failed["interrupted"] == summary.read
    assert summary.failed["aborted"] >= 10
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


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="Linux's /dev/full")
def test_a_report_on_a_full_disk_stops_a_run_without_a_state_file_at_once() -> None:
    """A report file holds its lines until a megabyte of them: without a state file,
    whose checkpoints flush it, the run sent all it read and said at the end that the
    report's last lines were missing (a walkthrough, on a 64 KiB disk). README: a full
    disk stops the run."""
    lines = [b"not json" if i % 10 == 0 else orjson.dumps(identify(f"u{i}")) for i in range(2000)]
    sender = Recorder()
    report = Output(Path("/dev/full"), "report", append=True)
    upload_run = UploadRun(
        [STDIN],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=sender,
        ledger=Ledger(report=report),
        options=RunOptions(batch_size=10),
        stdin=io.BytesIO(b"\n".join(lines) + b"\n"),
    )
    try:
        with pytest.raises(OutputError, match=r"/dev/full: cannot write the report \(No space"):
            asyncio.run(upload_run.run())
    finally:
        report.close()
    summary = upload_run.summary
    assert_accounted(summary)
    assert summary.read < 200  # at the first request, not at the end
    sent = sum(len(ids) for event, _, ids in sender.log if event == "start")
    assert summary.accepted + summary.failed["aborted"] == sent


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
    assert_accounted(summary)
    assert summary.read < 500  # it stopped early
    sent = sum(len(ids) for event, _, ids in sender.log if event == "start")
    assert summary.accepted + summary.failed["aborted"] == sent  # what went out is counted
    assert summary.invalid["malformed-json"] > 0
