"""`--workers`: records prepared in worker processes give exactly what one process gives.

Hypothesis draws an export the way real ones go wrong (broken and blank lines, CRLF,
envelopes, JSON that is not an object, overlong lines, a last line without its newline,
records CleverTap's rules refuse or fix, device tokens repeated across the file), a
preset or mapping file, a validation mode, and how the input is cut into blocks. One run
goes through one process, another through two workers; the dry-run requests (in any
order across lanes), the report, the dead letters, the summary and the mapper's counts
must be identical, byte for byte.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import io
import os
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ctsync.api import UploadJob, upload
from ctsync.dedupe import MessageIds
from ctsync.ledger import Ledger, Summary
from ctsync.mapping import dates_left_as_text, dropped_values, preset_as_mapping
from ctsync.model import ACCEPTED, OnWire, Request, Verdict
from ctsync.prepare import ValidateMode
from ctsync.presets import MappingOptions, Nested, Preset
from ctsync.reader import (
    Block,
    InputRecord,
    LocalFile,
    OpenSource,
    Source,
    decode_block,
    fetch,
    read_blocks,
    read_source,
)
from ctsync.records import Mapper, Message, Origin, Outcome, Stage, counting
from ctsync.run import DryRunSender, RunOptions, UploadRun
from ctsync.run.stage import (
    Recipe,
    RecordStage,
    lookups_hold,
    tokens_sent,
    without_sent_tokens,
)
from ctsync.run.wire import READY
from ctsync.run.workers import WorkerError, WorkerPool, Workers, default_workers
from ctsync.sources import UTF8_BOM
from tests.helpers import classic_with_tokens, examples, mapper_that_dies_in_a_worker, no_validator

USERS = ["u1", "u2", "u3", 7, "", None]
DEVICES = [("a1", "tok-1"), ("a2", "tok-2"), ("a1", "tok-2"), (None, "tok-3")]
TRAITS = st.fixed_dictionaries(
    {},
    optional={
        "email": st.sampled_from(["a@example.com", "not-an-email"]),
        "phone": st.sampled_from(["+14155550100", "4155550100"]),
        "gender": st.sampled_from(["female", "x"]),
        "birthday": st.sampled_from(["1990-02-01", "1990-02-01T00:00:00.123456Z"]),
        "createdAt": st.sampled_from(["2023-05-18T22:58:45+00:00", "2023-05-18T22:58:45.1Z"]),
        "address": st.just({"city": "X", "movedAt": "2020-01-01T00:00:00.123456Z"}),
        "tags": st.just(["a", "b"]),
    },
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(["identify", "track", "page", "screen", "group", "alias"]))
    message: Message = {
        "type": kind,
        "messageId": f"m{draw(st.integers(0, 10**6))}",
        "timestamp": draw(st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01", "later"])),
    }
    user = draw(st.sampled_from(USERS))
    if user is not None:
        message["userId"] = user
    if draw(st.booleans()):
        message["anonymousId"] = draw(st.sampled_from(["a1", "a2", "a3"]))
    if kind == "identify":
        message["traits"] = draw(TRAITS)
    elif kind == "track":
        message["event"] = draw(st.sampled_from(["Delete User", "Order Completed", "Viewed"]))
        message["properties"] = draw(TRAITS)
    elif kind == "alias":
        message["previousId"] = "a1"
    if draw(st.integers(0, 3)) == 0:
        anonymous, token = draw(st.sampled_from(DEVICES))
        message["context"] = {"device": {"token": token, "type": "android"}}
        if anonymous is None:
            message.pop("anonymousId", None)
        else:
            message["anonymousId"] = anonymous
    return message


LINE = st.one_of(
    messages().map(orjson.dumps),
    messages().map(lambda m: orjson.dumps(m) + b"\r"),
    st.lists(messages(), min_size=1, max_size=3).map(lambda b: orjson.dumps({"batch": b})),
    st.sampled_from([b"", b"   ", b'{"type": "identify", "userId": ', b"[1, 2]", b"null"]),
    st.just(b'{"type":"identify","userId":"long","traits":{"t":"' + b"x" * 1100 + b'"}}'),
)


@st.composite
def exports(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(LINE, min_size=1, max_size=40))
    data = b"\n".join(lines)
    return data if draw(st.booleans()) else data + b"\n"


PRESETS = ["actions", "classic", "mapping"]


def recipe_for(preset: str, validate: str) -> Recipe:
    """The same recipe the command line builds, for a preset or a mapping file."""
    mapping_file = (
        orjson.dumps(preset_as_mapping("classic")).decode() if preset == "mapping" else None
    )
    job = UploadJob(
        preset=Preset(preset if preset != "mapping" else "actions"),
        mapping_file=mapping_file,
        mapping=MappingOptions(max_event_properties=3),
        run=RunOptions(validate=ValidateMode(validate)),
    )
    return job.recipe


def run_once(
    export: Path, built: Recipe, validate: str, workers: Workers | None
) -> tuple[bytes, bytes, bytes, dict[str, Any], Mapper]:
    """One dry run: (requests, report, dead letters, summary, mapper)."""
    # (a file as the command line names it: its blocks travel to workers as spans)
    source = LocalFile(str(export), export, export.stat().st_size, max_line_bytes=1024)
    return run_source(source, built, validate, workers)


def run_source(
    source: Source | list[Source],
    built: Recipe,
    validate: str,
    workers: Workers | None,
    outputs: tuple[bool, bool] = (True, True),
    sender: type[DryRunSender] = DryRunSender,
    message_ids: MessageIds | None = None,
) -> tuple[bytes, bytes, bytes, dict[str, Any], Mapper]:
    """`outputs`: whether the run writes a report and dead letters (else b"");
    `message_ids`: the run dedupes with them."""
    requests, report, failed = io.BytesIO(), io.BytesIO(), io.BytesIO()
    if workers is None:  # one process, as `ctsync upload --workers 1` runs it
        workers = Workers(count=1, recipe=built)
    tokens: set[tuple[str, str]] = set()  # the run's, shared by mapper and workers
    mapper = built.mapper(tokens)
    validator = built.validator()
    ledger = Ledger(
        report=report if outputs[0] else None,
        dead_letters=failed if outputs[1] else None,
        dry_run=True,
        run="the-run",
    )
    run = UploadRun(
        source if isinstance(source, list) else [source],
        mapper=mapper,
        tokens=tokens,
        sender=sender(requests),
        ledger=ledger,
        options=RunOptions(validate=ValidateMode(validate), batch_size=3, lanes=2),
        validator=validator,
        workers=workers,
        message_ids=message_ids,
    )
    summary: Summary = asyncio.run(run.run())
    found = summary.as_dict()
    del found["elapsed_seconds"], found["cpu_seconds"]
    return requests.getvalue(), report.getvalue(), failed.getvalue(), found, mapper


@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=exports(),
    preset=st.sampled_from(PRESETS),
    validate=st.sampled_from(["strict", "fix", "warn", "off"]),
    block_bytes=st.integers(1, 3000),
    start_after=st.sampled_from([0, 0, 500, 10**9]),
    in_flight=st.integers(1, 3),
)
def test_two_workers_give_byte_for_byte_what_one_process_gives(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    preset: str,
    validate: str,
    block_bytes: int,
    start_after: int,
    in_flight: int,
    worker_pool: WorkerPool,
) -> None:
    export = tmp_path_factory.mktemp("workers") / "export.ndjson"
    export.write_bytes(data)
    built = recipe_for(preset, validate)
    one = run_once(export, built, validate, None)
    workers = Workers(
        count=2,
        recipe=built,
        block_bytes=block_bytes,
        start_after=start_after,
        in_flight=in_flight,
        pool=worker_pool,
    )
    two = run_once(export, built, validate, workers)
    # The same requests, byte for byte. Lanes send side by side, and which lane's next
    # request comes first depends on when the reader yields, so only their order
    # across lanes may differ (within a lane, `test_pipeline` checks the order).
    assert sorted(two[0].splitlines()) == sorted(one[0].splitlines()), "the requests differ"
    assert two[1] == one[1], "the report differs"
    assert two[2] == one[2], "the dead letters differ"
    assert two[3] == one[3], "the summary differs"
    assert dropped_values(two[4]) == dropped_values(one[4])
    assert dates_left_as_text(two[4]) == dates_left_as_text(one[4])
    assert one[3]["read"] == sum(one[3][k] for k in ("skipped", "invalid", "accepted", "failed"))


class Refusing(DryRunSender):
    """CleverTap refusing every record whose body's CRC is odd (without its `ts`, which
    may be the time of the run): the same records in every run, whatever the requests
    they went in."""

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        await super().send(request, on_wire)
        refused = Verdict(Outcome.REJECTED, "refused-here", "refused by the test", Stage.API)
        return [refused if _odd(body) else ACCEPTED for body in request.bodies]


def _odd(body: bytes) -> bool:
    record = orjson.loads(body)
    if isinstance(record, dict):
        record.pop("ts", None)
    return zlib.crc32(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)) % 2 == 1


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # a refusal and an invalid line whose order in the report depends on timing
    data=b"\n".join(
        [
            *(
                orjson.dumps(
                    {
                        "type": "identify",
                        "messageId": "m0",
                        "timestamp": "2024-05-01T12:00:00Z",
                        "userId": user,
                        "traits": {},
                        "context": {"device": {"token": "tok-1", "type": "android"}},
                        "anonymousId": "a1",
                    }
                )
                for user in ("u2", "u1", "u1")
            ),
            b'{"type": "identify", "userId": ',
        ]
    ),
    preset="actions",
    outputs=(True, False),
)
@given(data=exports(), preset=st.sampled_from(PRESETS), outputs=st.sampled_from(
    [(False, False), (True, False), (False, True)]
))  # fmt: skip
def test_records_come_back_without_their_lines_only_when_nothing_writes_them(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    preset: str,
    outputs: tuple[bool, bool],
    worker_pool: WorkerPool,
) -> None:
    """Without a report and dead letters, the stage sends back no line of a record that
    goes to CleverTap (half the bytes from the workers, none kept in flight); the run
    sends the same requests and counts the same. With either, each holds what it holds
    when both are written."""
    export = tmp_path_factory.mktemp("lines") / "export.ndjson"
    export.write_bytes(data)
    built = recipe_for(preset, "warn")
    source = Source(str(export), export, export.stat().st_size, max_line_bytes=1024)
    both = run_source(source, built, "warn", None, sender=Refusing)
    workers = Workers(count=2, recipe=built, block_bytes=700, start_after=0, pool=worker_pool)
    some = run_source(source, built, "warn", workers, outputs, Refusing)
    assert sorted(some[0].splitlines()) == sorted(both[0].splitlines())
    # Refusals are written when the answer comes, invalid lines when they are read: the
    # order of the two depends on the timing of the processes, the lines do not.
    assert sorted(some[1].splitlines()) == (sorted(both[1].splitlines()) if outputs[0] else [])
    assert sorted(some[2].splitlines()) == (sorted(both[2].splitlines()) if outputs[1] else [])
    assert some[3] == both[3]
    if outputs == (False, False):  # the stage itself: no line on a record to send
        stage = RecordStage.from_recipe(replace(built, lines=False))
        opened = OpenSource(source)
        try:
            for item in read_blocks(opened, 700):
                if isinstance(item, Block):
                    results = stage.block(item, None)[0]
                else:
                    results = [stage.record(item, None)]
                for result in results:
                    if result[2] == READY:  # a line only to prepare it again (tokens)
                        assert result[3] is None or result[6], result
        finally:
            opened.close()


@settings(max_examples=examples(200))
@given(data=exports(), block_bytes=st.integers(1, 5000), limit=st.integers(1024, 1500))
def test_blocks_hold_the_records_of_the_input_in_order(
    data: bytes, block_bytes: int, limit: int
) -> None:
    """The blocks, decoded, are exactly what the one-process reader reads: the same
    records, origins, raw lines and partial marks, in the same order."""
    source = Source("-", None, None, max_line_bytes=limit)
    expected = [
        (r.origin, r.raw, r.message, r.error, r.partial)
        for r in read_source(OpenSource(source, io.BytesIO(data)))
    ]
    from ctsync.reader import decode_block

    found = []
    for item in read_blocks(OpenSource(source, io.BytesIO(data)), block_bytes):
        records = decode_block(item) if isinstance(item, Block) else [item]
        found += [(r.origin, r.raw, r.message, r.error, r.partial) for r in records]
    assert found == expected


def _blocks_of(path: Path, block_bytes: int, limit: int) -> list[Block | InputRecord]:
    source = LocalFile(str(path), path, path.stat().st_size, max_line_bytes=limit)
    opened = OpenSource(source)
    try:
        return list(read_blocks(opened, block_bytes))
    finally:
        opened.close()


def _assert_spans_hold_the_blocks(path: Path, items: list[Block | InputRecord]) -> int:
    """Each block's span is where its bytes are in the file, and a worker reading the
    span (`fetch` of the lean block) gets them; how many blocks had a span."""
    content = path.read_bytes()
    spans = 0
    for item in items:
        if not isinstance(item, Block) or item.span is None:
            continue
        spans += 1
        span = item.span
        assert content[span.offset : span.offset + span.length] == item.data
        lean = item.lean()
        assert lean.data == b""
        fetched = fetch(lean)
        assert fetched is not None
        assert (fetched.source, fetched.lineno, fetched.data) == (
            item.source,
            item.lineno,
            item.data,
        )
    return spans


@settings(max_examples=examples(200), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=exports(),
    head=st.sampled_from([b"", UTF8_BOM, b"\n \n", UTF8_BOM + b"\n\n", b"[1, 2]\n"]),
    block_bytes=st.integers(1, 5000),
    limit=st.integers(1024, 1500),
)
def test_a_worker_reads_a_blocks_bytes_from_the_file_where_the_run_read_them(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, head: bytes, block_bytes: int, limit: int
) -> None:
    """A block of a plain file travels to a worker as a span, which the worker reads
    itself: whatever comes first (a byte-order mark, blank lines, a first line that is
    an array) and however the lines are cut, the span holds exactly the block's bytes."""
    path = tmp_path_factory.mktemp("spans") / "export.ndjson"
    path.write_bytes(head + data)
    items = _blocks_of(path, block_bytes, limit)
    spans = _assert_spans_hold_the_blocks(path, items)
    whole = [item for item in items if isinstance(item, Block) and b"\n" in item.data]
    assert spans >= len(whole)  # every block of whole lines has its span


