"""The delivery core against a model CleverTap, tried the way an adversary would.

Hypothesis draws an export (identifies, events, deletions of repeated identities,
multi-record lines, skipped and broken lines), the answer to every request (accept,
429, a connection refused, a 500 or a lost connection before or after storing, a
partial rejection, a 555, a slow answer) and the moments a run is killed (the state file
as it was at that instant, as `kill -9` leaves it). Runs go on over the same state until
one ends, with a fixed number of requests in flight or `--concurrency auto` (429s then
shrink the window below the lanes). Then, independently of ctsync's own helpers:

- CleverTap's profiles equal the input applied in order (less what it rejected);
- no record is sent again after CleverTap acknowledged it;
- an event is stored at most once, and one that is missing was reported outcome-unknown
  (with --retry-unknown: never missing);
- in every run, read = skipped + invalid + accepted + rejected + failed.
"""

from __future__ import annotations

import asyncio
import io
import random
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctsync.client import CleverTapClient
from ctsync.concurrency import AUTO
from ctsync.ledger import Ledger, Summary
from ctsync.reader import collect_sources
from ctsync.records import Delete, Mapper, MapResult, Message, Skip, Upload
from ctsync.run import RunOptions, UploadRun
from ctsync.run.stage import Recipe
from ctsync.run.workers import WorkerPool, Workers
from ctsync.settings import ClientSettings, RetryPolicy, Secret
from ctsync.state import StateFile
from tests.helpers import examples, no_validator

USERS = ["u0", "u1", "u2"]
T = TypeVar("T")


def mapper(message: Message) -> MapResult:
    """A small preset: identify -> profile, track -> event, Delete User -> deletion,
    multi -> profile and event (two operations from one message)."""
    kind, user, seq = message["type"], message["userId"], message["seq"]
    profile = {"type": "profile", "identity": user, "profileData": {"plan": seq}}
    event = {"type": "event", "identity": user, "evtName": "E", "evtData": {"seq": seq}}
    if kind == "identify":
        return [Upload(profile)]
    if kind == "delete":
        return [Delete("identity", user)]
    if kind == "track":
        return [Upload(event)]
    if kind == "multi":
        return [Upload(profile), Upload(event)]
    return Skip(kind)


messages = st.tuples(
    st.sampled_from(["identify", "identify", "track", "delete", "multi", "page"]),
    st.sampled_from(USERS),
)
lines = st.lists(
    st.one_of(
        messages.map(lambda m: [m]),
        st.lists(messages, min_size=2, max_size=3),  # a {"batch": [...]} envelope line
        st.just([]),  # a broken line
    ),
    min_size=1,
    max_size=25,
)

ANSWERS = ["ok", "ok", "ok", "429", "refused", "500-before", "500-after", "lost-after"]


class Killed(Exception):
    pass


