"""Worker processes for the pure record stage (`--workers N`).

The main process reads the input and cuts NDJSON into blocks of whole lines
(`reader.read_blocks`); a worker process decodes, maps, converts, validates and encodes
every record of a block (`prepare_block`) and sends back, in input order, one compact
tuple per record: its place, its outcome, its encoded operations. The main process keeps
everything with state: planning, sending, the state file, the ledger. Blocks go out
a bounded number at a time, so a large input is never prepared far ahead of sending.

Small inputs pay nothing: the first `start_after` bytes of blocks are prepared in the
main process, and the processes start only once the input has more.

A worker rebuilds the mapper and validator from a `Recipe` (module-level functions and
their arguments: a preset name, a mapping file's document, the options), never from a
pickled mapper. What a mapper remembers across records stays exact:

- device tokens sent once per run: each worker keeps its own set, and reports every
  lookup it made in it. The main process holds the run's one true set; when a worker's
  answer differs from it (another worker sent that token first, or an earlier record
  was not prepared in this run) the main process prepares that record again itself,
  against the true set. The counters below never depend on that set, so a worker's
  counts stay right for such records.
- the counters of values left out and dates left as text: each block's counts come back
  with it and are added to the main process's mapper.
- records an earlier run finished (`--state`) are not mapped at all, as with one
  process: the block carries the input's `Resume`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final, TypeAlias

import orjson

from ctsync.dedupe import day_of, message_key
from ctsync.errors import WorkerError
from ctsync.prepare import Skipped, ValidateMode, Validator, prepare
from ctsync.reader import Block, InputRecord, decode_block
from ctsync.records import Invalid, Mapper, TokenKey, counting
from ctsync.run.wire import (
    INVALID,
    NO_LOOKUPS,
    READY,
    SKIPPED,
    Counts,
    Lookups,
    Prepared,
    Result,
    broken,
    done,
    skip_runs,
    stub,
    wire_ops,
)

MAX_DEFAULT_WORKERS: Final = 8
BLOCK_BYTES: Final = 1 << 20
"""About this many bytes of whole lines per block."""
START_AFTER: Final = 4 << 20
"""Bytes of blocks prepared in the main process before the worker processes start:
about 6,000 messages, a twentieth of a second; less input never starts a process."""

MapperFactory: TypeAlias = Callable[[set[TokenKey]], Mapper]
"""Builds a mapper that records the (objectId, token) pairs it sends in the given set."""


def tuning() -> tuple[int, int]:
    """Block size and start threshold, from `CTSYNC_WORKER_BLOCK_BYTES` and
    `CTSYNC_WORKER_START_AFTER` when set: for tests and benchmarks that need workers on
    small inputs. Not a user setting."""
    found = []
    for name, default in (
        ("CTSYNC_WORKER_BLOCK_BYTES", BLOCK_BYTES),
        ("CTSYNC_WORKER_START_AFTER", START_AFTER),
    ):
        value = os.environ.get(name, "")
        found.append(int(value) if value.isdigit() else default)
    return found[0], found[1]


def default_workers(load: float | None = None) -> int:
    """The CPUs idle when the run starts: those this process may run on, less the
    one-minute load average (`load`, read from the system when not given), rounded down;
    at most `MAX_DEFAULT_WORKERS`, and 1 (everything in one process) when fewer than two
    are idle.

    Workers pay only on idle cores: measured on a quiet 2-core machine two workers beat
    one process (classic, 100k messages: wall 0.81x), while on the same machine busy with
    other work they lost (1.2-1.6x; classic, 51k messages: 7.6-7.9 s against 4.9-5.2 s),
    as any extra process does."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # not available here: count every CPU as idle
            load = 0.0
    return max(1, min(MAX_DEFAULT_WORKERS, int(usable - load)))


