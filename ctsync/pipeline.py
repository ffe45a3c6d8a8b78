"""The whole flow of a run, in one place:

    read -> decode -> match triggers -> map -> convert -> validate -> batch -> send -> account

Reading, decoding and mapping are synchronous and CPU-bound; sending is asynchronous.
Both share one event loop: after each sealed batch the reader yields, so responses are
handled while the next batch is being built. A bounded window of batches in flight
keeps memory flat when CleverTap is slow (backpressure).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Protocol

import orjson

from ctsync.batching import Batch, BatchKind, Planner
from ctsync.ledger import ACCEPTED, Ledger, Summary, Tracked, Verdict, output_error
from ctsync.reader import InputRecord, OpenSource, Source, read_source
from ctsync.records import (
    CleverTapRecord,
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
    Upload,
    skip_reason,
)
from ctsync.rules import Fix, Fixed
from ctsync.settings import MAX_UPLOAD_BATCH
from ctsync.state import FileProgress, Resume, Span, StateFile

Validator = Callable[[CleverTapRecord], Invalid | Fixed | None]
"""CleverTap's data rules for one upload record: None when it may be sent; with
`--validate fix`, a `Fixed` record to send instead (see `ctsync.rules.fix_upload`)."""


class ValidateMode(StrEnum):
    STRICT = "strict"  # a record that breaks a rule is invalid and not sent
    FIX = "fix"  # fixable fields (Phone, Gender, Email, ...) left out, the rest sent
    WARN = "warn"  # sent anyway; the breach is counted as a warning
    OFF = "off"


class Sender(Protocol):
    """Where batches go: CleverTap (`CleverTapClient`) or nowhere (`DryRunSender`)."""

    requests: int
    retries: int

    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]: ...

    async def delete(self, key: DeleteKey, values: Sequence[str]) -> list[Verdict]: ...


class Observer(Protocol):
    """Progress display hooks; the pipeline never imports any UI."""

    def update(self, summary: Summary, consumed: int) -> None: ...


class DryRunSender:
    """Builds and encodes every request body as it would be sent, and sends nothing.
    With `output`, writes each request as one NDJSON line `{"method","path","body"}`."""

    def __init__(self, output: IO[bytes] | None = None) -> None:
        self._output = output
        self.requests = 0
        self.retries = 0

    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]:
        self._emit("/1/upload", orjson.dumps({"d": records}))
        return [ACCEPTED] * len(records)

    async def delete(self, key: DeleteKey, values: Sequence[str]) -> list[Verdict]:
        self._emit("/1/delete/profiles.json", orjson.dumps({key: values}))
        return [ACCEPTED] * len(values)

    def _emit(self, path: str, body: bytes) -> None:
        self.requests += 1
        if self._output is not None:
            head = b'{"method":"POST","path":' + orjson.dumps(path) + b',"body":'
            try:
                self._output.write(head + body + b"}\n")
            except OSError as exc:
                raise output_error(self._output, "request output", exc) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    batch_size: int = MAX_UPLOAD_BATCH
    validate: ValidateMode = ValidateMode.STRICT
    window: int = 32  # sealed batches not yet answered, at most (backpressure)
    drain_timeout: float = 30.0  # on interruption, how long in-flight requests may finish


YIELD_EVERY = 32
"""Records read between two turns of the event loop while requests are in flight."""

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
        records: Iterable[InputRecord] | None = None,
        mapper: Mapper,
        sender: Sender,
        ledger: Ledger,
        options: RunOptions = RunOptions(),
        validator: Validator | None = None,
        observer: Observer | None = None,
        stdin: IO[bytes] | None = None,
        state: StateFile | None = None,
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
        self._planner = Planner(batch_size=options.batch_size)
        self._window = asyncio.Semaphore(options.window)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsettled: set[Batch] = set()  # sealed, without an answer yet
        self._fatal: BaseException | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._consumed_before = 0  # bytes of the sources already finished
        self._current: OpenSource | None = None
        self._files: dict[str, FileProgress] = {}  # with --state: files not yet settled

    @property
    def summary(self) -> Summary:
        return self._ledger.summary

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop reading; let the requests in flight finish (first Ctrl-C, SIGTERM)."""
        self._stopping = True
        self._stopped.set()

    async def run(self) -> Summary:
        started = time.monotonic()
        try:
            take = self._take
            records = self._records if self._records is not None else self._read()
            for count, record in enumerate(records, 1):
                ready = take(record)
                if ready:
                    await self._dispatch(ready)
                elif count % YIELD_EVERY == 0 and self._tasks:
                    # Requests advance only while the reader yields: one step (a write,
                    # a read) per yield. Yielding once per batch made a request wait a
                    # batch's worth of reading per step, a second in all (measured).
                    await asyncio.sleep(0)
                if self._stopping:  # after `take`: no record read is left unaccounted
                    break
            if not self._stopping:
                await self._dispatch(self._planner.flush())
                await self._answered()
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
            self._notify()
        return self.summary

    async def _answered(self) -> None:
        """Wait until every request has its answer, or until `stop()`."""
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            while self._tasks and not self._stopping:
                await asyncio.wait([*self._tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
                self._raise_fatal()
        finally:
            stopped.cancel()

    def _read(self) -> Iterator[InputRecord]:
        for source in self._sources:
            resume = self._resume(source)
            if resume is not None and resume.skip_all:
                self.summary.notes.append(f"{source.name}: finished in an earlier run; skipped")
                continue
            try:
                opened = OpenSource(source, self._stdin)
            except OSError as exc:
                why = f"cannot open the file ({exc.strerror or exc})"
                yield InputRecord(
                    Origin(source.name, 0), None, None, Invalid("unreadable", why, Stage.PARSE)
                )
                continue
            self._current = opened
            try:
                yield from self._resumed(source, opened, resume)
            finally:
                self._consumed_before += opened.consumed
                self._current = None
                opened.close()
            if source.name in self._files:
                self._files[source.name].finished_reading = True
                self._checkpoint()

    def _resume(self, source: Source) -> Resume | None:
        if self._state is None:
            return None
        progress, resume = self._state.open_file(source)
        self._files[source.name] = progress
        if resume.note:
            self.summary.notes.append(resume.note)
        return resume

    def _resumed(
        self, source: Source, opened: OpenSource, resume: Resume | None
    ) -> Iterator[InputRecord]:
        records = read_source(opened)
        if resume is None:
            yield from records
            return
        progress = self._files[source.name]
        skipped = resent = 0
        for record in records:
            line = record.origin.line
            if line and not resume.wanted(line):
                skipped += 1
                continue
            if line and resume.was_sent(line):
                resent += 1
            progress.read_through = max(progress.read_through, line)
            yield record
        if skipped:
            self.summary.notes.append(
                f"{source.name}: resumed; {skipped:,} records done in earlier runs were skipped"
            )
        if resent:
            self.summary.notes.append(
                f"{source.name}: {resent:,} records were in flight when the last run stopped and "
                "were sent again; CleverTap may have stored them twice if they were events"
            )

    def _take(self, record: InputRecord) -> list[Batch] | None:
        """Decode result -> mapper -> validator -> planner, for one input record; returns
        the batches that became ready to send. (Synchronous: no coroutine per record.)"""
        ledger = self._ledger
        if record.error is not None and record.origin.line == 0:
            ledger.unreadable(record.origin, record.error)
            return None
        ledger.read()
        message = record.message
        if message is None:
            assert record.error is not None
            ledger.invalid(record.origin, record.raw, None, record.error)
            return None
        result = self._mapper(message)
        if isinstance(result, Skip):
            ledger.skip(result.reason)
            return None
        if isinstance(result, Invalid):
            ledger.invalid(record.origin, record.raw, message, result)
            return None
        if not result:
            ledger.skip(skip_reason(message))
            return None
        if self._validator is not None:
            broken, fixes = self._check(result)
            if broken is not None:
                ledger.invalid(record.origin, record.raw, message, broken)
                return None
            for fix in fixes:
                ledger.fixed(record.origin, message, fix.field, fix.code, fix.message)
        tracked = Tracked(record.origin, record.raw, message, len(result))
        if len(result) == 1:
            return self._planner.add(result[0], tracked)
        ready: list[Batch] = []
        for operation in result:
            ready += self._planner.add(operation, tracked)
        return ready

    def _check(self, operations: list[Upload | Delete]) -> tuple[Invalid | None, Sequence[Fix]]:
        assert self._validator is not None
        fixes: Sequence[Fix] = ()
        for operation in operations:
            if isinstance(operation, Upload):
                broken = self._validator(operation.record)
                if isinstance(broken, Fixed):  # --validate fix: send it without those fields
                    operation.record = broken.record
                    fixes = (*fixes, *broken.fixes)
                elif broken is not None:
                    if self._options.validate is not ValidateMode.WARN:
                        return broken, ()
                    self.summary.warnings[broken.code] += 1
        return None, fixes

    async def _dispatch(self, batches: Iterable[Batch]) -> None:
        for batch in batches:
            self._unsettled.add(batch)
            await self._window.acquire()
            self._raise_fatal()
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Let the sending side run: responses are read while the next batch is built.
        await asyncio.sleep(0)
        self._raise_fatal()
        self._notify()

    async def _send(self, batch: Batch) -> None:
        try:
            for dependency in batch.deps:
                await dependency.done.wait()
            if self._stopping:  # not on the wire yet: it stays for `_drain`
                self._planner.complete(batch)  # wakes its dependents, which stay too
                return
            batch.sent = True
            self._checkpoint()  # a kill from here on leaves this batch "in flight"
            if batch.kind is BatchKind.UPLOAD:
                verdicts = await self._sender.upload(batch.payloads)
            else:
                key: DeleteKey = "identity" if batch.kind is BatchKind.DELETE_IDENTITY else "guid"
                verdicts = await self._sender.delete(key, batch.payloads)
        except Exception as exc:  # AuthError and anything unexpected: stop the run
            self._fatal = self._fatal or exc
            return
        finally:
            self._window.release()
        self._settle(batch, verdicts)
        try:
            self._checkpoint()
        except Exception as exc:  # the state file cannot be written: stop the run
            self._fatal = self._fatal or exc

    def _settle(self, batch: Batch, verdicts: Sequence[Verdict]) -> None:
        self._unsettled.discard(batch)
        for owner, verdict in zip(batch.owners, verdicts, strict=True):
            self._ledger.settle(owner, verdict)
        self._planner.complete(batch)

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._ledger.output_error is not None:
            raise self._ledger.output_error

    async def _drain(self) -> None:
        """After `stop()`: nothing more is sent; what is in flight may finish."""
        self._unsettled.update(self._planner.flush())  # read, never to be sent
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
        self._unsettled.update(self._planner.flush())
        self._give_up()

    def _give_up(self) -> None:
        """Fail every batch without an answer: ABORTED if it went out (CleverTap may
        have it), INTERRUPTED if not. The state file first keeps them all pending, so
        a re-run sends the unsent ones and reports the ones whose outcome is unknown."""
        self._checkpoint()
        self._files.clear()
        for batch in sorted(self._unsettled, key=lambda b: b.seq):
            self._settle(batch, [ABORTED if batch.sent else INTERRUPTED] * len(batch))

    def _checkpoint(self) -> None:
        """Write each open file's progress to the state file (with --state)."""
        if self._state is None or not self._files:
            return
        spans: dict[str, list[Span]] = {name: [] for name in self._files}
        for batch in itertools.chain(self._unsettled, self._planner.open_batches()):
            for name, runs in batch.spans().items():
                if name in spans:
                    spans[name] += [Span(first, last, batch.sent) for first, last in runs]
        for name, progress in list(self._files.items()):
            pending = spans[name]
            done = min(s.first for s in pending) - 1 if pending else progress.read_through
            self._state.save(progress, done, pending)
            if progress.finished_reading and not pending:
                del self._files[name]

    def _notify(self) -> None:
        if self._observer is not None:
            current = self._current.consumed if self._current is not None else 0
            self._observer.update(self.summary, self._consumed_before + current)


def deletion_records(identities: Iterable[tuple[Origin, str]]) -> Iterator[InputRecord]:
    """Input records for `ctsync delete`: one per identity, blank lines left out."""
    for origin, value in identities:
        value = value.strip()
        if value:
            yield InputRecord(origin, value.encode(), {"userId": value}, None)


def deletion_mapper(key: DeleteKey) -> Mapper:
    """Every deletion record becomes one `Delete`, after the identity checks of uploads."""
    from ctsync.presets.actions import identity_of

    def mapper(message: Message) -> MapResult:
        identity = identity_of(message.get("userId"), key)
        if isinstance(identity, Invalid):
            return identity
        return [Delete(key, identity)]

    return mapper