def test_spans_hold_across_reads_overlong_lines_and_blank_runs(tmp_path: Path) -> None:
    """A file of many reads: runs of blank lines, lines longer than any record may be
    (skipped across several reads), CRLF, and a last line without its line end."""
    lines: list[bytes] = []
    for n in range(3000):
        lines.append(orjson.dumps({"type": "identify", "userId": f"u{n}", "messageId": f"m{n}"}))
        if n % 500 == 7:
            lines.append(b'{"type":"identify","traits":{"t":"' + b"x" * 200_000 + b'"}}')
        if n % 700 == 3:
            lines += [b"", b"   ", b""]
        if n % 11 == 0:
            lines[-1] += b"\r"
    path = tmp_path / "big.ndjson"
    path.write_bytes(UTF8_BOM + b"\n".join(lines))
    for block_bytes in (1, 4096, 65_536, 1 << 20):
        items = _blocks_of(path, block_bytes, 4096)
        assert _assert_spans_hold_the_blocks(path, items) > 0
        found = [
            (record.origin, record.raw)
            for item in items
            for record in (decode_block(item) if isinstance(item, Block) else [item])
        ]
        opened = OpenSource(LocalFile(str(path), path, None, max_line_bytes=4096))
        expected = [(record.origin, record.raw) for record in read_source(opened)]
        opened.close()
        assert found == expected
        assert len(expected) == 3006