# -- recipes: what a worker builds its pure stage from -----------------------------------


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to build the pure stage anywhere: picklable factories, not built functions."""

    mapper: MapperFactory
    validator: Callable[[], Validator | None]
    mode: ValidateMode = ValidateMode.STRICT
    dedupe: bool = False  # send each record's messageId key back (see ctsync.dedupe)


@dataclass(frozen=True, slots=True, kw_only=True)
class Workers:
    """`--workers`: how many processes prepare records, and how blocks are cut.

    `pool`: worker processes started by the caller (`start_pool`) and shared by several
    runs, which then neither start nor stop processes of their own; otherwise each run
    starts its own `count` processes once it needs them and stops them at its end."""

    count: int
    recipe: Recipe
    block_bytes: int = BLOCK_BYTES
    start_after: int = START_AFTER
    in_flight: int = 0  # blocks handed out and not yet taken back; 0: twice `count`
    pool: WorkerPool | None = None

    @property
    def window(self) -> int:
        return self.in_flight or 2 * self.count


# -- the worker side ---------------------------------------------------------------------


class RecordStage:
    """The record stage of one run in one process: decode, map, convert, validate and
    encode, one input record in, one `wire.Result` out. The same code runs in a worker
    process and in the run's own process.

    Built `from_recipe` (in a worker), it keeps its own set of tokens sent and reports
    each lookup (see the module's docstring), and its counters go back with each block.
    Built on the run's own mapper (in the run's process), its lookups are the run's and
    its counters are the mapper's."""

    def __init__(
        self,
        mapper: Mapper,
        validator: Validator | None,
        mode: ValidateMode,
        *,
        dedupe: bool,
        log: list[tuple[TokenKey, bool]] | None = None,
        counted: bool = False,
        stubs: bool = False,
    ) -> None:
        self.mapper = mapper
        self.validator = validator if mode is not ValidateMode.OFF else None
        self.mode = mode
        self.dedupe = dedupe
        self._log: list[tuple[TokenKey, bool]] = [] if log is None else log
        self._counted = counted  # the mapper's counters go back with each block
        # Every READY record carries its message's stub: its raw line is not its JSON
        # (a deletion's identity), so the report cannot read the message from it.
        self._stubs = stubs

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RecordStage:
        mapper = recipe.mapper(set())
        validator = recipe.validator() if recipe.mode is not ValidateMode.OFF else None
        return cls(
            mapper,
            validator,
            recipe.mode,
            dedupe=recipe.dedupe,
            log=counting(mapper).tokens.watch(),  # each token lookup and its answer
            counted=True,
        )

    def block(self, block: Block, resume: Any) -> Prepared:
        """Every record of `block`, prepared; and the mapper's counts for the block. In a
        block no earlier run touched (`resume` None), runs of skipped records come as
        one result each."""
        record = self.record
        results = [record(each, resume) for each in decode_block(block)]
        return (skip_runs(results) if resume is None else results), self.counts()

    def record(self, record: InputRecord, resume: Any) -> Result:
        """One record, prepared (or passed over: an earlier run finished it)."""
        origin = record.origin
        line, part = origin.line, origin.part
        if (
            resume is not None
            and not resume.untouched(line, part)
            and not resume.touches(line, part)
        ):
            return done(line, part)
        message = record.message
        if message is None:
            assert record.error is not None
            return broken(line, part, record.raw, record.error, record.partial)
        key = message_key(message) if self.dedupe else None
        prepared = prepare(message, self.mapper, self.validator, self.mode)
        lookups = NO_LOOKUPS
        raw = record.raw
        log = self._log
        if log:
            lookups = tuple(log)
            log.clear()
            if raw is None:
                raw = orjson.dumps(message)
        if isinstance(prepared, Skipped):
            again = raw if lookups else None  # the run may prepare it again
            return (line, part, SKIPPED, again, prepared.reason, None, lookups, None)
        if key is not None:
            key = (key[0], day_of(key[1]))
        if raw is None:  # an element of a document or envelope: its JSON is its line now
            raw = orjson.dumps(message)
        if isinstance(prepared, Invalid):
            return (line, part, INVALID, raw, prepared, stub(message), lookups, key)
        notes = None
        if prepared.warnings or prepared.fixes or self._stubs:
            notes = (prepared.warnings, prepared.fixes, stub(message))
        return (line, part, READY, raw, wire_ops(prepared.ops), notes, lookups, key)

    def counts(self) -> Counts:
        """The mapper's counters since the last call (then cleared); none when they are
        the run's own."""
        return counting(self.mapper).counters.take() if self._counted else {}


_STAGES: dict[str, RecordStage] = {}


def prepare_block(run: str, recipe: Recipe, block: Block, resume: Any) -> Prepared:
    """In a worker process: one block of one run (the stage is built once per run)."""
    stage = _STAGES.get(run)
    if stage is None:
        _STAGES.clear()
        stage = _STAGES[run] = RecordStage.from_recipe(recipe)
    return stage.block(block, resume)


