"""ctsync as a library: the same runs the command line makes, callable from Python.

    from ctsync.api import UploadJob, upload
    summary = upload(UploadJob(paths=["events.ndjson.gz"], client=settings))

`client=None` is a dry run: everything but sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Protocol, runtime_checkable

import httpx

from ctsync import mapping
from ctsync.client import CleverTapClient
from ctsync.errors import CtsyncError, UsageError
from ctsync.ledger import Ledger, Summary, Verdict, output_error
from ctsync.pipeline import (
    DryRunSender,
    Observer,
    RunOptions,
    Sender,
    UploadRun,
    Validator,
    deletion_mapper,
    deletion_records,
)
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import STDIN, Source, collect_sources
from ctsync.records import CleverTapRecord, DeleteKey, Invalid, Mapper, Origin
from ctsync.redact import redact, redact_exception
from ctsync.rules import check_upload
from ctsync.settings import ClientSettings
from ctsync.state import FileProgress, Resume, StateFile


@runtime_checkable
class StopObserver(Protocol):
    """An observer that also wants to know what is sent and when a run is stopping
    (the CLI's progress display and its stop notice)."""

    def sending(self, counter: SendCounter) -> None: ...

    def stopping(self, signal_name: str, counter: SendCounter, deadline: float) -> None:
        """The first Ctrl-C or SIGTERM: the run waits for `counter.in_flight` requests
        until `deadline` (time.monotonic()); a second signal stops it at once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outputs:
    """Files a run writes: the per-record report, dead letters, dry-run requests."""

    report: Path | None = None
    failed: Path | None = None
    requests: Path | None = None  # --output, dry run only


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadJob:
    """Everything `ctsync upload` does, as data."""

    paths: Sequence[str] = ()
    client: ClientSettings | None = None  # None: dry run
    preset: Preset = Preset.ACTIONS
    mapping_file: str | Path | None = None  # replaces the preset
    mapping: MappingOptions = field(default_factory=MappingOptions)
    run: RunOptions = field(default_factory=RunOptions)
    outputs: Outputs = field(default_factory=Outputs)
    state: Path | None = None  # resumable runs


def build_mapper(job: UploadJob) -> Mapper:
    """The job's mapper: its mapping file if it has one, else its preset. A broken
    mapping file is a UsageError, raised before anything is read."""
    if job.mapping_file is None:
        return build_preset(job.preset, job.mapping)
    try:
        return mapping.build_mapper(mapping.load_mapping(job.mapping_file), job.mapping)
    except mapping.MappingError as exc:
        raise UsageError(str(exc)) from None


def rules_validator(max_event_properties: int) -> Validator:
    """CleverTap's data rules as the pipeline's validator: the first code, every reason."""

    def validate(record: CleverTapRecord) -> Invalid | None:
        found = check_upload(record, max_event_properties=max_event_properties)
        if not found:
            return None
        return Invalid(found[0].code, "; ".join(v.message for v in found))

    return validate


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteJob:
    """Everything `ctsync delete` does: `identities` are (origin, value) pairs."""

    identities: Sequence[tuple[Origin, str]]
    key: DeleteKey = "identity"
    client: ClientSettings | None = None
    outputs: Outputs = field(default_factory=Outputs)


def upload(
    job: UploadJob,
    *,
    mapper: Mapper | None = None,
    validator: Validator | None = None,
    observer: Observer | None = None,
    stdin: IO[bytes] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
    sources: Sequence[Source] | None = None,
) -> Summary:
    """Run an upload to the end and return its summary. Raises CtsyncError subclasses for
    what stops a run (bad paths, a broken mapping file, refused credentials, a locked
    state file). With `handle_signals`, Ctrl-C and SIGTERM stop the run gracefully."""
    mapper = mapper or build_mapper(job)
    validator = validator or rules_validator(job.mapping.max_event_properties)
    if sources is None:  # the caller may have collected them already (the CLI does)
        sources = collect_sources(job.paths)
    ledger: Ledger | None = None
    with _summary_on_error(lambda: ledger), contextlib.ExitStack() as stack:
        state = None
        if job.state is not None:
            if job.client is None:
                raise UsageError("--state records what was sent, and a dry run sends nothing")
            if any(source.path is None for source in sources):
                raise UsageError("--state resumes files; it cannot resume stdin (give file paths)")
            state = _CheckedStateFile(job.state)
            stack.callback(state.close)
        if stdin is None and handle_signals and any(s.name == STDIN for s in sources):
            stdin = _terminal_stdin()
        report, failed, requests = stack.enter_context(_files(job.outputs))
        ledger = Ledger(
            report=report,
            dead_letters=failed,
            resumable=state is not None,
            dry_run=job.client is None,
        )

        async def go(sender: Sender) -> Summary:
            run = UploadRun(
                sources,
                mapper=mapper,
                sender=sender,
                ledger=ledger,
                options=job.run,
                validator=validator,
                observer=observer,
                stdin=stdin,
                state=state,
            )
            terminal = stdin if isinstance(stdin, _TerminalStdin) else None
            summary = await _until_signalled(
                run, handle_signals, observer, sender, job.run, terminal
            )
            summary.dropped.update(mapping.dropped_values(mapper))
            return summary

        return asyncio.run(_with_sender(job.client, requests, transport, go))


def delete(
    job: DeleteJob,
    *,
    observer: Observer | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Delete profiles by identity (or CleverTap ID) and return the summary."""
    ledger: Ledger | None = None
    with _summary_on_error(lambda: ledger), _files(job.outputs) as (report, failed, requests):
        ledger = Ledger(report=report, dead_letters=failed, dry_run=job.client is None)

        async def go(sender: Sender) -> Summary:
            run = UploadRun(
                records=deletion_records(job.identities),
                mapper=deletion_mapper(job.key),
                sender=sender,
                ledger=ledger,
                observer=observer,
            )
            return await _until_signalled(run, handle_signals, observer, sender, RunOptions())

        return asyncio.run(_with_sender(job.client, requests, transport, go))


async def _until_signalled(
    run: UploadRun,
    handle_signals: bool,
    observer: Observer | None,
    sender: Sender,
    options: RunOptions,
    terminal: _TerminalStdin | None = None,
) -> Summary:
    """Run to the end; with `handle_signals` the first Ctrl-C or SIGTERM stops the run
    gracefully (the observer is told what it waits for, and until when) and a second
    one stops it at once. Either way the summary adds up."""
    counter = sender if isinstance(sender, SendCounter) else None
    if counter is not None and isinstance(observer, StopObserver):
        observer.sending(counter)
    if not handle_signals:
        return await run.run()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        if run.stopping:
            task.cancel()
            return
        run.stop()
        if counter is not None and isinstance(observer, StopObserver):
            deadline = time.monotonic() + options.drain_timeout
            observer.stopping(signum.name, counter, deadline)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            pass
    if terminal is not None and installed:
        terminal.stop_requested = lambda: run.stopping
        terminal.on_signal = on_signal
    try:
        summary = await run.run()
    except asyncio.CancelledError:
        if not received:
            raise
        summary = run.summary
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    if received:
        summary.interrupted = True
        summary.signal = received[0].name
    return summary


class SendCounter:
    """A sender that counts what it puts on the wire: the records sent (or, in a dry
    run, encoded) and the requests still waiting for an answer."""

    def __init__(self, inner: Sender) -> None:
        self._inner = inner
        self.records = 0
        # Requests without their final answer (on the wire, waiting for a connection or
        # between retries): what a stopping run waits for.
        self.in_flight = 0

    @property
    def requests(self) -> int:
        return self._inner.requests

    @requests.setter
    def requests(self, value: int) -> None:
        self._inner.requests = value

    @property
    def retries(self) -> int:
        return self._inner.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self._inner.retries = value

    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]:
        self.records += len(records)
        self.in_flight += 1
        try:
            return await self._inner.upload(records)
        finally:
            self.in_flight -= 1

    async def delete(self, key: DeleteKey, values: Sequence[str]) -> list[Verdict]:
        self.records += len(values)
        self.in_flight += 1
        try:
            return await self._inner.delete(key, values)
        finally:
            self.in_flight -= 1