@dataclass
class ModelCleverTap:
    """Stores profiles in arrival order, appends events, deletes profiles."""

    data: st.DataObject
    state_path: Path
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: Counter[int] = field(default_factory=Counter)
    acknowledged: set[tuple[str, int]] = field(default_factory=set)
    resent_after_ack: list[tuple[str, int]] = field(default_factory=list)
    rejected: set[tuple[str, int]] = field(default_factory=set)
    stored: set[tuple[str, int]] = field(default_factory=set)
    verdicts: dict[tuple[str, int], bool] = field(default_factory=dict)
    attempts: Counter[bytes] = field(default_factory=Counter)
    kill_at: int | None = None
    kill_while_reading: int | None = None
    requests: int = 0
    killed: bool = False
    snapshot: list[tuple[Any, ...]] | None = None
    # With worker processes, requests reach the model in an order that depends on when
    # each block comes back: its choices then come from this seed and the request's (or
    # record's) content, not from `data` in arrival order (Hypothesis replays a case and
    # requires the same draws in the same order).
    seed: int | None = None

    def _pick(self, label: str, key: object, choices: list[T]) -> T:
        if self.seed is None:
            return self.data.draw(st.sampled_from(choices), label=label)
        return random.Random(f"{self.seed}|{label}|{key!r}").choice(choices)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        trace = request.extensions["trace"]
        if self.killed:
            raise httpx.ConnectError("the process is gone")
        await trace("http11.send_request_headers.started", {})
        await trace("http11.send_request_body.complete", {})
        self.requests += 1
        body = orjson.loads(request.content)
        self.attempts[request.content] += 1
        answer = "ok"
        attempt = (request.content, self.attempts[request.content])
        if attempt[1] <= 3:  # then it goes through: retries end
            answer = self._pick("answer", attempt, ANSWERS)
        if self._pick("slow", attempt, [False, True]):
            for _ in range(self._pick("turns", attempt, [1, 2, 3, 4, 5])):
                await asyncio.sleep(0)
        if self.killed:
            raise httpx.ConnectError("the process is gone")
        if answer == "429":
            return httpx.Response(429, json={"status": "fail", "error": "Too many"})
        if answer == "refused":
            raise httpx.ConnectError("refused")
        if answer == "500-before":
            return self._kill_or(httpx.Response(500, text="oops"))
        records = body.get("d")
        rejected = [i for i, record in enumerate(records or []) if self._refuses(record)]
        self._store(request.url.path, body, set(rejected))
        if answer == "500-after":
            return self._kill_or(httpx.Response(504, text="gateway timeout"))
        if answer == "lost-after":
            self._kill_or(httpx.Response(200))
            raise httpx.ReadError("connection reset")
        if request.url.path.endswith("profiles.json"):
            response = httpx.Response(200, json={"status": "success"})
        else:
            unprocessed = [
                {"code": 514, "error": f"Gender. Skipped record number : {i + 1}"} for i in rejected
            ]
            processed = len(records) - len(rejected)
            response = httpx.Response(
                200,
                json={"status": "success", "processed": processed, "unprocessed": unprocessed},
            )
        self._kill_or(response)  # killed now: the answer never reaches ctsync
        self._acknowledge(request.url.path, body, set(rejected))
        return response

    def _refuses(self, record: dict[str, Any]) -> bool:
        """CleverTap's rules are deterministic: a record it refuses once, it always does."""
        mark = _mark(record)
        if mark not in self.verdicts:
            self.verdicts[mark] = self._pick("refuse", mark, list(range(10))) == 0
        return self.verdicts[mark]

    def _kill_or(self, response: httpx.Response) -> httpx.Response:
        """At the drawn request, the process dies before it reads the answer: the state
        file is what it was at this instant."""
        if self.kill_at is not None and self.requests >= self.kill_at and not self.killed:
            self.kill_now()
        return response

    def kill_now(self) -> None:
        self.killed = True
        with sqlite3.connect(self.state_path) as db:
            self.snapshot = db.execute("SELECT * FROM inputs").fetchall()
        raise Killed

    def _store(self, path: str, body: dict[str, Any], rejected: set[int]) -> None:
        if path.endswith("profiles.json"):
            for user in body["identity"]:
                self.profiles.pop(user, None)
            return
        for i, record in enumerate(body["d"]):
            if i in rejected:
                continue
            if record["type"] == "profile":
                self.profiles.setdefault(record["identity"], {}).update(record["profileData"])
                self.stored.add(("profile", record["profileData"]["plan"]))
            else:
                self.events[record["evtData"]["seq"]] += 1

    def _acknowledge(self, path: str, body: dict[str, Any], rejected: set[int]) -> None:
        if path.endswith("profiles.json"):
            return
        for i, record in enumerate(body["d"]):
            mark = _mark(record)
            if i in rejected:
                self.rejected.add(mark)
                continue
            if mark in self.acknowledged:
                self.resent_after_ack.append(mark)
            self.acknowledged.add(mark)


def _mark(record: dict[str, Any]) -> tuple[str, int]:
    data = record.get("profileData") or record.get("evtData") or {}
    return (record["type"], data["seq"] if "seq" in data else data["plan"])


def write_export(path: Path, drawn: list[list[tuple[str, str]]]) -> list[tuple[str, str, int]]:
    """The export file, and its messages in input order as (type, user, seq)."""
    out = []
    ordered = []
    seq = 0
    for line in drawn:
        if not line:
            out.append(b'{"type": "identify", "userId": }')
            continue
        batch = []
        for kind, user in line:
            seq += 1
            batch.append({"type": kind, "userId": user, "seq": seq})
            ordered.append((kind, user, seq))
        out.append(orjson.dumps(batch[0] if len(batch) == 1 else {"batch": batch}))
    path.write_bytes(b"\n".join(out) + b"\n")
    return ordered