def _start_worker(lifeline: Connection) -> None:
    """In a new worker process: leave Ctrl-C and SIGTERM to the main process (a terminal
    sends them to its whole process group; the main process stops its workers itself),
    and end when the main process is gone, even by `kill -9`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a group of its own: signals to the run's group pass it by
    if hasattr(signal, "pthread_sigmask"):  # blocked while it started (`_quiet_start`)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _GROUP_SIGNALS)
    threading.Thread(target=_orphaned, args=(lifeline,), daemon=True).start()


def _orphaned(lifeline: Connection) -> None:
    # The main process holds the only other end: its end closes when it ends, however it
    # ends. A worker waiting for its next block would otherwise wait forever (and keep
    # the run's output pipes open).
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()
    os._exit(1)


# -- the main side -----------------------------------------------------------------------


class WorkerPool(ProcessPoolExecutor):
    """Worker processes that end with this process, however it ends (see `_orphaned`)."""

    def __init__(self, count: int) -> None:
        # `spawn`: fresh interpreters, children of this process. `fork` would copy the
        # event loop's threads and the state file's lock; a fork server dies of a SIGTERM
        # sent to the process group, and the pool with it.
        context = multiprocessing.get_context("spawn")
        lifeline, self._lifeline = context.Pipe(duplex=False)
        super().__init__(count, mp_context=context, initializer=_start_worker, initargs=(lifeline,))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        self._lifeline.close()  # closed: any worker still there ends


def start_pool(count: int) -> WorkerPool:
    """`count` worker processes, started as they are first needed."""
    return WorkerPool(count)


class Preparer:
    """Hands out blocks: to the run's own `local` stage, or to the worker processes once
    `start_after` bytes were prepared here (never, without `workers`).

    `submit` returns the block's results at once (prepared here) or a future.
    """

    def __init__(self, local: RecordStage, workers: Workers | None = None) -> None:
        self.local = local
        self.workers = workers if workers is not None and workers.count > 1 else None
        self._run = uuid.uuid4().hex
        self._pool: WorkerPool | None = None
        self._own = False  # the pool was started for this run (and is stopped with it)
        self._here = 0  # bytes prepared in this process

    @property
    def started(self) -> bool:
        return self._pool is not None

    def submit(self, block: Block, resume: Any) -> Prepared | Future[Prepared]:
        workers = self.workers
        if workers is None or (
            self._pool is None and self._here + len(block.data) <= workers.start_after
        ):
            self._here += len(block.data)
            return self.local.block(block, resume)
        if self._pool is None:
            self._own = workers.pool is None
            self._pool = workers.pool or start_pool(workers.count)
        try:
            with _quiet_start():  # a submit may start a worker process
                return self._pool.submit(prepare_block, self._run, workers.recipe, block, resume)
        except BrokenProcessPool:
            raise worker_died() from None

    def close(self) -> None:
        """Stop the workers (blocks not yet started are dropped); a pool the caller
        gave is left running for its next run."""
        if self._pool is not None and self._own:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


_GROUP_SIGNALS: Final = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _quiet_start() -> Iterator[None]:
    """Ctrl-C blocked while a worker process may be starting: the new process inherits
    the mask, so a Ctrl-C during its start-up cannot kill it with a traceback before it
    ignores Ctrl-C. This process gets the signal as soon as the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def worker_died() -> WorkerError:
    return WorkerError(
        "a worker process stopped before finishing its records (killed, or out of memory); "
        "every record read before it is accounted for. Run again (with --state, the run "
        "resumes where this one stopped), or with --workers 1"
    )


def result_of(future: Future[Prepared]) -> Prepared:
    """A finished block's results; a dead worker becomes a `WorkerError`."""
    try:
        return future.result()
    except (BrokenProcessPool, concurrent.futures.CancelledError):
        raise worker_died() from None


def add_counts(mapper: Mapper, counts: Counts) -> None:
    """Add a block's counters to the main process's mapper (read at the end of a run)."""
    counting(mapper).counters.add(counts)


def lookups_hold(tokens: set[TokenKey], lookups: Lookups) -> bool:
    """Whether a worker's token lookups got the answers the run's true set gives; if so
    the tokens it sent are added to the set."""
    added: list[TokenKey] = []
    for key, found in lookups:
        if (key in tokens or key in added) != found:
            return False
        if not found:
            added.append(key)
    tokens.update(added)
    return True


__all__ = [
    "BLOCK_BYTES",
    "START_AFTER",
    "Preparer",
    "Recipe",
    "WorkerError",
    "WorkerPool",
    "Workers",
    "default_workers",
    "start_pool",
]
