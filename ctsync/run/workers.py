"""Worker processes for the record stage (`--workers N`).

The run reads the input and cuts NDJSON into blocks of whole lines
(`reader.read_blocks`); a worker process runs the record stage (`ctsync.run.stage`) over
every record of a block (`prepare_block`) and sends back, in input order, its results
(`ctsync.run.wire`). The run keeps everything with state: planning, sending, the state
file, the ledger. Blocks go out a bounded number at a time, so a large input is never
prepared far ahead of sending.

Small inputs pay nothing: the first `start_after` bytes of blocks are prepared in the
run's own process, and the processes start only once the input has more. An input known
to have more (a file whose size says so) goes to them from its first block: the run's
process then reads and plans while they start, instead of preparing those bytes itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import gc
import multiprocessing
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final, TypeAlias

from ctsync.errors import WorkerError
from ctsync.reader import Block, fetch
from ctsync.run.stage import Recipe, RecordStage
from ctsync.run.wire import Prepared

MAX_DEFAULT_WORKERS: Final = 8
BLOCK_BYTES: Final = 1 << 20
"""About this many bytes of whole lines per block."""
START_AFTER: Final = 4 << 20
"""Bytes of blocks prepared in the main process before the worker processes start:
about 6,000 messages, a twentieth of a second; less input never starts a process."""


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


_STAGES: dict[str, RecordStage] = {}


def prepare_block(run: str, recipe: Recipe, block: Block, resume: Any) -> Prepared | None:
    """In a worker process: one block of one run (the stage is built once per run); None
    when the block came without its bytes and they cannot be read as the run read them
    (`reader.fetch`): the run then prepares it itself."""
    if not block.data:
        found = fetch(block)
        if found is None:
            return None
        block = found
    stage = _STAGES.get(run)
    if stage is None:
        _STAGES.clear()
        stage = _STAGES[run] = RecordStage.from_recipe(recipe)
    return stage.block(block, resume)


def _start_worker(lifeline: Connection, collect: tuple[int, int, int]) -> None:
    """In a new worker process: leave Ctrl-C and SIGTERM to the main process (a terminal
    sends them to its whole process group; the main process stops its workers itself),
    end when the main process is gone, even by `kill -9`, and collect garbage as the
    main process does (`collect`: its `gc` thresholds, set in `__main__`; a spawned
    interpreter starts with Python's: measured, 2% of the workers' CPU)."""
    gc.set_threshold(*collect)
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
        super().__init__(
            count,
            mp_context=context,
            initializer=_start_worker,
            initargs=(lifeline, gc.get_threshold()),
        )
        # The queues' pipes (private to the executor: looked up, never assumed).
        for queue in (getattr(self, "_call_queue", None), self._result_queue):
            _widen(getattr(queue, "_writer", None))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        self._lifeline.close()  # closed: any worker still there ends


PIPE_BYTES: Final = 1 << 20
"""The pipes that carry blocks and results: a block (1 MiB) then goes in one write, not
sixteen that each wait for the worker to read (Linux's default pipe holds 64 KiB).
Measured: the main process's CPU in a `--workers 2` dry run of 300,000 messages 0.97x
(median of 8 pairs on a busy machine; 0.92x in 3 pairs on a quiet one)."""


def _widen(end: object) -> None:
    """Give the pipe behind a connection `PIPE_BYTES` of buffer, where the system lets
    it (Linux; up to /proc/sys/fs/pipe-max-size): only faster, never required."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None or not isinstance(end, Connection):
        return
    with contextlib.suppress(OSError, ValueError):
        fcntl.fcntl(end.fileno(), setsize, PIPE_BYTES)


Submitted: TypeAlias = "Prepared | Future[Prepared | None]"
"""A block's results: prepared here, or to come from a worker (None: see
`prepare_block`)."""


def start_pool(count: int) -> WorkerPool:
    """`count` worker processes, started as they are first needed."""
    return WorkerPool(count)


class Preparer:
    """Hands out blocks: to the run's own `local` stage, or to the worker processes once
    `start_after` bytes were prepared here or are known to follow (never, without
    `workers`).

    `submit` returns the block's results at once (prepared here) or a future. `ahead`
    is how many bytes of the block's input are known to follow it (the rest of a file
    of known size; 0 when unknown, as for a pipe).
    """

    def __init__(self, local: RecordStage, workers: Workers | None = None) -> None:
        self.local = local
        self.workers = workers if workers is not None and workers.count > 1 else None
        self._run = uuid.uuid4().hex
        self._pool: WorkerPool | None = None
        self._own = False  # the pool was started for this run (and is stopped with it)
        self._here = 0  # bytes prepared in this process

    def submit(self, block: Block, resume: Any, ahead: int = 0) -> Submitted:
        workers = self.workers
        if workers is None or (
            self._pool is None and self._here + len(block.data) + ahead <= workers.start_after
        ):
            self._here += len(block.data)
            return self.local.block(block, resume)
        if self._pool is None:
            self._own = workers.pool is None
            self._pool = workers.pool or start_pool(workers.count)
        try:
            with _quiet_start():  # a submit may start a worker process
                return self._pool.submit(
                    prepare_block, self._run, workers.recipe, block.lean(), resume
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


def result_of(future: Future[Prepared | None]) -> Prepared | None:
    """A finished block's results (None: the worker could not read its bytes, see
    `prepare_block`); a dead worker becomes a `WorkerError`."""
    try:
        return future.result()
    except (BrokenProcessPool, concurrent.futures.CancelledError):
        raise worker_died() from None


__all__ = [
    "BLOCK_BYTES",
    "START_AFTER",
    "Preparer",
    "Submitted",
    "WorkerError",
    "WorkerPool",
    "Workers",
    "default_workers",
    "start_pool",
]