def test_a_span_is_read_only_from_the_file_the_run_read(tmp_path: Path) -> None:
    """A worker reads a span only from the very file, with the very bytes the run read:
    after the file is rotated (renamed, another in its place), deleted, cut short or
    rewritten, it reads nothing (the run then prepares the block from its own copy).
    A review found a rewrite that kept a block's length, line ends and first and last
    64 bytes (what was checked then): the worker read the new lines into the run's old
    positions, losing one record and, with a later block read from the run's copy,
    repeating another."""
    path = tmp_path / "export.ndjson"
    lines = [orjson.dumps({"type": "identify", "userId": f"u{n}"}) for n in range(9000)]
    content = b"\n".join(lines) + b"\n"
    path.write_bytes(content)
    blocks = [item for item in _blocks_of(path, 2048, 1024) if isinstance(item, Block)]
    assert len(blocks) > 3 and all(block.span is not None for block in blocks)
    lean = [block.lean() for block in blocks]
    assert [fetch(block) for block in lean] == [
        Block(b.source, b.lineno, b.data, b.limit) for b in blocks
    ]

    changed = [n for n, block in enumerate(blocks) if b'"u7777"' in block.data]
    assert len(changed) == 1
    for rewritten in (  # in place, the same length
        content.replace(b'"u7777"}\n', b'"u7777"} '),  # a line end moved
        content.replace(b'"u7777"', b'"x7777"'),  # one byte inside a line
        content.replace(b'"u7777"}\n{', b'"u7777"}\n '),  # a line's first byte
    ):
        path.write_bytes(rewritten)
        assert [fetch(block) is None for block in lean] == [n in changed for n in range(len(lean))]

    path.write_bytes(content[: len(content) // 2])  # cut short: the later blocks are gone
    assert fetch(lean[0]) is not None and fetch(lean[-1]) is None

    path.write_bytes(content)
    path.rename(tmp_path / "export.ndjson.1")
    path.write_bytes(content)  # the same bytes, but another file
    assert all(fetch(block) is None for block in lean)

    path.unlink()
    assert all(fetch(block) is None for block in lean)


def test_a_rewrite_that_keeps_every_edge_and_line_end_is_not_read_by_a_worker(
    tmp_path: Path,
) -> None:
    """The review's case: a re-export written over the file in place, its lines moved up
    by one (the oldest message dropped, one added), every line of one length, sharing
    its first and last 64 bytes (a `_metadata` head, a `writeKey` tail)."""
    head = b'{"_metadata":{"bundled":["Segment.io"],"unbundled":["Mixpanel","Amplitude"]},'
    tail = b',"type":"track","writeKey":"Zq1xW2ecV3rT4yU5iO6pA7sD8fG9hJ0k","version":2}\n'

    def lines(first: int) -> bytes:
        return b"".join(
            head + b'"event":"E","messageId":"m%05d","userId":"u%05d"' % (n, n) + tail
            for n in range(first, first + 1000)
        )

    path = tmp_path / "export.ndjson"
    path.write_bytes(lines(1))
    blocks = [item for item in _blocks_of(path, 4096, 1024) if isinstance(item, Block)]
    assert len(blocks) > 1
    with open(path, "r+b") as f:
        f.write(lines(2))  # same inode, same length
    assert [fetch(block.lean()) for block in blocks] == [None] * len(blocks)


def test_blocks_no_worker_can_read_are_prepared_by_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_pool: WorkerPool
) -> None:
    """Workers that find every span changed (here: pointed one byte off) hand the blocks
    back, and the run prepares them itself: the same requests, report, dead letters and
    summary as one process."""
    lines = [orjson.dumps(message) for message in _sample_messages(600)]
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"\n".join(lines) + b"\n")
    built = recipe_for("classic", "strict")
    one = run_once(export, built, "strict", None)
    lean = Block.lean

    def off_by_one(block: Block) -> Block:
        moved = lean(block)
        assert moved.span is not None  # (the test is void if no span travels)
        return replace(moved, span=replace(moved.span, offset=moved.span.offset + 1))

    monkeypatch.setattr(Block, "lean", off_by_one)
    workers = Workers(count=2, recipe=built, block_bytes=4096, start_after=0, pool=worker_pool)
    two = run_once(export, built, "strict", workers)
    assert sorted(two[0].splitlines()) == sorted(one[0].splitlines())
    assert two[1:4] == one[1:4]
    assert two[3]["read"] == 600


