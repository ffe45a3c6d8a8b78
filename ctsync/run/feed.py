"""What a run reads, in order: each source opened in turn, what an earlier run left of
it (`--state`), and the steps to take between sources."""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from functools import partial
from typing import IO, Any, Generic, TypeAlias, TypeVar

from ctsync.reader import (
    STDIN,
    Block,
    InputRecord,
    OpenSource,
    Source,
    file_kind,
    read_blocks,
)
from ctsync.records import Invalid, Origin, Stage
from ctsync.sources import LocalFile, StandardInput
from ctsync.state import Progress, StateFile
from ctsync.summary import Routine, Summary

Item: TypeAlias = InputRecord | Block | Callable[[], None]
"""What reading yields: a record, a block of NDJSON lines, or a step to take when every
item before it is taken (a note, the end of an input)."""


class Feed:
    """The sources of a run, read one after another."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        summary: Summary,
        checkpoint: Callable[[], None],
        stdin: IO[bytes] | None = None,
        state: StateFile | None = None,
    ) -> None:
        self._sources = sources
        self._summary = summary
        self._checkpoint = checkpoint
        self._stdin = stdin
        self._state = state
        # With --state: the inputs this run reads and has not settled, by source name.
        self.inputs: dict[str, Progress] = {}
        self._objects: set[str] = set()  # bucket objects read this run (never appended to)
        self._incomplete: set[str] = set()  # inputs whose last line is left for the next run
        self._current: OpenSource | None = None
        self._index = -1  # of the source opened last (or being opened)
        self._opens_slowly: dict[int, bool] = {}  # by source index (`_opening_may_wait`)
        self._consumed_before = 0  # bytes of the sources already finished
        self.read_all = False  # every source was read to its end
        self._reading: str | None = None  # a source opened and not read to its end

    @property
    def consumed(self) -> int:
        """Bytes read so far (compressed, for gzip), for the progress display."""
        current = self._current.consumed if self._current is not None else 0
        return self._consumed_before + current

    def items(self, block_bytes: int) -> Generator[tuple[Item, Progress | None], None, None]:
        """Every source in order, with steps between sources: NDJSON as blocks of lines
        of about `block_bytes`, anything else as records."""
        seen: set[str] = set()
        for index, source in enumerate(self._sources):
            self._index = index
            progress = self._state.open_input(source) if self._state is not None else None
            if progress is not None:
                if progress.resume.note:
                    yield partial(self._summary.notes.append, progress.resume.note), None
                if progress.key in seen:  # the same file named twice: read it once
                    continue
                seen.add(progress.key)
                if progress.resume.skip_all:
                    # (a cron over a bucket prefix meets every earlier object again: counted
                    # in one line, not named)
                    yield self._finished_earlier, None
                    continue
                yield partial(self.inputs.__setitem__, source.name, progress), None
            try:
                opened = OpenSource(source, self._stdin)
            except OSError as exc:
                why = f"cannot open the file ({exc.strerror or exc})"
                unreadable = Invalid("unreadable", why, Stage.PARSE)
                yield InputRecord(Origin(source.name, 0), None, None, unreadable), None
                continue
            self._current = opened
            self._reading = source.name
            if not source.grows:
                self._objects.add(source.name)
            nothing = True
            consumed = 0
            try:
                for item in read_blocks(opened, block_bytes):
                    nothing = False
                    yield item, progress
            finally:
                consumed = opened.consumed
                self._consumed_before += consumed
                self._current = None
                opened.close()
            self._reading = None  # read to its end (a stop leaves it named)
            if nothing and source.name != STDIN:
                # (a file in a folder is never empty here: skipped when collected)
                self._summary.notes.append(f"{source.name}: empty; nothing was read")
            elif nothing and not consumed:  # (`zcat missing.gz | ctsync upload -`, no pipefail)
                self._summary.notes.append(
                    "standard input was empty; nothing was read (from a pipe: did the "
                    "program before it fail?)"
                )
            if progress is not None:
                yield partial(self._finished, source.name, progress), None
        self.read_all = True

    def unread(self) -> tuple[str | None, list[str]]:
        """After a stop: the input being read when it came (None when it came between
        two), and the inputs not opened yet."""
        if self.read_all:
            return None, []
        return self._reading, [source.name for source in self._sources[self._index + 1 :]]

    def ahead(self) -> int:
        """Bytes of the input being read known to follow what was read (of a file; in
        gzip, compressed bytes: fewer than what they hold); 0 when unknown."""
        current = self._current
        if current is None or current.size is None:
            return 0
        return max(0, current.size - current.consumed)

    def may_wait(self) -> bool:
        """Whether taking the next item may wait for a writer: the input being read is a
        pipe (`OpenSource.may_wait`) that had nothing more at its last read, or the next
        input is one whose opening or first read may wait (a named pipe without a
        writer yet, a stdin pipe still empty)."""
        # Any step may end the input being read and open the next (a read that finds
        # the end yields nothing more): while the next one's opening may wait, every
        # step goes to the thread.
        upcoming = self._index + 1
        if upcoming < len(self._sources) and self._opening_may_wait(upcoming):
            return True
        current = self._current
        return current is not None and current.may_wait and current.drained

    def on_pipe(self) -> bool:
        """Whether the input being read (or, between inputs, the next) is not a file:
        its reads may wait for a writer."""
        current = self._current
        return current is None or current.may_wait

    def _opening_may_wait(self, index: int) -> bool:
        found = self._opens_slowly.get(index)
        if found is None:
            found = self._opens_slowly[index] = self._may_open_slowly(self._sources[index])
        return found

    def _may_open_slowly(self, source: Source) -> bool:
        if isinstance(source, LocalFile):
            return not source.file.is_file()  # a named pipe, a device
        if isinstance(source, StandardInput):  # (a terminal's reader has no descriptor)
            stream = self._stdin if self._stdin is not None else sys.stdin
            return file_kind(stream)[0]
        return False  # a bucket object

    def may_grow(self, source: str) -> bool:
        """Whether a writer may still be appending to `source` (a bucket object never)."""
        return source not in self._objects

    def left_for_next_run(self, origin: Origin) -> None:
        """A last line without its newline that does not parse: its writer may not be
        done. It is left for the next run (with --state)."""
        self._incomplete.add(origin.source)
        self._summary.notes.append(
            f"{origin.source}:{origin.line}: the last line is incomplete "
            "(no final newline, not valid JSON); left for the next run"
        )

    def _finished_earlier(self) -> None:
        self._summary.routine[Routine.FINISHED_EARLIER] += 1

    def _finished(self, name: str, progress: Progress) -> None:
        if name not in self._incomplete:
            progress.finished_reading = True
            self._checkpoint()


T = TypeVar("T")

WAIT_STEP = 0.2  # seconds between looks at a stop while a step waits for its input
QUIET_SECONDS = 1.0
"""How long the input may be quiet before what is planned goes out (`Stepper`)."""


class Stepper(Generic[T]):
    """Takes a run's items one at a time: in the run's thread, or, while the next one
    may wait for a writer (`may_wait`: a pipe with nothing more in it), on a thread of
    its own, so that the event loop goes on sending and taking answers meanwhile.
    Without it a record read from a pipe that then fell quiet waited, planned and
    unsent (or sent and its answer unread), until the next line or the end of the input.

    `next` gives None at the end of the items, and when the run stops while a step
    waits (the thread is left waiting for its input; nothing more is taken). While a
    step waits, `meanwhile` takes what the run has ready and gives what to wait for
    besides (the next block due back from a worker), or None. While a pipe is being
    read (`on_pipe`), once its steps have waited `QUIET_SECONDS` in all, with no step in
    between that found its input ready, `quiet` is called, and again every
    `QUIET_SECONDS` while that lasts: the run sends what it planned, in batches however
    small, instead of holding it for more input (a steady trickle of lines included).
    A step taken on the thread while a file is read (its next input may wait to open)
    calls `quiet` only if it alone waits that long."""

    def __init__(
        self,
        items: Iterator[T],
        may_wait: Callable[[], bool],
        *,
        on_pipe: Callable[[], bool] = lambda: True,
        quiet: Callable[[], None] = lambda: None,
    ) -> None:
        self._items = items
        self._may_wait = may_wait
        self._on_pipe = on_pipe
        self._quiet = quiet
        self._asks: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]]
        self._asks = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy = False  # a step is under way on the thread
        self._quiet_at: float | None = None  # when `quiet` is due, while the input is slow

    async def next(
        self,
        stopped: Callable[[], bool],
        meanwhile: Callable[[], Awaitable[asyncio.Future[Any] | None]] | None = None,
    ) -> T | None:
        if not self._may_wait():
            self._quiet_at = None  # its input was ready: not quiet
            return next(self._items, None)
        loop = asyncio.get_running_loop()
        step: asyncio.Future[T | None] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="ctsync-input", daemon=True)
            self._thread.start()
        # A pipe's slow steps add up; a file's step counts on its own (reading a file
        # never waits: only opening the input after it may).
        on_pipe = self._on_pipe()
        if not on_pipe or self._quiet_at is None:
            self._quiet_at = loop.time() + QUIET_SECONDS
        self._busy = True
        self._asks.put((loop, step))
        while not step.done():
            other = await meanwhile() if meanwhile is not None else None
            waits: set[asyncio.Future[Any]] = {step} if other is None else {step, other}
            await asyncio.wait(waits, timeout=WAIT_STEP, return_when=asyncio.FIRST_COMPLETED)
            if not step.done() and stopped():
                return None
            if loop.time() >= self._quiet_at:
                self._quiet_at = loop.time() + QUIET_SECONDS
                self._quiet()
        self._busy = False
        if not on_pipe:
            self._quiet_at = None
        return step.result()

    def close(self) -> None:
        """Close the items, unless a step is still waiting on the thread (a generator
        cannot be closed while it runs; the process ends without it)."""
        if not self._busy:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def _serve(self) -> None:
        while True:
            loop, step = self._asks.get()
            try:
                value = next(self._items, None)
            except BaseException as exc:  # raised in the run's thread, by `next`
                done = partial(_settle, step, None, exc)
            else:
                done = partial(_settle, step, value, None)
            try:
                loop.call_soon_threadsafe(done)
            except RuntimeError:  # the event loop is closed: the run is over
                return


def _settle(step: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if step.done():
        return
    if error is not None:
        step.set_exception(error)
    else:
        step.set_result(value)