def model_mapper(tokens: set[tuple[str, str]]) -> Mapper:
    """The model's preset as a worker process builds it (`Recipe`)."""
    return mapper


class KillingLedger(Ledger):
    """With workers the mapper runs in another process: the drawn kill comes as the
    main process takes the record in instead."""

    def __init__(self, model: ModelCleverTap, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.taken = 0

    def read(self) -> None:
        self.taken += 1
        if self.model.kill_while_reading == self.taken and not self.model.killed:
            self.model.kill_now()
        super().read()


def one_run(
    export: Path,
    state_path: Path,
    model: ModelCleverTap,
    options: RunOptions,
    workers: Workers | None = None,
    adaptive: bool = False,
) -> tuple[Summary, list[dict[str, Any]]]:
    report = Buffered()
    mapped = 0

    def killing_mapper(message: Message) -> MapResult:
        """Dies at the drawn record, while reading: kill -9 between two requests."""
        nonlocal mapped
        mapped += 1
        if model.kill_while_reading == mapped and not model.killed:
            model.kill_now()
        return mapper(message)

    settings_ = ClientSettings(
        account_id="a",
        passcode=Secret("model-passcode-0001"),
        base_url="http://clevertap.test",
        concurrency=AUTO if adaptive else options.lanes,
        retry=RetryPolicy(max_retries=100, base_delay=0.0, max_delay=0.0),
    )

    async def go() -> Summary:
        async with CleverTapClient(
            settings_, transport=httpx.MockTransport(model.handle)
        ) as client:
            state = StateFile(state_path)
            try:
                ledger = (
                    Ledger(report=report, resumable=True)
                    if workers is None
                    else KillingLedger(model, report=report, resumable=True)
                )
                run = UploadRun(
                    collect_sources([str(export)]),
                    mapper=killing_mapper if workers is None else mapper,
                    sender=client,
                    ledger=ledger,
                    options=options,
                    state=state,
                    workers=workers,
                )
                try:
                    async with asyncio.timeout(20):  # a hang is a failure, not a wait
                        return await run.run()
                except Killed:
                    return run.summary
                except TimeoutError:
                    raise AssertionError("the run hangs") from None
            finally:
                state.close()

    summary = asyncio.run(go())
    if not model.killed:
        report.flush()  # closed at the end of a run; a killed run loses what it buffered
    if model.snapshot is not None:  # kill -9: the state is what it was at that instant
        with sqlite3.connect(state_path) as db:
            db.execute("DELETE FROM inputs")
            for row in model.snapshot:
                db.execute(f"INSERT INTO inputs VALUES ({','.join('?' * len(row))})", row)
    return summary, [orjson.loads(line) for line in report.getvalue().splitlines()]


class Buffered(io.BytesIO):
    """A report file: what is written reaches the file only when flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = b""

    def write(self, data: Any) -> int:
        self.pending += bytes(data)
        return len(data)

    def flush(self) -> None:
        super().write(self.pending)
        self.pending = b""


@dataclass(frozen=True)
class Scenario:
    """A drawn run: the export's lines, how ctsync is told to send them, and the kills
    before the last rerun (`(True, n)`: at the n-th record read; `(False, n)`: at the
    n-th request)."""

    drawn: list[list[tuple[str, str]]]
    lanes: int
    batch_size: int
    window: int
    retry_unknown: bool
    kills: list[tuple[bool, int]]


scenarios = st.builds(
    Scenario,
    drawn=lines,
    lanes=st.integers(1, 3),
    batch_size=st.integers(1, 4),
    window=st.integers(1, 4),
    retry_unknown=st.booleans(),
    kills=st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=3),
)


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios, data=st.data(), adaptive=st.booleans())
def test_the_delivery_core_keeps_every_promise(
    tmp_path_factory: Any, scenario: Scenario, data: st.DataObject, adaptive: bool
) -> None:
    check_promises(tmp_path_factory, scenario, data, None, adaptive)


@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scenario=scenarios,
    data=st.data(),
    block_bytes=st.integers(1, 300),
    in_flight=st.integers(1, 3),
    bulk_from=st.sampled_from([1, 2, 10_000]),
)
def test_the_delivery_core_keeps_every_promise_with_two_workers(
    tmp_path_factory: Any,
    scenario: Scenario,
    data: st.DataObject,
    block_bytes: int,
    in_flight: int,
    bulk_from: int,
    worker_pool: WorkerPool,
) -> None:
    """The same promises with the records prepared by two worker processes (blocks of
    a few lines, so that every input is cut in several), their plain records taken in
    bulk from one in a block on (`wire.gather`), or never. The processes are shared by
    every example (a pool of spawned processes per example took most of its time)."""
    recipe = Recipe(model_mapper, no_validator, bulk_from=bulk_from)
    workers = Workers(
        count=2,
        recipe=recipe,
        block_bytes=block_bytes,
        start_after=0,
        in_flight=in_flight,
        pool=worker_pool,
    )
    check_promises(tmp_path_factory, scenario, data, workers)


@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios, data=st.data(), block_bytes=st.integers(1, 1000))
def test_the_delivery_core_keeps_every_promise_with_plain_records_in_bulk(
    tmp_path_factory: Any, scenario: Scenario, data: st.DataObject, block_bytes: int
) -> None:
    """The same promises in one process (`--workers 1`), every block's plain records
    (an upload alone on its line's message, of a profile nothing else in the block
    touches) taken in bulk after the block's other records, whatever their number."""
    recipe = Recipe(model_mapper, no_validator, bulk_from=1)
    workers = Workers(count=1, recipe=recipe, block_bytes=block_bytes, start_after=0)
    check_promises(tmp_path_factory, scenario, data, workers)


def check_promises(
    tmp_path_factory: Any,
    scenario: Scenario,
    data: st.DataObject,
    workers: Workers | None,
    adaptive: bool = False,
) -> None:
    drawn = scenario.drawn
    tmp = tmp_path_factory.mktemp("model")
    export, state_path = tmp / "export.ndjson", tmp / "state.db"
    ordered = write_export(export, drawn)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed") if workers is not None else None
    model = ModelCleverTap(data, state_path, seed=seed)
    options = RunOptions(
        lanes=scenario.lanes,
        batch_size=scenario.batch_size,
        window=scenario.window,
        retry_unknown=scenario.retry_unknown,
    )
    unknown_events: set[int] = set()
    by_line = {}
    seq = 0
    document = len(drawn) == 1 and len(drawn[0]) > 1  # one envelope: its elements are lines
    for number, line in enumerate(drawn, 1):
        for part, _ in enumerate(line):
            seq += 1
            by_line[(part + 1, 0) if document else (number, part)] = seq
    plan = [*scenario.kills, None]
    for kill in plan:
        model.killed, model.snapshot, model.requests = False, None, 0
        model.kill_at = model.kill_while_reading = None
        if kill is not None:
            reading, at = kill
            if reading:
                model.kill_while_reading = at
            else:
                model.kill_at = at
        summary, report = one_run(export, state_path, model, options, workers, adaptive)
        settled = (
            summary.accepted
            + sum(summary.skipped.values())
            + sum(summary.invalid.values())
            + sum(summary.rejected.values())
            + sum(summary.failed.values())
        )
        assert summary.read == settled, summary
        for entry in report:
            if entry["code"] == "outcome-unknown":
                unknown_events.add(by_line[(entry["line"], entry.get("part", 0))])
        if not model.killed:
            break
    assert not model.killed

    assert model.resent_after_ack == [], "a record CleverTap acknowledged was sent again"
    # CleverTap ends as if it had applied, in input order, every write it stored.
    expected: dict[str, dict[str, Any]] = {}
    for kind, user, seq in ordered:
        if kind == "delete":
            expected.pop(user, None)
        elif kind in ("identify", "multi") and ("profile", seq) in model.stored:
            expected.setdefault(user, {})["plan"] = seq
    assert {u: p for u, p in model.profiles.items() if p} == {
        u: p for u, p in expected.items() if p
    }
    events = {seq for kind, _, seq in ordered if kind in ("track", "multi")}
    for seq in events - {seq for kind, seq in model.rejected - model.stored if kind == "event"}:
        if scenario.retry_unknown:
            assert model.events[seq] >= 1, f"event {seq} is missing"
        else:
            assert model.events[seq] <= 1, f"event {seq} stored twice"
            assert model.events[seq] == 1 or seq in unknown_events, (
                f"event {seq} is missing and was not reported unknown"
            )