def _sample_messages(count: int) -> list[Message]:
    out: list[Message] = []
    for n in range(count):
        kind = ("identify", "track", "page", "group")[n % 4]
        message: Message = {"type": kind, "messageId": f"m{n}", "userId": f"u{n % 37}"}
        message["timestamp"] = "2024-05-01T12:00:00Z" if n % 9 else "later"
        if kind == "track":
            message["event"] = "Order Completed"
        out.append(message)
    return out


def test_a_worker_wrong_about_a_token_is_overruled() -> None:
    """The run's true set decides: a worker that found no token sent (another worker
    sent it first) or found one sent (from a record this run did not prepare) is wrong.
    Checking adds nothing: a record's tokens join the set when it is planned."""
    tokens = {("a1", "t1")}
    assert not lookups_hold(tokens, ((("a1", "t1"), False),))
    assert not lookups_hold(tokens, ((("a2", "t2"), False), (("a9", "t9"), True)))
    lookups = ((("a1", "t1"), True), (("a2", "t2"), False), (("a2", "t2"), True))
    assert lookups_hold(tokens, lookups)
    assert tokens == {("a1", "t1")}
    assert tokens_sent(lookups) == [("a2", "t2")]


def _tokens_recipe(layout: str) -> Recipe:
    """`classic_with_tokens(layout)`'s recipe."""
    mapping = classic_with_tokens(layout)
    job = UploadJob(mapping_file=orjson.dumps(mapping).decode(), mapping=MappingOptions())
    return job.recipe