async def _with_sender(
    client: ClientSettings | None,
    requests: IO[bytes] | None,
    transport: httpx.AsyncBaseTransport | None,
    go: Callable[[Sender], Awaitable[Summary]],
) -> Summary:
    if client is None:
        return await go(SendCounter(DryRunSender(requests)))
    async with CleverTapClient(client, transport=transport) as sender:
        return await go(SendCounter(sender))


@contextlib.contextmanager
def _summary_on_error(ledger: Callable[[], Ledger | None]) -> Iterator[None]:
    """A CtsyncError that stops a started run carries the run's summary, so that how far
    it got is still printed (a cron job's summary log misses no run)."""
    try:
        yield
    except CtsyncError as exc:
        redact_exception(exc)  # a message may quote an answer that echoed the passcode
        started = ledger()
        if started is not None and exc.summary is None:
            exc.summary = started.summary
            started.summary.error = redact(str(exc))
        raise


def _close(output: IO[bytes], what: str) -> None:
    """Close an output; what is still buffered is written now, and may not fit."""
    try:
        output.close()
    except OSError as exc:
        raise output_error(output, what, exc, "its last lines are missing") from None


@contextlib.contextmanager
def _files(
    outputs: Outputs,
) -> Iterator[tuple[IO[bytes] | None, IO[bytes] | None, IO[bytes] | None]]:
    with contextlib.ExitStack() as stack:

        def open_for_writing(path: Path | None, what: str) -> IO[bytes] | None:
            if path is None:
                return None
            if str(path) == "-":
                return sys.stdout.buffer
            try:
                output = open(path, "wb")  # noqa: SIM115 - closed by the stack, below
            except OSError as exc:
                raise UsageError(f"{path}: cannot write the {what} ({exc.strerror})") from None
            stack.callback(_close, output, what)
            return output

        yield (
            open_for_writing(outputs.report, "report"),
            open_for_writing(outputs.failed, "dead-letter file"),
            open_for_writing(outputs.requests, "request output"),
        )


