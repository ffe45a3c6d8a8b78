"""The whole flow of a run, in one place:

    read -> prepare (decode, match triggers, map, convert, validate, encode)
         -> plan (lanes, batches) -> send -> account -> journal

Reading and preparing are synchronous and CPU-bound; sending is asynchronous. Both share
one event loop: the reader yields every few records, so answers are handled while the
next batch is being built. A bounded window of sealed batches keeps memory flat when
CleverTap is slow (backpressure).

The bookkeeping has one source of truth: every operation read is in exactly one batch
(being filled, waiting in its lane, or on the wire) until its verdict settles it. The
state file is written from those batches, so what it calls settled was settled.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Protocol, TypeAlias, runtime_checkable

import orjson

from ctsync.batching import Batch, Lane, Planner, Position
from ctsync.dedupe import (
    DEFAULT_WINDOW_DAYS,
    DUPLICATE_MESSAGE_ID,
    Key,
    MessageIds,
    day_of,
    forgotten,
)
from ctsync.dedupe import message_key as message_key_of
from ctsync.errors import DiskFull, OutputError
from ctsync.ledger import (
    ACCEPTED,
    DISK_FULL,
    OUTPUT_FAILED,
    Ledger,
    Lines,
    Summary,
    Tracked,
    Verdict,
    output_error,
)
from ctsync.model import UNKNOWN, OnWire, Request, delete_body, upload_body
from ctsync.options import identity_of
from ctsync.prepare import (
    Op,
    OpKind,
    Ready,
    Skipped,
    ValidateMode,
    Validator,
    prepare,
)
from ctsync.reader import Block, InputRecord, OpenSource, Source, read_blocks, read_source
from ctsync.records import (
    Delete,
    DeleteKey,
    Invalid,
    Mapper,
    MapResult,
    Message,
    Origin,
    Outcome,
    Skip,
    Stage,
)
from ctsync.settings import MAX_UPLOAD_BATCH, MAX_UPLOAD_CONCURRENCY
from ctsync.state import Progress, Resume, Seen, Span, StateFile
from ctsync.summary import Routine
from ctsync.workers import (
    BROKEN,
    DONE,
    INVALID,
    KINDS,
    READY,
    SKIPPED,
    Preparer,
    Result,
    WorkerError,
    Workers,
    add_counts,
    lookups_hold,
    ops_of,
    result_of,
)

__all__ = ["DryRunSender", "RunOptions", "Sender", "UploadRun", "ValidateMode", "Validator"]


class Sender(Protocol):
    """Where batches go: CleverTap (`CleverTapClient`) or nowhere (`DryRunSender`)."""

    requests: int
    retries: int

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        """One verdict per record of `request`, in order; `on_wire` is called when the
        request may reach CleverTap (see `client.OnWire`)."""


@runtime_checkable
class WaitsForPermits(Protocol):
    """A sender whose requests may wait for a permit before they go out (the client)."""

    def stop_waiting(self) -> None:
        """Requests still waiting for a permit end with CancelledError, unsent."""


class Observer(Protocol):
    """Progress display hooks; the pipeline never imports any UI."""

    def update(self, summary: Summary, consumed: int) -> None: ...


class DryRunSender:
    """Builds every request body as it would be sent, and sends nothing.
    With `output`, writes each request as one NDJSON line `{"method","path","body"}`."""

    def __init__(self, output: Lines | None = None) -> None:
        self._output = output
        self.requests = 0
        self.retries = 0

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        if request.delete is None:
            self._emit(b'"/1/upload"', upload_body(request.bodies))
        else:
            self._emit(b'"/1/delete/profiles.json"', delete_body(request.delete, request.bodies))
        return [ACCEPTED] * len(request.bodies)

    def _emit(self, path: bytes, body: bytes) -> None:
        self.requests += 1
        if self._output is not None:
            try:
                self._output.write(b'{"method":"POST","path":' + path + b',"body":' + body + b"}\n")
            except OSError as exc:
                raise output_error(self._output, "request output", exc) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    batch_size: int = MAX_UPLOAD_BATCH
    validate: ValidateMode = ValidateMode.STRICT
    # Requests in flight at most: one per lane (see batching). The client's limit may
    # allow fewer at a time (--concurrency auto after 429s).
    lanes: int = MAX_UPLOAD_CONCURRENCY
    window: int = 32  # sealed batches not yet answered, at most (backpressure)
    drain_timeout: float = 30.0  # on interruption, how long in-flight requests may finish
    retry_unknown: bool = False  # re-send records whose outcome is unknown (at-least-once)
    # messageId dedupe (see ctsync.dedupe): `api.upload` gives the run its `MessageIds`.
    dedupe: bool = True
    dedupe_window_days: float = DEFAULT_WINDOW_DAYS


Item: TypeAlias = InputRecord | Block | Callable[[], None]
"""What reading yields: a record, a block of lines for the workers, or a step to take
when every item before it is taken (a note, the end of an input)."""
Prepared: TypeAlias = tuple[list[Result], dict[str, Any]]
NO_MESSAGE: Message = {}  # for `Tracked` of a record that has its line
NO_LIST: list[Any] = []  # no warnings, no fixes (never changed)
WAIT_STEP = 0.2  # seconds between looks at stop() while a block is being prepared

YIELD_EVERY = 32
"""Records read between two turns of the event loop while requests are in flight."""
YIELD_IDLE = 512
"""... and while none are, so that a signal is handled within milliseconds."""

ABORTED = Verdict(
    Outcome.FAILED,
    "aborted",
    "the run stopped before CleverTap answered; CleverTap may or may not have this record",
    Stage.TRANSPORT,
)
INTERRUPTED = Verdict(
    Outcome.FAILED,
    "interrupted",
    "not sent: the run was interrupted before this record's batch went out",
    Stage.TRANSPORT,
)
UNKNOWN_EARLIER = Verdict(
    Outcome.FAILED,
    UNKNOWN,
    "on the wire when an earlier run stopped: CleverTap may or may not have stored it, so it "
    "was not sent again (use --retry-unknown to send such records again)",
    Stage.TRANSPORT,
)


class UploadRun:
    """One upload run over a list of sources. `await run()` returns the summary.

    `stop()` (first Ctrl-C or SIGTERM) stops reading, lets the requests in flight finish
    for up to `drain_timeout` seconds, and ends the run with every record accounted for;
    cancelling the task (a second Ctrl-C) ends it at once, just as accounted for.
    """

    def __init__(
        self,
        sources: Sequence[Source] = (),
        *,
        records: Iterable[tuple[InputRecord, Progress | None]] | None = None,
        mapper: Mapper,
        sender: Sender,
        ledger: Ledger,
        options: RunOptions = RunOptions(),
        validator: Validator | None = None,
        observer: Observer | None = None,
        stdin: IO[bytes] | None = None,
        state: StateFile | None = None,
        workers: Workers | None = None,
        tokens: set[tuple[str, str]] | None = None,
        message_ids: MessageIds | None = None,
    ) -> None:
        self._sources = sources
        self._records = records
        self._mapper = mapper
        self._sender = sender
        self._ledger = ledger
        self._options = options
        self._validator = validator if options.validate is not ValidateMode.OFF else None
        self._observer = observer
        self._stdin = stdin
        self._state = state
        self._planner = Planner(lanes=options.lanes, batch_size=options.batch_size)
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued = 0  # sealed batches without their final answer
        self._changed = asyncio.Event()  # a batch settled, a lane stopped, or stop()
        self._fatal: BaseException | None = None
        self._stopping = False
        self._frozen = False  # the state holds what the next run needs: write no more
        self._consumed_before = 0  # bytes of the sources already finished
        self._current: OpenSource | None = None
        # With --state: the inputs this run reads and has not settled, by source name.
        self._inputs: dict[str, Progress] = {}
        self._gap = False  # positions were passed over since the last operation planned
        # Operations that have their verdict while their record still waits for another
        # one: the record's report line is not written yet, so the state keeps them
        # pending (as sent: a run that resumes reports them unknown or re-sends them).
        self._held: dict[Tracked, list[tuple[str, Position, Verdict]]] = {}
        self._resumed: Counter[str] = Counter()
        self._incomplete: set[str] = set()  # inputs whose last line is left for the next run
        self._objects: set[str] = set()  # bucket objects read this run (never appended to)
        # --workers: blocks go to worker processes (see ctsync.workers); records that a
        # worker's token lookups got wrong are prepared again here, against `_tokens`.
        self._workers = workers if workers is not None and workers.count > 1 else None
        # The run's device tokens sent: `mapper` must add to this same set (built with
        # it), so that records prepared here and in workers send each token once.
        self._tokens: set[tuple[str, str]] = set() if tokens is None else tokens
        self._again: tuple[Mapper, Validator | None] | None = None
        # messageId dedupe: the ids sent, and the records in flight that carry one.
        self._ids = message_ids
        self._keyed: dict[Tracked, tuple[int, str | None]] = {}

    @property
    def summary(self) -> Summary:
        return self._ledger.summary

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop reading; let the requests in flight finish (first Ctrl-C, SIGTERM)."""
        self._stopping = True
        self._changed.set()

    async def run(self) -> Summary:
        started = time.monotonic()
        try:
            await self._read_all()
            if not self._stopping:
                # The lanes' last batches join into full requests once nothing is on the
                # wire (see batching): a round trip or two more, far fewer requests.
                await self._until(lambda: self._queued == 0)
            if not self._stopping:
                self._enqueue(self._planner.flush(join=True))
                await self._until(lambda: self._queued == 0)
            if self._stopping:
                await self._drain()
            self._raise_fatal()
        except BaseException:
            await self._abort()
            raise
        finally:
            self.summary.elapsed = time.monotonic() - started
            self.summary.requests = self._sender.requests
            self.summary.retries = self._sender.retries
            self.summary.interrupted = self.summary.interrupted or self._stopping
            self._checkpoint()
            self._notes()
            self._notify()
        return self.summary

    # -- reading ------------------------------------------------------------------

    async def _read_all(self) -> None:
        workers = self._workers
        if workers is not None and self._records is None:
            sizes = [source.size for source in self._sources]
            if None in sizes or sum(s or 0 for s in sizes) > workers.start_after:
                await self._read_parallel(workers)
                return
            # Inputs this small never start a worker: one process, as with --workers 1.
        records: Iterable[tuple[Item, Progress | None]] = (
            self._records if self._records is not None else self._read()
        )
        take = self._take
        window = self._options.window
        for count, (record, progress) in enumerate(records, 1):
            if type(record) is InputRecord:
                take(record, progress)
            else:
                assert callable(record)
                record()
            # `_pace` only when it has something to do: a coroutine per record costs.
            if self._queued >= window or count % YIELD_EVERY == 0:
                await self._pace(count)
            else:
                self._raise_fatal()
            if self._stopping:  # after `take`: no record read is left unaccounted
                break

    async def _read_parallel(self, workers: Workers) -> None:
        """`_read_all` with blocks of lines prepared by worker processes: a bounded
        number of blocks is out at once, and results are taken in input order."""
        preparer = Preparer(workers)
        pending: deque[tuple[Item, Progress | None, Prepared | Future[Prepared] | None]] = deque()
        out = 0  # blocks in `pending`
        items = self._read(workers.block_bytes)
        try:
            for item, progress in items:
                if type(item) is Block:
                    resume = progress.resume if progress is not None else None
                    if resume is not None and resume.untouched(item.lineno + 1, 0):
                        resume = None  # the common case: nothing of it was read before
                    pending.append((item, progress, preparer.submit(item, resume)))
                    out += 1
                else:
                    pending.append((item, progress, None))
                # Take what is ready; wait only when enough blocks are out.
                while pending and not self._stopping:
                    first = pending[0][2]
                    if isinstance(first, Future) and not first.done() and out < workers.window:
                        break
                    item, progress, prepared = pending.popleft()
                    if prepared is not None:
                        out -= 1
                    await self._take_item(item, progress, prepared)
                if self._stopping:
                    break
            while pending and not self._stopping:
                item, progress, prepared = pending.popleft()
                await self._take_item(item, progress, prepared)
        except WorkerError as exc:
            # As after stop(): the requests in flight finish, nothing more is sent, and
            # the run ends with this error (what was not sent is resent next time). A
            # worker that a signal to the whole process group ended is part of that stop.
            if not self._stopping:
                self._fatal = self._fatal or exc
            self._stopping = True
        finally:
            items.close()
            # Blocks not yet started are dropped by `close` (the pool's own thread cancels
            # them). Cancelling them here raced with that thread when a worker died: on
            # Python 3.11 it then printed an InvalidStateError traceback.
            preparer.close()

    async def _take_item(
        self, item: Item, progress: Progress | None, prepared: Prepared | Future[Prepared] | None
    ) -> None:
        if isinstance(prepared, Future):
            if not prepared.done():
                waiting = asyncio.wrap_future(prepared)
                waiting.add_done_callback(_retrieved)
                while not waiting.done():
                    await asyncio.wait([waiting], timeout=WAIT_STEP)
                    self._raise_fatal()
                    if self._stopping:
                        return
            prepared = result_of(prepared)
        if prepared is not None:
            assert isinstance(item, Block)
            await self._take_block(item, progress, prepared)
            return
        if type(item) is InputRecord:
            self._take(item, progress)
        else:
            assert callable(item)
            item()
        await self._pace(1)

    async def _take_block(
        self, block: Block, progress: Progress | None, prepared: Prepared
    ) -> None:
        """A block's results, in order. The common records (sent or skipped, nothing
        for the report, no token the run's set disagrees on, nothing an earlier run
        settled) take the short way here: this loop runs in the main process for every
        record the workers prepare, and its cost bounds what more workers can give."""
        results, counts = prepared
        add_counts(self._mapper, counts)
        source = block.source
        take = self._take_result
        # A block an earlier run settled part of takes the long way, record by record.
        settled = progress is not None and not progress.resume.untouched(block.lineno + 1, 0)
        summary = self.summary
        skipped = summary.skipped
        add = self._planner.add_encoded
        enqueue = self._enqueue
        window = self._options.window
        kinds = KINDS
        ids = self._ids
        for count, result in enumerate(results, 1):
            line, part, code, raw, a, b, lookups, key = result
            if settled or lookups or b is not None:
                take(source, result, progress)
            elif key is not None and ids is not None and ids.seen(key[0]):
                summary.read += 1
                skipped[DUPLICATE_MESSAGE_ID] += 1
                if progress is not None:
                    progress.position = (line, part)
            elif code == READY:
                summary.read += 1
                if progress is not None:
                    progress.position = (line, part)
                tracked = Tracked(Origin(source, line, part), raw, NO_MESSAGE, len(a))
                if key is not None and ids is not None:
                    self._remember(key, tracked, source)
                for kind, profile, body, safe, token, index in a:
                    sealed = add(
                        kinds[kind], profile, body, safe, token, tracked, source,
                        (line, part, index), self._gap,
                    )  # fmt: skip
                    self._gap = False
                    if sealed:
                        enqueue(sealed)
            elif code == SKIPPED:
                summary.read += 1
                skipped[a] += 1
                if progress is not None:
                    progress.position = (line, part)
            else:
                take(source, result, progress)
            # `_pace` only when it has something to do, as in `_read_all`.
            if self._queued >= window or count % YIELD_EVERY == 0:
                await self._pace(count)
            else:
                self._raise_fatal()
            if self._stopping:
                return

    async def _pace(self, count: int) -> None:
        """After each record: backpressure, a turn of the event loop now and then, and
        the errors of the lanes."""
        if self._queued >= self._options.window:
            await self._until(lambda: self._queued < self._options.window)
        elif count % YIELD_EVERY == 0 and (self._tasks or count % YIELD_IDLE == 0):
            # Requests advance only while the reader yields: one step (a write, a read)
            # per yield. Signal handlers run only then, too.
            await asyncio.sleep(0)
            if count % YIELD_IDLE == 0:
                self._notify()
        self._raise_fatal()

    def _read(self, block_bytes: int = 0) -> Generator[tuple[Item, Progress | None], None, None]:
        """The records of every source in order, with steps between sources. With
        `block_bytes`, NDJSON comes as blocks of lines (for the workers)."""
        seen: set[str] = set()
        for source in self._sources:
            progress = self._state.open_input(source) if self._state is not None else None
            if progress is not None:
                if progress.resume.note:
                    yield partial(self.summary.notes.append, progress.resume.note), None
                if progress.key in seen:  # the same file named twice: read it once
                    continue
                seen.add(progress.key)
                if progress.resume.skip_all:
                    # (a cron over a bucket prefix meets every earlier object again: counted
                    # in one line, not named)
                    yield self._finished_earlier, None
                    continue
                yield partial(self._inputs.__setitem__, source.name, progress), None
            try:
                opened = OpenSource(source, self._stdin)
            except OSError as exc:
                why = f"cannot open the file ({exc.strerror or exc})"
                yield (
                    InputRecord(
                        Origin(source.name, 0), None, None, Invalid("unreadable", why, Stage.PARSE)
                    ),
                    None,
                )
                continue
            self._current = opened
            if not source.grows:
                self._objects.add(source.name)
            yield self._new_source, None
            try:
                records = read_blocks(opened, block_bytes) if block_bytes else read_source(opened)
                for record in records:
                    yield record, progress
            finally:
                self._consumed_before += opened.consumed
                self._current = None
                opened.close()
            if progress is not None:
                yield partial(self._finished, source.name, progress), None

    def _finished_earlier(self) -> None:
        self.summary.routine[Routine.FINISHED_EARLIER] += 1

    def _new_source(self) -> None:
        self._gap = True  # a new source: runs of positions start afresh

    def _finished(self, name: str, progress: Progress) -> None:
        if name not in self._incomplete:
            progress.finished_reading = True
            self._checkpoint()

    def _left_for_next_run(self, origin: Origin) -> None:
        """A last line without its newline that does not parse: its writer may not be
        done. It is left for the next run (with --state)."""
        self._incomplete.add(origin.source)
        self.summary.notes.append(
            f"{origin.source}:{origin.line}: the last line is incomplete "
            "(no final newline, not valid JSON); left for the next run"
        )

    def _resume_at(self, line: int, part: int, progress: Progress) -> tuple[bool, Resume | None]:
        """(whether an earlier run finished this record, its resume if it left some of it)"""
        where = (line, part)
        resume: Resume | None = progress.resume
        assert resume is not None
        if resume.untouched(line, part):
            resume = None
        elif not resume.touches(line, part):
            progress.position = max(progress.position, where)
            self._resumed["done"] += 1
            self._gap = True
            return True, None
        progress.position = max(progress.position, where)
        return False, resume

    def _take(self, record: InputRecord, progress: Progress | None) -> None:
        """One input record through the pure stage and into batches (synchronous)."""
        ledger = self._ledger
        origin = record.origin
        if record.error is not None and origin.line == 0:
            ledger.unreadable(origin, record.error)
            return
        resume = None
        if progress is not None:
            if (
                record.partial
                and origin.source not in self._objects  # an object is never appended to
                and record.message is None
                and record.error is not None
                and record.error.code == "malformed-json"
            ):
                self._left_for_next_run(origin)
                return
            done, resume = self._resume_at(origin.line, origin.part, progress)
            if done:
                return
        message = record.message
        if message is None:
            assert record.error is not None
            if self._done_before(resume):
                return
            ledger.read()
            ledger.invalid(origin, record.raw, None, record.error)
            return
        key = None
        if self._ids is not None:
            key = message_key_of(message)
            if key is not None and resume is None and self._ids.seen(key[0]):
                ledger.read()
                ledger.skip(DUPLICATE_MESSAGE_ID)
                return
        prepared = prepare(message, self._mapper, self._validator, self._options.validate)
        self._account(origin, record.raw, message, prepared, resume, key)

    def _account(
        self,
        origin: Origin,
        raw: bytes | None,
        message: Message,
        prepared: Ready | Skipped | Invalid,
        resume: Resume | None,
        key: Key | None = None,
    ) -> None:
        if not isinstance(prepared, Ready) and self._done_before(resume):
            return
        ledger = self._ledger
        ledger.read()
        if isinstance(prepared, Skipped):
            ledger.skip(prepared.reason)
            return
        if isinstance(prepared, Invalid):
            ledger.invalid(origin, raw, message, prepared)
            return
        self._plan(origin, raw, message, prepared, resume, key)

    def _take_result(self, source: str, result: Result, progress: Progress | None) -> None:
        """One record a worker prepared: accounted and planned as `_take` would."""
        line, part, code, raw, a, b, lookups, key = result
        resume = None
        if progress is not None:
            if (
                code == BROKEN
                and b
                and a.code == "malformed-json"
                and source not in self._objects  # an object is never appended to
            ):
                self._left_for_next_run(Origin(source, line, part))
                return
            done, resume = self._resume_at(line, part, progress)
            if done:
                return
        ledger = self._ledger
        if key is not None and resume is None and self._ids is not None and self._ids.seen(key[0]):
            ledger.read()
            ledger.skip(DUPLICATE_MESSAGE_ID)
            return
        if lookups and not lookups_hold(self._tokens, lookups):
            # The worker's tokens differ from the run's: prepare it here, against them.
            assert raw is not None
            message = orjson.loads(raw)
            mapper, validator = self._prepare_again()
            prepared = prepare(message, mapper, validator, self._options.validate)
            self._account(Origin(source, line, part), raw, message, prepared, resume, key)
        elif code != READY and self._done_before(resume):
            return
        elif code == SKIPPED:
            ledger.read()
            ledger.skip(a)
        elif code == READY:
            ledger.read()
            warnings, fixes, stub = b if b is not None else (NO_LIST, NO_LIST, NO_MESSAGE)
            ready = Ready(ops_of(a), warnings, fixes)
            self._plan(Origin(source, line, part), raw, stub, ready, resume, key)
        elif code == INVALID:
            ledger.read()
            ledger.invalid(Origin(source, line, part), raw, b, a)
        elif code == BROKEN:
            ledger.read()
            ledger.invalid(Origin(source, line, part), raw, None, a)
        else:
            assert code != DONE, "a worker passed over a record this run must read"
            raise AssertionError(f"unknown result code {code}")

    def _done_before(self, resume: Resume | None) -> bool:
        """Whether a record with nothing to send (skipped, invalid) was read again only
        because it lies among the positions of a batch an earlier run left pending: that
        run counted and reported it, so this one must not again."""
        if resume is None:
            return False
        self._resumed["done"] += 1
        return True

    def _prepare_again(self) -> tuple[Mapper, Validator | None]:
        # Not the run's own mapper: the worker's block counts (dropped values, dates left
        # as text) already hold this record's, and they do not depend on the token set, so
        # counting its second preparation too would count it twice. This mapper's counts
        # are never read; it shares the run's token set only.
        if self._again is None:
            assert self._workers is not None
            recipe = self._workers.recipe
            validator = recipe.validator() if recipe.mode is not ValidateMode.OFF else None
            self._again = (recipe.mapper(self._tokens), validator)
        return self._again

    def _plan(
        self,
        origin: Origin,
        raw: bytes | None,
        message: Message,
        ready: Ready,
        resume: Resume | None,
        dedupe_key: Key | None = None,
    ) -> None:
        """`message` may be just what the report reads of it when `raw` is given."""
        if resume is None:  # else the earlier run that read it counted and reported these
            for code in ready.warnings:
                self.summary.warnings[code] += 1
            for fix in ready.fixes:
                self._ledger.fixed(origin, message, fix.field, fix.code, fix.message)
        source = origin.source
        if resume is None:  # the common case: every operation is new
            ops = ready.ops
            tracked = Tracked(origin, raw, message, len(ops))
            if dedupe_key is not None:
                self._remember(dedupe_key, tracked, source)
            add = self._planner.add_encoded
            line, part = origin.line, origin.part
            for kind, key, body, safe, token, number in ops:
                sealed = add(
                    kind, key, body, safe, token, tracked, source, (line, part, number), self._gap
                )
                if sealed:
                    self._enqueue(sealed)
                self._gap = False
            return
        # A record an earlier run left pending: only some operations are still to do.
        planned: list[tuple[Op, bool]] = []  # (operation, sent before: may be stored)
        known: list[tuple[Position, Verdict]] = []  # verdicts without a report line yet
        for op in ready.ops:
            position = (origin.line, origin.part, op.number)
            seen = resume.seen(position)
            if seen is Seen.DONE:
                continue
            if seen is Seen.SETTLED:
                span = resume.span(position)
                assert span is not None and span.verdict is not None
                outcome, code, text, stage = span.verdict
                known.append((position, Verdict(Outcome(outcome), code, text, Stage(stage))))
            elif seen is Seen.UNKNOWN and not (op.safe or self._options.retry_unknown):
                self._resumed["unknown"] += 1
                known.append((position, UNKNOWN_EARLIER))
            else:
                planned.append((op, seen is Seen.UNKNOWN))
        tracked = Tracked(origin, raw, message, len(planned) + len(known))
        if dedupe_key is not None:  # an earlier run planned it: it is no copy of itself
            self._remember(dedupe_key, tracked, source)
        for position, verdict in known:
            self._ledger.settle(tracked, verdict)
            if tracked.remaining:
                self._held.setdefault(tracked, []).append((source, position, verdict))
        if not tracked.remaining:
            self._settled(tracked)
        previous = -1
        for op, resent in planned:
            position = (origin.line, origin.part, op.number)
            # A settled position just before this one: no run of positions may cross it.
            gap = self._gap or op.number != previous + 1
            self._resumed["resent"] += resent
            self._enqueue(self._planner.add(op, tracked, source, position, gap))
            self._gap = False
            previous = op.number
        self._gap = previous != len(ready.ops) - 1  # settled positions end the record

    def _remember(self, key: Key, tracked: Tracked, source: str) -> None:
        """A record with a messageId is planned: its copies are duplicates from now on.
        With --state its id is written with its input's progress."""
        if self._ids is None:  # a recipe that dedupes, in a run that does not
            return
        progress = self._inputs.get(source)
        group = progress.key if progress is not None else None
        self._ids.remember(key[0], day_of(key[1]), group)
        self._keyed[tracked] = (key[0], group)

    def _settled(self, tracked: Tracked) -> None:
        """A record has its final verdict: refused or failed for good, its messageId is
        forgotten (a later copy, or a re-drive of --failed, is sent)."""
        entry = self._keyed.pop(tracked, None)
        if entry is not None and self._ids is not None:
            verdict = tracked.verdict
            if forgotten(verdict.outcome.value, verdict.code):
                self._ids.forget(*entry)

    # -- sending ------------------------------------------------------------------

    def _enqueue(self, batches: list[Batch]) -> None:
        """Sealed batches join their lanes' queues; an idle lane starts sending."""
        lanes = self._planner.lanes
        for batch in batches:
            lane = lanes[batch.lane]
            lane.queue.append(batch)
            self._queued += 1
            if not lane.busy and not self._stopping:
                lane.busy = True
                task = asyncio.create_task(self._drive(lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _drive(self, lane: Lane) -> None:
        """Send a lane's batches one at a time, in order: the next only after the final
        answer to the one before, so a retried request never lands after a later one."""
        try:
            while lane.queue and not self._stopping and self._fatal is None:
                batch = lane.queue[0]
                verdicts = await self._send(batch)
                lane.queue.popleft()
                self._settle(batch, verdicts)
                self._checkpoint()
                self._notify()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # AuthError, a state file that cannot be written, a bug
            self._fatal = self._fatal or exc  # the reader raises it: never a silent hang
        finally:
            lane.busy = False
            self._changed.set()

    async def _send(self, batch: Batch) -> list[Verdict]:
        def on_wire() -> None:
            if not batch.sent:
                batch.sent = True
                self._checkpoint()  # a kill from here on leaves this batch "sent"

        delete: DeleteKey | None = None
        if batch.kind is not OpKind.UPLOAD:
            delete = "identity" if batch.kind is OpKind.DELETE_IDENTITY else "guid"
        # A deletion's operations are all safe (see `prepare.encode`).
        resend = [True] * len(batch) if self._options.retry_unknown else batch.safe
        request = Request(delete, batch.bodies, batch.keys, resend)
        return await self._sender.send(request, on_wire)

    def _settle(self, batch: Batch, verdicts: Sequence[Verdict]) -> None:
        self._queued -= 1
        settle = self._ledger.settle
        held = self._held
        keyed = self._keyed
        for owner, verdict, (source, position) in zip(
            batch.owners, verdicts, batch.positions, strict=True
        ):
            settle(owner, verdict)
            if owner.remaining:  # another operation of this record is still out
                held.setdefault(owner, []).append((source, position, verdict))
            elif held:
                held.pop(owner, None)
            if keyed and not owner.remaining:
                self._settled(owner)
        self._changed.set()

    async def _until(self, done: Callable[[], bool]) -> None:
        """Wait until `done()` holds, `stop()` is called, or a lane fails."""
        self._notify()
        while not done() and not self._stopping and self._fatal is None:
            self._changed.clear()
            await self._changed.wait()
        self._raise_fatal()

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._ledger.output_error is not None:
            raise self._ledger.output_error

    # -- stopping -----------------------------------------------------------------

    async def _drain(self) -> None:
        """After `stop()`: nothing more is sent; what is in flight may finish."""
        if isinstance(self._sender, WaitsForPermits):
            # Lanes waiting for a permit (the client's limit may be below the lanes, as
            # with --concurrency auto after 429s) have nothing on the wire: they would
            # send new requests after the stop. Their batches stay unsent instead.
            self._sender.stop_waiting()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self._options.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        self._give_up()
        self._raise_fatal()

    async def _abort(self) -> None:
        """Stop sending; every record without an answer fails, so the counts still add up."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._give_up()

    def _live(self) -> list[Batch]:
        """Every batch holding operations without a final verdict."""
        lanes = self._planner.lanes
        return [b for lane in lanes for b in lane.queue] + self._planner.open_batches()

    def _give_up(self) -> None:
        """Fail every batch without an answer: ABORTED if it went out (CleverTap may
        have it), INTERRUPTED if not. The state file first keeps them all pending, so
        a re-run sends the unsent ones and reports the ones whose outcome is unknown."""
        if self._frozen:
            return
        try:
            self._checkpoint()
        except OutputError as exc:  # the state file cannot be written: still count them all
            self._fatal = self._fatal or exc
        self._frozen = True
        unsent = self._unsent()
        live = sorted(self._live(), key=lambda b: b.seq)
        for lane in self._planner.lanes:
            lane.queue.clear()
            lane.open.clear()
        for batch in live:
            self._queued -= batch.sealed
            for owner in batch.owners:
                self._ledger.settle(owner, ABORTED if batch.sent else unsent)

    def _unsent(self) -> Verdict:
        """Why the records never sent were not: an output that could not be written (a
        full disk), or an interruption."""
        cause = self._fatal or self._ledger.output_error
        if not isinstance(cause, OutputError):
            return INTERRUPTED
        code = DISK_FULL if isinstance(cause, DiskFull) else OUTPUT_FAILED
        why = "a disk is full" if code == DISK_FULL else "an output could not be written"
        return Verdict(
            Outcome.FAILED, code, f"not sent: the run stopped because {why}", Stage.TRANSPORT
        )

    # -- the state file -----------------------------------------------------------

    def _checkpoint(self) -> None:
        """Write each input's progress to the state file (with --state), and with it the
        length of each output file: what the state calls settled is in the outputs, and
        what they hold beyond that a resumed run takes out and writes again."""
        if self._state is None or self._frozen or not (self._inputs or self._ledger.files):
            return
        self._ledger.flush()  # what the state calls settled is in the report first
        if self._ledger.output_error is not None:
            # Some lines are missing from an output: the state must not call their records
            # settled. It stays at the last checkpoint, and the next run does them again.
            raise self._ledger.output_error
        spans: dict[str, list[Span]] = {name: [] for name in self._inputs}
        for batch in self._live():
            for name, runs in batch.runs.items():
                if name in spans:
                    spans[name] += [Span(first, last, batch.sent) for first, last in runs]
        for positions in self._held.values():
            for name, position, v in positions:
                if name in spans:
                    verdict = (v.outcome.value, v.code, v.message, v.stage.value)
                    spans[name].append(Span(position, position, True, verdict))
        self._state.checkpoint(
            [(progress, spans[name]) for name, progress in self._inputs.items()],
            self._ledger.lengths(),
        )
        for name, progress in list(self._inputs.items()):
            if progress.finished_reading and not spans[name]:
                del self._inputs[name]

    def _notes(self) -> None:
        done, resent, unknown = (self._resumed[k] for k in ("done", "resent", "unknown"))
        # Routine for a resumed run: counted after the notes that need reading.
        self.summary.routine[Routine.DONE_EARLIER] += done
        self.summary.routine[Routine.RESENT] += resent
        if unknown:
            self.summary.notes.append(
                f"{unknown:,} records were on the wire when an earlier run stopped and may be "
                "stored already; they were not sent again (outcome-unknown in the report)"
            )
        self._resumed.clear()

    def _notify(self) -> None:
        if self._observer is not None:
            current = self._current.consumed if self._current is not None else 0
            self._observer.update(self.summary, self._consumed_before + current)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Marks a wrapped worker future's error as seen: `result_of` reports it."""
    if not future.cancelled():
        future.exception()


def deletion_records(
    identities: Iterable[tuple[Origin, str]],
) -> Iterator[tuple[InputRecord, Progress | None]]:
    """Input records for `ctsync delete`: one per identity, blank lines left out."""
    for origin, value in identities:
        value = value.strip()
        if value:
            yield InputRecord(origin, value.encode(), {"userId": value}, None), None


DUPLICATE_IDENTITY = Skip("duplicate-identity")


def deletion_mapper(key: DeleteKey) -> Mapper:
    """Every deletion record becomes one `Delete`, after the identity checks of uploads;
    an identity (or CleverTap ID) already deleted by this input is skipped as
    `duplicate-identity`, so each profile is deleted and counted once."""
    # One deletion input is a list a person wrote (a GDPR request, an export of ids): the
    # set of its distinct values is the size of what `ctsync delete` is asked to do.
    seen: set[str] = set()

    def mapper(message: Message) -> MapResult:
        identity = identity_of(message.get("userId"), key)
        if isinstance(identity, Invalid):
            return identity
        if identity in seen:
            return DUPLICATE_IDENTITY
        seen.add(identity)
        return [Delete(key, identity)]

    return mapper