def _prepared(built: Recipe, message: Message, sent: set[tuple[str, str]]) -> Any:
    """`message` through the record stage of a process whose set of tokens sent is
    `sent` (a copy): its result."""
    mapper = built.mapper(set(sent))
    stage = RecordStage(
        mapper, built.validator(), built.mode, dedupe=False, log=counting(mapper).tokens.watch()
    )
    raw = orjson.dumps(message)
    return stage.record(InputRecord(Origin("f", 1), raw, orjson.loads(raw), None), None)


TOKEN_KEYS = [(anonymous, token) for anonymous, token in DEVICES if anonymous is not None]
TOKEN_KEYS += [("a1", "android"), ("a2", "android")]  # the "two-tokens" mapping's second


ANDROID_IDENTIFY: Message = {
    "type": "identify",
    "messageId": "m1",
    "timestamp": "2024-05-01T12:00:00Z",
    "userId": "u1",
    "anonymousId": "a1",
    "traits": {},
    "context": {"device": {"token": "tok-1", "type": "android"}},
}


@settings(max_examples=examples(300), deadline=None)
@example(  # the stage found tok-1 sent, the run did not send it: prepared again
    message=ANDROID_IDENTIFY,
    preset="two-tokens",
    stage_set={("a1", "tok-1")},
    run_set={("a1", "android")},
)
@example(  # tok-1 left out, the token after it numbered again
    message=ANDROID_IDENTIFY, preset="two-tokens", stage_set=set(), run_set={("a1", "tok-1")}
)
@given(
    message=messages(),
    preset=st.sampled_from(["classic", "mapping", "token-first", "two-tokens"]),
    stage_set=st.sets(st.sampled_from(TOKEN_KEYS)),
    run_set=st.sets(st.sampled_from(TOKEN_KEYS)),
)
def test_leaving_out_the_tokens_a_run_sent_is_preparing_the_record_again(
    message: Message,
    preset: str,
    stage_set: set[tuple[str, str]],
    run_set: set[tuple[str, str]],
) -> None:
    """A stage whose set of tokens sent differs from the run's prepared a record: when
    the run can mend the result by leaving out token records (`without_sent_tokens`), it
    gets exactly what preparing the record again against its own set gives."""
    built = recipe_for(preset, "strict") if preset in PRESETS else _tokens_recipe(preset)
    there = _prepared(built, message, stage_set)
    here = _prepared(built, message, run_set)
    if there[2] != READY or there[5] is not None or lookups_hold(run_set, there[6]):
        return
    mended = without_sent_tokens(there[4], there[6], run_set)
    if mended is None:
        return
    assert here[2] == READY
    assert mended == (here[4], here[6])


