"""ctsync as a library: the same runs the command line makes, callable from Python.

    from ctsync.api import UploadJob, upload
    summary = upload(UploadJob(paths=["events.ndjson.gz"], client=settings))

A job is the one source of truth of its run: it holds its inputs (the paths, collected
when the run starts, or sources already collected) and builds its own mapper.

`client=None` is a dry run: everything but sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ctsync import mapping
from ctsync.dedupe import MessageIds, window_ms
from ctsync.errors import CtsyncError, DiskFull, UsageError
from ctsync.ledger import Ledger, Lines, Output, disk_full, output_error
from ctsync.mappers import MapperRecipe, MappingDocument
from ctsync.mapping.file import read_mapping_document
from ctsync.model import Sender
from ctsync.prepare import ValidateMode, Validator, rules_validator
from ctsync.presets import MappingOptions, Preset
from ctsync.reader import STDIN, InputOptions, Inputs, collect_inputs
from ctsync.records import DeleteKey, Mapper, Origin, counting
from ctsync.redact import redact
from ctsync.run import (
    DryRunSender,
    Observer,
    RunOptions,
    UploadRun,
    deletion_mapper,
    deletion_records,
)
from ctsync.run.stage import Recipe
from ctsync.run.workers import Workers, tuning
from ctsync.settings import MAX_DELETE_CONCURRENCY, ClientSettings
from ctsync.sources import LocalFile, Source, own_stdin
from ctsync.state import StateFile
from ctsync.stopping import (
    SendCounter,
    StopObserver,
    TerminalStdin,
    mark_run_ended,
    terminal_stdin,
)
from ctsync.summary import Summary, plural
from ctsync.window import Window, changed_window_note, window_notes

if TYPE_CHECKING:  # the client (and httpx) only load when a run sends for real
    import httpx


@dataclass(frozen=True, slots=True, kw_only=True)
class Outputs:
    """Files a run writes: the per-record report, dead letters, dry-run requests."""

    report: Path | None = None
    failed: Path | None = None
    requests: Path | None = None  # --output, dry run only


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadJob:
    """Everything `ctsync upload` does, as data.

    Its inputs are `paths` (collected when the run starts, with `inputs`' options) or
    `sources` already collected by `collect_inputs` (the CLI collects first, to name a
    missing path before anything else), never both. Making a job loads and checks its
    mapping file: a broken one is a UsageError before anything is read."""

    paths: Sequence[str] = ()
    sources: Inputs | None = None  # collected already: then `paths` stays empty
    client: ClientSettings | None = None  # None: dry run
    preset: Preset = Preset.ACTIONS
    mapping_file: str | Path | None = None  # replaces the preset
    mapping: MappingOptions = field(default_factory=MappingOptions)
    run: RunOptions = field(default_factory=RunOptions)
    outputs: Outputs = field(default_factory=Outputs)
    state: Path | None = None  # resumable runs
    # --include, --max-line-bytes, --since/--until (`window`), ...
    inputs: InputOptions = field(default_factory=InputOptions)
    # Processes preparing records. More than 1 starts worker processes, which import the
    # calling script again: it needs the `if __name__ == "__main__":` idiom.
    workers: int = 1
    _recipe: Recipe | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.paths and self.sources is not None:
            raise ValueError("an UploadJob takes paths or collected sources, not both")
        if self.mapping.link_anonymous and (
            self.mapping_file is not None or self.preset != Preset.CLASSIC
        ):
            raise UsageError(
                "--link-anonymous works with --preset classic; in a mapping file, send the "
                "identify as a userUpload with objectId $.anonymousId and profileData.Identity "
                "$.userId"
            )
        object.__setattr__(self, "_recipe", _recipe_of(self))

    def collect(self) -> Inputs:
        """The job's inputs: its collected sources, or its paths collected now."""
        return self.sources if self.sources is not None else collect_inputs(self.paths, self.inputs)

    @property
    def recipe(self) -> Recipe:
        """How any process (this one or a worker) builds the job's mapper and validator."""
        assert self._recipe is not None
        return self._recipe

    def build_mapper(self, tokens: set[tuple[str, str]] | None = None) -> Mapper:
        """A new mapper for one run (mappers count what they drop): the job's mapping
        file if it has one, else its preset. `tokens` is the run's set of device tokens
        sent (each goes once per run), shared with the workers' results."""
        return self.recipe.mapper(set() if tokens is None else tokens)

    def run_options(self) -> RunOptions:
        """The run's options, its lanes following its client: one lane per upload
        request that may be in flight (`ClientSettings.upload_concurrency`), never more
        than `run.lanes`. A dry run keeps `run.lanes`."""
        run = self.run
        if self.mapping_file is None and self.preset == Preset.CLASSIC:
            run = replace(run, remember_links=False)  # (it never deletes)
        if self.client is None:
            return run
        return replace(run, lanes=min(run.lanes, self.client.upload_concurrency))

    def build_validator(self) -> Validator | None:
        """CleverTap's data rules as `--validate` asks (`off`: the run skips them)."""
        return self.recipe.validator()


def _recipe_of(job: UploadJob) -> Recipe:
    """How a worker process builds the job's mapper and validator: the preset's name or
    the mapping file's document (read once, here), and the options. A broken mapping
    file is a UsageError, raised before anything is read."""
    validator = partial(
        rules_validator, job.mapping.max_event_properties, fix=job.run.validate is ValidateMode.FIX
    )
    document = None
    if job.mapping_file is not None:
        try:
            source, decoded = read_mapping_document(job.mapping_file)
            mapping.parse_mapping(decoded, source)  # the errors, said now
        except mapping.MappingError as exc:
            raise UsageError(str(exc)) from None
        document = MappingDocument(source, decoded)
    # --since/--until: checked before the mapper, in this process and in the workers.
    mapper = MapperRecipe(
        preset=job.preset, mapping=document, options=job.mapping, window=job.inputs.window
    )
    return Recipe(mapper, validator, job.run.validate, dedupe=job.run.dedupe)


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
    observer: Observer | None = None,
    stdin: IO[bytes] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Run an upload to the end and return its summary. Raises CtsyncError subclasses for
    what stops a run (bad paths, a broken mapping file, refused credentials, a locked
    state file). With `handle_signals`, Ctrl-C and SIGTERM stop the run gracefully.

    `job.workers` processes prepare the records (see `ctsync.run.workers`)."""
    block_bytes, start_after = tuning()
    workers = Workers(
        count=job.workers, recipe=job.recipe, block_bytes=block_bytes, start_after=start_after
    )
    tokens: set[tuple[str, str]] = set()  # one set for this process and the workers
    mapper = job.build_mapper(tokens)
    validator = job.build_validator()
    options = job.run_options()
    inputs = job.collect()
    skipped_notes = inputs.notes()
    sources = inputs.sources
    _refuse_shared_files(job.outputs, job.state, sources)
    ledger: Ledger | None = None
    with _summary_on_error(lambda: ledger), contextlib.ExitStack() as stack:
        state = None
        notes: list[str] = []  # of the state file, for the summary
        if job.state is not None:
            if job.client is None:
                raise UsageError("--state records what was sent, and a dry run sends nothing")
            if not all(source.resumable for source in sources):
                raise UsageError("--state resumes files; it cannot resume stdin (give file paths)")
            for source in sources:
                # Its fingerprint would read a named pipe's first bytes, lost to the run.
                if isinstance(source, LocalFile) and not source.file.is_file():
                    raise UsageError(
                        f"--state resumes files; {source.name} is not a regular file (a "
                        "named pipe, a device), which it cannot resume: read it without "
                        "--state, or save it to a file first"
                    )
            state = StateFile(job.state, retry_unknown=job.run.retry_unknown)
            stack.callback(state.close)
            window = job.inputs.window if isinstance(job.inputs.window, Window) else None
            bounds = (window.since, window.until) if window is not None else (None, None)
            before = state.window_before(*bounds)
            if before is not None:
                notes.append(changed_window_note(before, window))
        message_ids = _message_ids(job.run, state)
        if message_ids is not None:
            stack.callback(message_ids.close)  # before the state file closes
        if stdin is None and handle_signals and any(s.name == STDIN for s in sources):
            # A run that handles the signals owns the process, and reads stdin through a
            # descriptor of its own (see `own_stdin`), closed with the run.
            stdin = terminal_stdin()
            if stdin is None:
                stdin = own_stdin()
                if stdin is not None:
                    stack.callback(stdin.close)
        report, failed, requests = stack.enter_context(_files(job.outputs))
        if state is not None:
            files = [o for o in (report, failed) if isinstance(o, Output)]
            state.take_outputs(files)
        ledger = Ledger(
            report=report,
            dead_letters=failed,
            resumable=state is not None,
            dry_run=job.client is None,
        )
        if state is not None:
            stack.callback(_close_outputs, ledger, state)
        ledger.summary.notes.extend(skipped_notes)

        async def go(sender: Sender) -> Summary:
            run = UploadRun(
                sources,
                mapper=mapper,
                sender=sender,
                ledger=ledger,
                options=options,
                validator=validator,
                observer=observer,
                stdin=stdin,
                state=state,
                workers=workers,
                tokens=tokens,
                message_ids=message_ids,
            )
            terminal = stdin if isinstance(stdin, TerminalStdin) else None
            summary = await _until_signalled(
                run, handle_signals, observer, sender, options, terminal
            )
            counters = counting(mapper).counters
            summary.dropped.update(counters.dropped)
            summary.dates_left_as_text.update(counters.dates_left_as_text)
            # Tokens not sent and dates left as text lead the notes: they change the data.
            summary.notes[:0] = mapping.mapping_notes(summary.dropped, summary.dates_left_as_text)
            summary.notes += window_notes(counters.untimed.total())
            summary.notes += notes
            summary.notes += _connection_notes(summary, job.client)
            return summary

        return asyncio.run(_with_sender(job.client, requests, transport, go, ledger.summary))


def _connection_notes(summary: Summary, client: ClientSettings | None) -> list[str]:
    """Records that never reached CleverTap: where the run tried to send them (the table
    says only `connection`; why is in the report, when there is one). Uploads and
    deletions alike."""
    if client is None:
        return []
    where = redact(client.base_url)
    notes = []
    failed = summary.failed.get("connection", 0)
    if failed:
        notes.append(
            f"{plural(failed, 'record')} could not be sent to {where}: the connection failed "
            "before their requests were sent, after every retry; check --region (or "
            "--endpoint) and the network"
        )
    # (A wrong path under --endpoint, answered 404 or 405, stops the run: client.Refused.)
    return notes


def _message_ids(options: RunOptions, state: StateFile | None) -> MessageIds | None:
    """The messageIds a run remembers (`--no-dedupe`: none): in the state file, or in a
    private temporary database for this run alone."""
    if not options.dedupe:
        return None
    if not options.dedupe_window_days > 0:
        raise UsageError("--dedupe-window must be a number of days above 0")
    window = window_ms(options.dedupe_window_days)
    return state.message_ids(window) if state is not None else MessageIds.temporary(window)


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
            lanes = job.client.delete_concurrency if job.client else MAX_DELETE_CONCURRENCY
            run = UploadRun(
                records=deletion_records(job.identities),
                mapper=deletion_mapper(job.key),
                sender=sender,
                ledger=ledger,
                options=RunOptions(lanes=lanes),
                observer=observer,
            )
            summary = await _until_signalled(run, handle_signals, observer, sender, RunOptions())
            summary.notes += _connection_notes(summary, job.client)
            return summary

        return asyncio.run(_with_sender(job.client, requests, transport, go, ledger.summary))


async def _until_signalled(
    run: UploadRun,
    handle_signals: bool,
    observer: Observer | None,
    sender: Sender,
    options: RunOptions,
    terminal: TerminalStdin | None = None,
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
    previous = {}
    # Reading a terminal, each signal is acted on once by whichever sees it first: the
    # reader (which blocks the loop) or the loop (see TerminalStdin).
    act = on_signal if terminal is None else terminal.dispatch
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.getsignal(signum)
            loop.add_signal_handler(signum, act, signum)
            installed.append(signum)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            pass
    if terminal is not None and installed:
        terminal.stop_requested = lambda: run.stopping
        terminal.on_signal = on_signal
        for signum in installed:  # asyncio's wakeup fd stays; this notes each arrival
            signal.signal(signum, terminal.note_signal)
    try:
        summary = await run.run()
    except asyncio.CancelledError:
        if not received:
            raise
        summary = run.summary
    finally:
        mark_run_ended()
        for signum in installed:
            loop.remove_signal_handler(signum)
            # Not the default asyncio leaves (SIGTERM's kills with no word): the caller's.
            signal.signal(signum, previous[signum])
    if received:
        summary.interrupted = True
        summary.signal = received[0].name
    return summary


async def _with_sender(
    client: ClientSettings | None,
    requests: Lines | None,
    transport: httpx.AsyncBaseTransport | None,
    go: Callable[[Sender], Awaitable[Summary]],
    summary: Summary,
) -> Summary:
    if client is None:
        return await go(SendCounter(DryRunSender(requests)))
    from ctsync.client import CleverTapClient

    async with CleverTapClient(client, transport=transport) as sender:
        try:
            return await go(SendCounter(sender))
        finally:  # also for a run a 401 stopped: its summary says how it sent
            summary.concurrency = sender.concurrency()


@contextlib.contextmanager
def _summary_on_error(ledger: Callable[[], Ledger | None]) -> Iterator[None]:
    """A CtsyncError that stops a started run carries the run's summary, so that how far
    it got is still printed (a cron job's summary log misses no run)."""
    try:
        yield
    except CtsyncError as exc:
        # Its message is ctsync's sentence; what it quotes from outside is masked already.
        started = ledger()
        if started is None or exc.summary is not None:
            raise
        started.summary.error = str(exc)
        raise type(exc)(str(exc), summary=started.summary) from exc.__cause__


def _close_outputs(ledger: Ledger, state: StateFile) -> None:
    """A run that ends (not killed) records the final length of its outputs."""
    ledger.flush()
    state.close_outputs(ledger.lengths())


def _close(output: Output, what: str) -> None:
    """Close an output; what is still buffered is written now, and may not fit."""
    try:
        output.close()
    except OSError as exc:
        raise output_error(output, what, exc, "its last lines are missing") from None


def _refuse_shared_files(
    outputs: Outputs, state: Path | None, sources: Sequence[Source] = ()
) -> None:
    """A UsageError, before anything is opened, for a file a run would use twice: an
    output that is an input (emptied before it is read, or fed its own dead letters
    without end), two outputs in one file (after a kill each is cut back to its own
    length, taking the other's lines), or the state file as an output."""
    named = [
        ("--report", outputs.report),
        ("--failed", outputs.failed),
        ("--output", outputs.requests),
        ("--state", state),
    ]
    # A device (/dev/null, /dev/stderr) is no file to cut back or to read again.
    files = [
        (option, path)
        for option, path in named
        if path is not None and str(path) != "-" and (path.is_file() or not path.exists())
    ]
    for at, (option, path) in enumerate(files):
        for other, earlier in files[:at]:
            if _same_file(path, earlier):
                raise UsageError(
                    f"{other} and {option} name the same file ({path}): give each its own"
                )
        for source in sources:
            if isinstance(source, LocalFile) and _same_file(path, source.file):
                raise UsageError(
                    f"{option} {path} is also an input ({source.name}): the run would write "
                    "to it while reading it; give another file"
                )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same file when both exist (links too), else
    the same absolute path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


@contextlib.contextmanager
def _files(
    outputs: Outputs,
) -> Iterator[tuple[Lines | None, Lines | None, Lines | None]]:
    _refuse_shared_files(outputs, None)
    with contextlib.ExitStack() as stack:

        def open_for_writing(path: Path | None, what: str) -> Lines | None:
            if path is None:
                return None
            if str(path) == "-":
                return sys.stdout.buffer
            try:
                # The report and dead letters append: a second run the same day (the
                # README's cron example) must not wipe what the first one wrote.
                output = Output(path, what, append=what != "request output")
            except OSError as exc:
                if disk_full(exc):
                    raise DiskFull(
                        f"{path}: cannot write the {what}: the disk is full; nothing was "
                        "sent (free some space and run again)"
                    ) from None
                raise UsageError(f"{path}: cannot write the {what} ({exc.strerror})") from None
            stack.callback(_close, output, what)
            return output

        yield (
            open_for_writing(outputs.report, "report"),
            open_for_writing(outputs.failed, "dead-letter file"),
            open_for_writing(outputs.requests, "request output"),
        )
