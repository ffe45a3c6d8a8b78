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

from ctsync.dedupe import Key, message_key
from ctsync.errors import WorkerError
from ctsync.prepare import Op, OpKind, Skipped, ValidateMode, Validator, prepare
from ctsync.reader import Block, decode_block
from ctsync.records import Invalid, Mapper, Message, TokenKey, counting

MAX_DEFAULT_WORKERS: Final = 8
BLOCK_BYTES: Final = 1 << 20
"""About this many bytes of whole lines per block."""
START_AFTER: Final = 4 << 20
"""Bytes of blocks prepared in the main process before the worker processes start:
about 6,000 messages, a twentieth of a second; less input never starts a process."""

MapperFactory: TypeAlias = Callable[[set[TokenKey]], Mapper]
"""Builds a mapper that records the (objectId, token) pairs it sends in the given set."""

# What one record became, as sent back by a worker: (line, part, code, raw, a, b, log,
# key), `key` its messageId's `dedupe.Key` when the recipe dedupes and it has one.
READY: Final = 0  # a: operations as tuples, b: None or (warnings, fixes, message stub)
SKIPPED: Final = 1  # a: the reason
INVALID: Final = 2  # a: the Invalid, b: the message stub (for the report line)
BROKEN: Final = 3  # not a message (bad JSON, too deep ...): a: the Invalid, b: partial
DONE: Final = 4  # finished in an earlier run (--state): not prepared
Result: TypeAlias = tuple[
    int, int, int, bytes | None, Any, Any, tuple[tuple[TokenKey, bool], ...], Key | None
]

KIND_CODES: Final = {OpKind.UPLOAD: 0, OpKind.DELETE_IDENTITY: 1, OpKind.DELETE_GUID: 2}
KINDS: Final = (OpKind.UPLOAD, OpKind.DELETE_IDENTITY, OpKind.DELETE_GUID)


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


def default_workers() -> int:
    """The CPUs this process may run on, at most `MAX_DEFAULT_WORKERS`.

    Measured on a quiet 2-core machine, two workers beat one process (classic, 100k
    messages: wall 0.81x); on a machine busy with other work they lose (1.2-1.6x), as any
    extra process does: `--workers 1` is the choice there."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, usable))


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


class Stage:
    """The pure stage of one run in one process: a mapper, a validator, a token log."""

    def __init__(self, recipe: Recipe) -> None:
        self.mapper = recipe.mapper(set())
        counted = counting(self.mapper)
        self.counters = counted.counters
        self.lookups = counted.tokens.watch()  # each token lookup and its answer
        self.validator = recipe.validator() if recipe.mode is not ValidateMode.OFF else None
        self.mode = recipe.mode
        self.dedupe = recipe.dedupe

    def block(self, block: Block, resume: Any) -> tuple[list[Result], dict[str, Any]]:
        """Every record of `block`, prepared; and the mapper's counts for the block."""
        out: list[Result] = []
        append = out.append
        mapper, validator, mode = self.mapper, self.validator, self.mode
        dedupe = self.dedupe
        log = self.lookups
        dumps = orjson.dumps
        for record in decode_block(block):
            origin = record.origin
            line, part = origin.line, origin.part
            if (
                resume is not None
                and not resume.untouched(line, part)
                and not resume.touches(line, part)
            ):
                append((line, part, DONE, None, None, None, (), None))
                continue
            message = record.message
            if message is None:
                append((line, part, BROKEN, record.raw, record.error, record.partial, (), None))
                continue
            key = message_key(message) if dedupe else None
            prepared = prepare(message, mapper, validator, mode)
            lookups: tuple[tuple[TokenKey, bool], ...] = ()
            raw = record.raw
            if log:
                lookups = tuple(log)
                log.clear()
                if raw is None:
                    raw = dumps(message)
            if isinstance(prepared, Skipped):
                again = raw if lookups else None  # the main process may prepare it again
                append((line, part, SKIPPED, again, prepared.reason, None, lookups, key))
                continue
            if raw is None:  # an element of an envelope: its JSON is its line from now on
                raw = dumps(message)
            if isinstance(prepared, Invalid):
                append((line, part, INVALID, raw, prepared, _stub(message), lookups, key))
                continue
            ops = [
                (KIND_CODES[op.kind], op.key, op.body, op.safe, op.token, op.number)
                for op in prepared.ops
            ]
            extra = None
            if prepared.warnings or prepared.fixes:
                extra = (prepared.warnings, prepared.fixes, _stub(message))
            append((line, part, READY, raw, ops, extra, lookups, key))
        return out, self.counts()

    def counts(self) -> dict[str, Any]:
        """The mapper's counters since the last call (then cleared)."""
        return dict(self.counters.take())


def _stub(message: Message) -> Message:
    """What a report line reads of a message (`ledger.report_line`)."""
    return {key: message[key] for key in ("messageId", "userId", "anonymousId") if key in message}


_STAGES: dict[str, Stage] = {}


def prepare_block(
    run: str, recipe: Recipe, block: Block, resume: Any
) -> tuple[list[Result], dict[str, Any]]:
    """In a worker process: one block of one run (the stage is built once per run)."""
    stage = _STAGES.get(run)
    if stage is None:
        _STAGES.clear()
        stage = _STAGES[run] = Stage(recipe)
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
    """Hands out blocks: to this process until `start_after` bytes, then to the workers.

    `submit` returns the block's results at once (prepared here) or a future.
    """

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self._run = uuid.uuid4().hex
        self._local: Stage | None = None
        self._pool: WorkerPool | None = None
        self._own = False  # the pool was started for this run (and is stopped with it)
        self._here = 0  # bytes prepared in this process

    @property
    def started(self) -> bool:
        return self._pool is not None

    def submit(
        self, block: Block, resume: Any
    ) -> tuple[list[Result], dict[str, Any]] | Future[tuple[list[Result], dict[str, Any]]]:
        if self._pool is None and self._here + len(block.data) <= self.workers.start_after:
            self._here += len(block.data)
            if self._local is None:
                self._local = Stage(self.workers.recipe)
            return self._local.block(block, resume)
        if self._pool is None:
            self._own = self.workers.pool is None
            self._pool = self.workers.pool or start_pool(self.workers.count)
        try:
            with _quiet_start():  # a submit may start a worker process
                return self._pool.submit(
                    prepare_block, self._run, self.workers.recipe, block, resume
                )
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


def result_of(
    future: Future[tuple[list[Result], dict[str, Any]]],
) -> tuple[list[Result], dict[str, Any]]:
    """A finished block's results; a dead worker becomes a `WorkerError`."""
    try:
        return future.result()
    except (BrokenProcessPool, concurrent.futures.CancelledError):
        raise worker_died() from None


def add_counts(mapper: Mapper, counts: dict[str, Any]) -> None:
    """Add a block's counters to the main process's mapper (read at the end of a run)."""
    counting(mapper).counters.add(counts)


def ops_of(tuples: list[tuple[int, Any, bytes, bool, bool, int]]) -> list[Op]:
    return [
        Op(KINDS[k], key, body, safe, token, index) for k, key, body, safe, token, index in tuples
    ]


def lookups_hold(tokens: set[TokenKey], lookups: tuple[tuple[TokenKey, bool], ...]) -> bool:
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