def test_a_small_input_starts_no_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `start_after` bytes every block is prepared in the main process: a run that
    would start a process fails here."""
    export = tmp_path / "small.ndjson"
    export.write_bytes(b'{"type":"identify","userId":"u","timestamp":"2024-05-01"}\n' * 50)
    built = recipe_for("actions", "strict")

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker process was started")

    monkeypatch.setattr("ctsync.run.workers.start_pool", no_process)
    one = run_once(export, built, "strict", None)
    for size in (None, 10**9):  # a stdin (size unknown) or a file bigger than it is
        workers = Workers(count=2, recipe=built, block_bytes=100, start_after=10**5)
        source = Source(str(export), export, size, max_line_bytes=1024)
        two = run_source(source, built, "strict", workers)
        assert one[:4] == two[:4]


def sent_records(requests: bytes) -> list[bytes]:
    """Every record of a dry run's requests, in a fixed order."""
    return sorted(
        orjson.dumps(record)
        for line in requests.splitlines()
        for record in orjson.loads(line)["body"]["d"]
    )


def test_a_file_known_to_be_large_goes_to_the_workers_from_its_first_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_pool: WorkerPool
) -> None:
    """Its size says more than `start_after` bytes follow its first block: no block is
    prepared in the main process (which read and planned while the workers started),
    and the run is the run of one process."""
    export = tmp_path / "large.ndjson"
    lines = (
        orjson.dumps({"type": "identify", "userId": f"u{n}", "timestamp": "2024-05-01"}) + b"\n"
        for n in range(4000)  # about 240 KB: four reads of 64 KiB
    )
    export.write_bytes(b"".join(lines))
    built = recipe_for("actions", "strict")
    one = run_once(export, built, "strict", None)
    here: list[int] = []
    block = RecordStage.block

    def counted(stage: RecordStage, each: Block, resume: Any) -> Any:
        here.append(each.lineno)
        return block(stage, each, resume)

    monkeypatch.setattr(RecordStage, "block", counted)
    size = export.stat().st_size
    # A block (one read of the file) is under `start_after`, the file is not.
    workers = Workers(
        count=2, recipe=built, block_bytes=1000, start_after=size // 2, pool=worker_pool
    )
    two = run_once(export, built, "strict", workers)
    assert here == []
    # The same records go (a request may hold them in another order across profiles),
    # with the same report, dead letters and summary.
    assert sent_records(two[0]) == sent_records(one[0])
    assert one[1:4] == two[1:4]
    # Declared bigger than it is (a Source's size comes from the scan): what is read
    # decides, and a small file stays in the main process.
    workers = replace(workers, start_after=size + 1)
    source = Source(str(export), export, 10**9, max_line_bytes=1024)
    three = run_source(source, built, "strict", workers)
    assert len(here) >= 1
    assert sent_records(three[0]) == sent_records(one[0])
    assert one[1:4] == three[1:4]


