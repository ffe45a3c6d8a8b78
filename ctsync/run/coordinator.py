"""The whole flow of an upload run, in one place:

    feed (read, resume) -> record stage (decode, map, convert, validate, encode: here or
    in worker processes) -> intake (account, plan into batches) -> dispatcher (lanes,
    send) -> accounts (verdicts into the ledger) -> checkpointer (the state file)

Reading and preparing are synchronous and CPU-bound; sending is asynchronous. Both share
one event loop: the intake lets it run every few records, so answers are handled while
the next batch is being built. A bounded window of sealed batches keeps memory flat when
CleverTap is slow (backpressure).

The bookkeeping has one source of truth: every operation read is in exactly one batch
(being filled, waiting in its lane, or on the wire) until its verdict settles it. The
state file is written from those batches, so what it calls settled was settled.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import IO, Any, Protocol

from ctsync.batching import GROUP_AT_MOST, LINKED_AT_MOST, Planner
from ctsync.dedupe import MessageIds
from ctsync.errors import AuthError, DiskFull, OutputError
from ctsync.ledger import DISK_FULL, OUTPUT_FAILED, Ledger, Summary
from ctsync.model import UNKNOWN, Sender
from ctsync.prepare import ValidateMode, Validator
from ctsync.reader import STDIN, Block, InputRecord, Source
from ctsync.records import Mapper
from ctsync.run.accounts import Accounts
from ctsync.run.checkpoint import Checkpointer
from ctsync.run.dispatch import ABORTED, Dispatcher
from ctsync.run.feed import Feed, Item, Stepper
from ctsync.run.intake import Intake
from ctsync.run.options import Control, RunOptions
from ctsync.run.stage import RecordStage, add_counts
from ctsync.run.workers import (
    BLOCK_BYTES,
    Preparer,
    Submitted,
    WorkerError,
    Workers,
    result_of,
)
from ctsync.settings import MAX_DELETE_CONCURRENCY
from ctsync.state import Progress, StateFile
from ctsync.summary import Routine, plural, were

WAIT_STEP = 0.2  # seconds between looks at stop() while a block is being prepared
YIELD_IDLE = 512
"""Records taken between two turns of the event loop while no request is in flight (a
signal is handled within milliseconds); `intake.YIELD_EVERY` while some are."""


class Observer(Protocol):
    """Progress display hooks; the run never imports any UI."""

    def update(self, summary: Summary, consumed: int) -> None: ...


class UploadRun:
    """One upload run over a list of sources (or of `records` already read: `ctsync
    delete`). `await run()` returns the summary.

    `workers` carries the recipe of the record stage (`ctsync.api` always gives one, with
    `count=1` for one process). A run given only a `mapper` maps with it as it is: its
    device tokens count as sent when mapped, not when planned (`ctsync delete` sends none).

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
        self._records = records
        self._mapper = mapper
        self._sender = sender
        self._ledger = ledger
        self._options = options
        self._observer = observer
        self._resumable = state is not None
        self._control = control = Control(ledger)
        # Runs of positions only for the state file (`Recipe.runs`).
        planner = Planner(
            lanes=options.lanes,
            batch_size=options.batch_size,
            runs=state is not None,
            remember_links=options.remember_links,
        )
        if workers is not None:  # records' lines come back only if the ledger writes them
            lanes = len(planner.lanes)  # plain records come back by lane (`wire.gather`)
            stage = replace(
                workers.recipe, lines=ledger.writes_lines, lanes=lanes, runs=planner.runs
            )
            workers = replace(workers, recipe=stage)
        # --workers: blocks go to worker processes when it is above 1 (the `Preparer`).
        self._workers = workers
        self._block_bytes = workers.block_bytes if workers is not None else BLOCK_BYTES
        # The record stage of this process: built from the recipe as in a worker (its own
        # token set: the intake adds a record's tokens to the run's when it plans it);
        # else the run's own mapper. A `records` caller's raw lines are not JSON, so their
        # results carry what the report reads.
        recipe = workers.recipe if workers is not None else None
        if recipe is not None and records is None:
            self._stage = RecordStage.from_recipe(recipe)
        else:
            self._stage = RecordStage(
                mapper,
                validator if options.validate is not ValidateMode.OFF else None,
                options.validate,
                dedupe=message_ids is not None,
                stubs=records is not None,
            )
        self._accounts = accounts = Accounts(ledger, message_ids)
        self._feed = feed = Feed(
            sources, summary=ledger.summary, checkpoint=self._checkpoint, stdin=stdin, state=state
        )
        self._dispatcher = dispatcher = Dispatcher(
            planner=planner,
            sender=sender,
            accounts=accounts,
            control=control,
            options=options,
            checkpoint=self._checkpoint,
            notify=self._notify,
        )
        self._checkpointer = Checkpointer(
            state, feed=feed, dispatcher=dispatcher, accounts=accounts, control=control
        )
        self._intake = Intake(
            accounts=accounts,
            planner=planner,
            dispatcher=dispatcher,
            feed=feed,
            control=control,
            options=options,
            pace=self._pace,
            ids=message_ids,
            tokens=set() if tokens is None else tokens,
            recipe=recipe,
        )
        self._planner = planner
        self._idle_at = YIELD_IDLE  # records taken when the loop turns next with none out

    @property
    def summary(self) -> Summary:
        return self._ledger.summary

    @property
    def stopping(self) -> bool:
        return self._control.stopping

    def _deletion_slot(self) -> bool:
        """Whether fewer deletion batches than CleverTap takes at once are sealed and
        unanswered (at the end of the input: a deletion batch sealed now goes soon)."""
        dispatcher = self._dispatcher
        return len(dispatcher.waiting) + len(dispatcher.deleting) < MAX_DELETE_CONCURRENCY

    def stop(self) -> None:
        """Stop reading; let the requests in flight finish (first Ctrl-C, SIGTERM)."""
        self._control.stopping = True
        self._dispatcher.wake()

    async def run(self) -> Summary:
        started = time.monotonic()
        cpu = _cpu_seconds()
        control, dispatcher = self._control, self._dispatcher
        try:
            await self._read_all()
            planner = self._planner
            while not control.stopping:
                # The lanes' last batches join into full requests once no upload is on
                # the wire (see batching): a round trip or two more, far fewer requests.
                # A deletion goes when the writes before it are answered; the operations
                # that waited for it are planned then, and join in the next turn. The
                # deletions still filling are sealed only while fewer deletion requests
                # than CleverTap takes at once are unanswered: one sealed now would wait
                # anyway, and meanwhile those planned after an answer join it.
                if self._deletion_slot():
                    dispatcher.enqueue(planner.seal_deletions())
                await dispatcher.until(dispatcher.lanes_idle)
                if control.stopping:
                    break
                joined = planner.flush(join=True, deletions=self._deletion_slot())
                if joined:
                    dispatcher.enqueue(joined)
                    continue
                if dispatcher.queued == 0 and not planner.open_batches():
                    break
                # Only deletions are left: wait for one of them to be answered.
                if not dispatcher.start_deletions() and not dispatcher.deleting:
                    control.fail(RuntimeError("deletion batches wait for nothing"))
                    break
                queued = dispatcher.queued
                await dispatcher.until(lambda: dispatcher.queued < queued)  # noqa: B023
            if control.stopping:
                await dispatcher.drain()
            control.check()
        except AuthError:
            await dispatcher.refused()
            raise
        except BaseException:
            await dispatcher.abort()
            raise
        finally:
            summary = self.summary
            summary.elapsed = time.monotonic() - started
            main, workers = _cpu_seconds()
            summary.cpu_main, summary.cpu_workers = main - cpu[0], workers - cpu[1]
            summary.requests = self._sender.requests
            summary.retries = self._sender.retries
            summary.interrupted = summary.interrupted or control.stopping
            self._unsettle()
            self._checkpointer.checkpoint(final=True)
            self._notes()
            self._notify()
        return self.summary

    # -- reading ------------------------------------------------------------------

    async def _read_all(self) -> None:
        """Every input through the record stage and the intake. NDJSON goes as blocks
        of lines, prepared here or by the worker processes; everything else (JSON
        documents, overlong lines, `records`) record by record, here. Results are taken
        in input order, and only a bounded number of blocks is out at once."""
        preparer = Preparer(self._stage, self._workers)
        window = preparer.workers.window if preparer.workers is not None else 1
        pending: deque[tuple[Item, Progress | None, Submitted | None]] = deque()
        out = 0  # blocks in `pending`
        control = self._control
        items = self._items()
        # (records handed to the run never wait: they are in memory)
        may_wait = self._feed.may_wait if self._records is None else _never
        steps = Stepper(items, may_wait, on_pipe=self._feed.on_pipe, quiet=self._quiet)

        async def take_first() -> None:
            nonlocal out
            item, progress, prepared = pending.popleft()
            if prepared is not None:
                out -= 1
            await self._take_item(item, progress, prepared)

        async def meanwhile() -> asyncio.Future[Any] | None:
            """While the next item waits for a writer (a quiet pipe): the items read so
            far are taken as they are ready, in order, so that all they hold can go out
            meanwhile; the next block due back from a worker, to wait for."""
            while pending and not control.stopping:
                first = pending[0][2]
                if isinstance(first, Future) and not first.done():
                    waiting = asyncio.wrap_future(first)
                    waiting.add_done_callback(_retrieved)
                    return waiting
                await take_first()
            return None

        try:
            while not control.stopping:
                step = await steps.next(
                    lambda: control.stopping or control.fatal is not None, meanwhile
                )
                if step is None:
                    break
                item, progress = step
                if type(item) is Block:
                    resume = _block_resume(item, progress)
                    ahead = self._feed.ahead()  # (0 for `records`: the feed reads nothing)
                    pending.append((item, progress, preparer.submit(item, resume, ahead)))
                    out += 1
                else:
                    pending.append((item, progress, None))
                # Take what is ready; wait only when enough blocks are out.
                while pending and not control.stopping:
                    first = pending[0][2]
                    if isinstance(first, Future) and not first.done() and out < window:
                        break
                    await take_first()
                if control.stopping:
                    break
            while pending and not control.stopping:
                await take_first()
        except WorkerError as exc:
            # As after stop(): the requests in flight finish, nothing more is sent, and
            # the run ends with this error (what was not sent is resent next time). A
            # worker that a signal to the whole process group ended is part of that stop.
            if not control.stopping:
                control.fail(exc)
            control.stopping = True
        finally:
            add_counts(self._mapper, self._stage.counts())  # those of records taken one by one
            steps.close()
            # Blocks not yet started are dropped by `close` (the pool's own thread cancels
            # them). Cancelling them here raced with that thread when a worker died: on
            # Python 3.11 it then printed an InvalidStateError traceback.
            preparer.close()

    def _quiet(self) -> None:
        """The input has been quiet a while (a pipe): what is planned goes
        out now in the batches it fills, however few records they hold, rather than
        wait for more input that may be long in coming."""
        if not self._control.stopping:
            self._dispatcher.enqueue(self._planner.flush())

    def _items(self) -> Generator[tuple[Item, Progress | None], None, None]:
        if self._records is not None:
            yield from self._records
        else:
            yield from self._feed.items(self._block_bytes)

    async def _take_item(
        self, item: Item, progress: Progress | None, prepared: Submitted | None
    ) -> None:
        if isinstance(prepared, Future):
            if not prepared.done():
                waiting = asyncio.wrap_future(prepared)
                waiting.add_done_callback(_retrieved)
                while not waiting.done():
                    await asyncio.wait([waiting], timeout=WAIT_STEP)
                    self._control.check()
                    if self._control.stopping:
                        return
            prepared = result_of(prepared)
            if prepared is None:  # its worker could not read its bytes: prepared here
                assert isinstance(item, Block)
                prepared = self._stage.block(item, _block_resume(item, progress))
        if prepared is not None:
            assert isinstance(item, Block)
            results, counts = prepared
            add_counts(self._mapper, counts)
            # A block an earlier run settled part of takes the long way, record by record.
            settled = progress is not None and not progress.resume.untouched(item.lineno + 1, 0)
            await self._intake.take(item.source, progress, results, settled)
        elif type(item) is InputRecord:
            origin = item.origin
            if item.error is not None and origin.line == 0:  # not a record: a file's fault
                self._ledger.unreadable(origin, item.error)
                return
            resume = progress.resume if progress is not None else None
            settled = resume is not None and not resume.untouched(origin.line, origin.part)
            result = self._stage.record(item, resume)
            await self._intake.take(origin.source, progress, [result], settled)
        else:
            assert callable(item)
            item()
            await self._pace()

    async def _pace(self) -> None:
        """Every `YIELD_EVERY` records or so, and between sources: backpressure, a turn
        of the event loop, and the errors of the lanes."""
        dispatcher = self._dispatcher
        window = self._options.window
        if dispatcher.queued >= window:
            await dispatcher.until(lambda: dispatcher.queued < window)
        else:
            idle = self._intake.taken >= self._idle_at
            if dispatcher.tasks or idle:
                # Requests advance only while the reader yields: one step (a write, a
                # read) per yield. Signal handlers run only then, too.
                await asyncio.sleep(0)
            if idle:
                self._idle_at = self._intake.taken + YIELD_IDLE
                self._notify()
        self._control.check()

    # -- the end ------------------------------------------------------------------

    def _checkpoint(self) -> None:
        self._checkpointer.checkpoint()

    def _unsettle(self) -> None:
        """A run with --state stopped by a file it could not write: what it counted
        skipped or invalid after its last checkpoint is read again by the next run;
        counted here as failed, with the records not sent, for the same reason."""
        cause = self._control.fatal or self._ledger.output_error
        if not self._resumable or not isinstance(cause, OutputError):
            return
        code = DISK_FULL if isinstance(cause, DiskFull) else OUTPUT_FAILED
        moved = self._checkpointer.unsettle()
        if moved:
            self.summary.failed[code] += moved

    def _notes(self) -> None:
        if self.summary.interrupted and not self._resumable:
            self._unread_note()
        resumed = self._intake.resumed
        done, resent, unknown = (resumed[k] for k in ("done", "resent", "unknown"))
        # Routine for a resumed run: counted after the notes that need reading.
        self.summary.routine[Routine.DONE_EARLIER] += done
        self.summary.routine[Routine.RESENT] += resent
        if unknown:
            self.summary.notes.append(
                f"{plural(unknown, 'record')} {were(unknown)} on the wire when an earlier run "
                "stopped and may be stored already; they were not sent again (outcome-unknown "
                "in the report)"
            )
        lost = self.summary.failed.get(UNKNOWN, 0) - unknown  # answers this run lost
        if lost > 0:
            self.summary.notes.append(
                f"{plural(lost, 'record')} may or may not be stored: their request went out and "
                "its answer was lost or failed (outcome-unknown in the report); events are not "
                "sent again, so that none is stored twice (--retry-unknown sends them again)"
            )
        aborted = self.summary.failed.get(ABORTED.code, 0)
        if aborted:
            later = (
                "the next run on this state sends again those safe to repeat and reports the "
                "events outcome-unknown"
                if self._resumable
                else "sent again (re-driving --failed), an event CleverTap had is stored twice"
            )
            self.summary.notes.append(
                f"{plural(aborted, 'record')} may or may not be stored: the run stopped before "
                f"CleverTap answered their request (aborted in the report); {later}"
            )
        resumed.clear()
        forgotten = self._planner.forgotten_links
        if forgotten:
            self.summary.notes.append(
                f"{plural(forgotten, 'link')} of a device to a user {were(forgotten)} not "
                f"remembered (past the first {LINKED_AT_MOST:,} profiles linked, or "
                f"{GROUP_AT_MOST:,} in one group: a device shared by that many users): a "
                "later deletion of one of their profiles was not ordered against the other's "
                "writes and events"
            )

    def _unread_note(self) -> None:
        """What a stopped run did not read, for a run without --state: its dead letters
        hold only what it read, and nothing else says where it stopped."""
        current, later = self._feed.unread()
        if current is None and not later:
            return
        parts = []
        line = 0
        if current is not None:
            where = "standard input" if current == STDIN else current
            intake = self._intake
            line = intake.last_line if intake.source == current else 0
            parts.append(
                f"{where} was read through line {line:,}" if line else f"{where} was not read"
            )
        if later:
            more = f"{len(later):,} more inputs" if len(later) > 1 else "1 more input"
            parts.append(f"{more} not opened ({later[0]}{', ...' if len(later) > 1 else ''})")
        hint = "--state resumes where a run stops"
        if current == STDIN and not later:  # --state resumes files, never standard input
            hint = f"send what followed line {line:,} again" if line else "send it again"
        self.summary.notes.append(
            f"the run stopped before the end of its input: {'; '.join(parts)}. What was not "
            f"read is in neither the report nor --failed ({hint})"
        )

    def _notify(self) -> None:
        if self._observer is not None:
            self._observer.update(self.summary, self._feed.consumed)


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its children ended so far
    (the worker processes, once the run has stopped them)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _never() -> bool:
    return False


def _block_resume(block: Block, progress: Progress | None) -> Any:
    """What the stage needs to know of an earlier run's work on `block`'s records."""
    resume = progress.resume if progress is not None else None
    if resume is not None and resume.untouched(block.lineno + 1, 0):
        return None  # the common case: nothing of it was read before
    return resume


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Marks a wrapped worker future's error as seen: `result_of` reports it."""
    if not future.cancelled():
        future.exception()