class _CheckedStateFile(StateFile):
    """A state file whose content is off (edited by hand, another program's database)
    is a UsageError naming the file, not a traceback."""

    def open_file(self, source: Source) -> tuple[FileProgress, Resume]:
        try:
            return super().open_file(source)
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise UsageError(
                f"{self.path}: the state file is damaged or was edited by hand "
                f"({exc.__class__.__name__}: {exc}); move it away to start afresh "
                "(every file is then read and sent again)"
            ) from None


class _SignalDuringRead(BaseException):
    """Raised inside a blocking terminal read by Ctrl-C or SIGTERM."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum)
        self.signum = signum


class _TerminalStdin:
    """Standard input when it is a terminal. Lines are taken as they are typed (a
    buffered read would wait for 256 KiB), and Ctrl-C or SIGTERM ends the input: the
    run's own handler, which cannot run while the reader blocks, then stops the run as
    anywhere else."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._ended = False
        self.stop_requested: Callable[[], bool] = lambda: False
        self.on_signal: Callable[[signal.Signals], None] | None = None

    def read(self, size: int = -1) -> bytes:
        if self._ended or self.stop_requested():
            return b""
        if self.on_signal is None:  # no run handles signals: a plain blocking read
            return os.read(self._fd, size if size > 0 else 1 << 16)
        # For the time of the read only, a signal goes to a Python-level handler that
        # raises, which ends the read(2) it interrupted (PEP 475 would retry it), and
        # not to asyncio's wakeup fd, whose handler could run only after the read.
        wakeup = signal.set_wakeup_fd(-1)
        previous = {signum: signal.signal(signum, _raise_in_read) for signum in _STOP_SIGNALS}
        try:
            data = os.read(self._fd, size if size > 0 else 1 << 16)
        except _SignalDuringRead as stop:
            data = b""
            self.on_signal(stop.signum)  # what the run's own handler does (run.stop())
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(wakeup)
        if not data:
            self._ended = True
        return data


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_in_read(signum: int, frame: FrameType | None) -> None:
    raise _SignalDuringRead(signal.Signals(signum))


def _terminal_stdin() -> IO[bytes] | None:
    """`_TerminalStdin` when stdin is a terminal read on the main thread, else None
    (the reader then uses sys.stdin.buffer)."""
    stream = sys.stdin
    if stream is None or not stream.isatty():
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    return _TerminalStdin(stream.fileno())  # type: ignore[return-value]