def test_recipes_survive_pickling() -> None:
    """What a worker process gets: the preset's name or the mapping's document, never a
    built mapper (whose functions would not pickle)."""
    import pickle

    for preset in PRESETS:
        again = pickle.loads(pickle.dumps(recipe_for(preset, "fix")))
        assert callable(again.mapper(set())) and callable(again.validator())


def envelope_then_line(folder: Path, traits: dict[str, Any]) -> Path:
    """An export of one identify with a device token twice: in an envelope line (read in
    this process) and on the next line (prepared by a worker that has not seen the token,
    when blocks are cut at every line)."""
    message = orjson.dumps(
        {
            "type": "identify",
            "messageId": "m0",
            "timestamp": "2024-05-01T12:00:00Z",
            "userId": "u1",
            "traits": traits,
            "context": {"device": {"token": "tok-1", "type": "android"}},
            "anonymousId": "a1",
        }
    )
    export = folder / "export.ndjson"
    export.write_bytes(b'{"batch":[' + message + b"]}\n" + message + b"\n")
    return export


def test_a_token_prepared_here_and_then_in_a_worker_is_sent_once(tmp_path: Path) -> None:
    """An envelope line is prepared in this process, the same message on the next line
    in a worker: the token goes out once, as with one process (found by Hypothesis)."""
    export = envelope_then_line(tmp_path, {})
    built = recipe_for("classic", "strict")
    one = run_once(export, built, "strict", None)
    workers = Workers(count=2, recipe=built, block_bytes=1, start_after=0, in_flight=1)
    two = run_once(export, built, "strict", workers)
    assert sorted(two[0].splitlines()) == sorted(one[0].splitlines())
    assert two[0].count(b'"tokenData":{"id":"tok-1"') == 1


def test_workers_dying_with_blocks_waiting_stop_the_run_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker dies (as under the OOM killer) while a couple of thousand blocks wait
    for one: the run stops with a WorkerError and no thread prints a traceback. (Python
    3.11's pool thread fails the waiting futures; cancelling them from the run at the same
    time printed `InvalidStateError`. That race is narrow: this test is its guard, it did
    not reproduce it.)"""
    import threading

    export = tmp_path / "export.ndjson"
    line = b'{"type":"identify","userId":"u","timestamp":"2024-05-01T00:00:00Z"}\n'
    export.write_bytes(line * 2000)
    printed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    built = Recipe(mapper=mapper_that_dies_in_a_worker, validator=no_validator)
    workers = Workers(count=2, recipe=built, block_bytes=1, start_after=0, in_flight=2000)
    for _ in range(3):  # a race: give it a few chances
        with pytest.raises(WorkerError):
            run_once(export, built, "strict", workers)
    assert printed == []


@pytest.mark.parametrize("preset", ["classic", "mapping"])
def test_counts_of_a_record_prepared_again_here_are_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str
) -> None:
    """A record whose token a worker looked up wrongly is prepared again in this process:
    the value it drops and the date it leaves as text count once in the summary, as with
    one process. Two copies of one identify (an envelope line, prepared here, then a plain
    line, prepared by a worker that has not seen the token), each dropping `address`
    (`--nested drop`) and leaving a date-time with microseconds as text (classic:
    `createdAt`; the mapping file: `birthday`, its DOB): two of each.

    The worker's counts of its own preparation already hold the record's; counting the
    second preparation too (the run's own mapper, reused) would make three. The two
    copies share their messageId: `--no-dedupe` sends both."""
    fine = "1990-02-01T00:00:00.123456Z"
    traits = {"address": {"city": "X"}, "birthday": fine, "createdAt": fine}
    export = envelope_then_line(tmp_path, traits)
    monkeypatch.setenv("CTSYNC_WORKER_BLOCK_BYTES", "1")
    monkeypatch.setenv("CTSYNC_WORKER_START_AFTER", "0")
    mapping_file = tmp_path / "classic.json"
    mapping_file.write_bytes(orjson.dumps(preset_as_mapping("classic")))
    summaries = {}
    for workers in (1, 2):
        job = UploadJob(
            paths=[str(export)],
            preset=Preset.CLASSIC,
            mapping_file=mapping_file if preset == "mapping" else None,
            mapping=MappingOptions(nested=Nested.DROP),
            run=RunOptions(dedupe=False),
            workers=workers,
        )
        summaries[workers] = upload(job)
    # By hand: classic drops `address`, reads `birthday` as the DOB date (any precision)
    # and keeps `createdAt` as text; the mapping file maps traits.birthday to DOB and
    # takes neither `address` nor `createdAt`.
    dropped, dates = ({"address": 2}, {"createdAt": 2}) if preset == "classic" else ({}, {"DOB": 2})
    for summary in summaries.values():
        assert summary.dropped == dropped
        assert summary.dates_left_as_text == dates
    assert summaries[2].notes == summaries[1].notes


@pytest.mark.parametrize(
    ("cpus", "load", "expected"),
    [
        (2, 0.0, 2),  # a quiet 2-core machine: two workers
        (2, 0.3, 1),  # 1.7 idle: one process (a worker would take a busy core)
        (2, 1.9, 1),
        (2, 6.0, 1),  # overloaded: never fewer than one
        (8, 2.5, 5),
        (16, 0.0, 8),  # at most 8
    ],
)
def test_the_default_worker_count_is_the_idle_cpus(
    monkeypatch: pytest.MonkeyPatch, cpus: int, load: float, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert default_workers(load) == expected
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert default_workers() == expected  # the system's one-minute load average


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_blocks_and_results_go_through_pipes_that_hold_a_block() -> None:
    """A 1 MiB block goes to a worker in one write (the main process's CPU, measured:
    0.97x), so the pool's pipes must have taken the size; the executor's queues are
    private, and a Python that renames them must fail here, not go slow unseen."""
    pool = WorkerPool(1)
    try:
        pipes = [pool._call_queue._writer, pool._result_queue._writer]  # type: ignore[attr-defined]
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        for pipe in pipes:
            assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) >= min(limit, 1 << 20)
    finally:
        pool.shutdown()


def test_workers_collect_garbage_as_the_main_process_does() -> None:
    """ctsync's `__main__` makes the young generation's collections rarer; a spawned
    worker starts with Python's own thresholds unless the pool hands them over."""
    before = gc.get_threshold()
    gc.set_threshold(43_210, 17, 99)
    pool = WorkerPool(1)
    try:
        assert pool.submit(gc.get_threshold).result(timeout=60) == (43_210, 17, 99)
    finally:
        pool.shutdown()
        gc.set_threshold(*before)
