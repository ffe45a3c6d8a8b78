"""Resumable runs: what each input has been through, kept in a SQLite state file.

Every operation read from an input has a *position*: (line, part, operation), where
`part` numbers the messages of one line (a `{"batch": [...]}` envelope line holds
several) and `operation` the CleverTap operations of one message (a classic track can
give an event and a device token). Per input (a file's absolute path, with its size and
a fingerprint of its first 64 KiB, so a rewritten file is not taken for the old one; a
bucket object's URL, with its size and version: S3's ETag or GCS's generation) the state
keeps

- `read_through`: the last record (line, part) that any run read;
- `pending`: the runs of positions, at or below it, of operations without a final
  answer, each marked `sent` when its request was written to a connection (CleverTap
  may have it) or not (it certainly has not). Written as a JSON list, in any order,
  of `[first, last, sent]` (with a held verdict: `[first, last, 1, verdict]`) and of
  `[sent, runs]`: the runs of one batch, each `[first, last]` or, for a run of one
  position `[line, 0, 0]` (most of them), `line` alone.

Every position at or below `read_through` outside the pending runs is *settled*: its
record was skipped, invalid, accepted, rejected or failed for good, and is never sent
again. A run that resumes reads only pending positions and what lies beyond
`read_through`; it keeps the pending runs it has not reached yet, and never moves
`read_through` back. A pending run marked `sent` is an unknown outcome: its operations
are sent again only if that is harmless (or with `--retry-unknown`), and otherwise
reported as `outcome-unknown`.

The state is written when a request is about to be written to a connection and after
every answer, so a `kill -9` at any moment leaves it exact. (SQLite in WAL mode: a
commit survives the process being killed without waiting for the disk.) That is twice
a request, each time with every batch without an answer (tens of thousands of
positions): a batch's runs go in as it holds them, serialized by orjson in one call,
with no object per position, and each batch on its way only once (`runs_json`). The
file is also the lock: a second run on the same state file exits at once (flock,
released by the kernel even when the holder is killed).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeAlias

import orjson

from ctsync.dedupe import MessageIds
from ctsync.errors import DiskFull, LockedError, OutputError, UsageError, missing_folder
from ctsync.ledger import Output
from ctsync.model import Position
from ctsync.reader import BucketObject, LocalFile, Source

FINGERPRINT_BYTES = 64 * 1024
END = 2**62
"""Above any part or operation number: (line, END, END) is the last position of a line."""
_OBJECT = -1
"""`fingerprint_len` of a bucket object, whose `fingerprint` is its version (below)."""
_VERSION_PREFIX = "version:"

_FULL_BEFORE = (
    "{path}: cannot write the state file: the disk is full; nothing was sent "
    "(free some space and run again)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    fingerprint_len INTEGER NOT NULL,
    read_through TEXT NOT NULL,
    pending TEXT NOT NULL,
    complete INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    path TEXT PRIMARY KEY,
    committed INTEGER NOT NULL,
    closed INTEGER
);
CREATE TABLE IF NOT EXISTS holder (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER,
    started REAL
);
CREATE TABLE IF NOT EXISTS time_window (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since INTEGER,
    until INTEGER
);
"""


@dataclass(frozen=True, slots=True)
class Span:
    """Positions `first`..`last` of one input held by a batch without a final answer.

    With `verdict`, one operation that has its verdict while its record waits for
    another: the record's report line is not written yet, so the verdict is kept here
    for the run that resumes (outcome, code, message, stage)."""

    first: Position
    last: Position
    sent: bool
    verdict: tuple[str, str, str, str] | None = None


Runs: TypeAlias = Sequence[Sequence[Position]]
"""A batch's runs of positions of one input, each `[first, last]` (`batching.Run`)."""


@dataclass(slots=True)
class Live:
    """What one input has without a final answer, as a checkpoint writes it: the runs of
    each batch (`sent`, and its runs, or their JSON from `runs_json` for a batch that
    no longer changes), and single spans (held verdicts)."""

    batches: list[tuple[bool, Runs | bytes]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


def runs_json(runs: Runs) -> bytes:
    """A batch's runs as its entry in the state file holds them: a run of one position
    `(line, 0, 0)`, most runs, as its line alone (a quarter of the bytes SQLite writes at
    every checkpoint); any other as `[first, last]`."""
    return orjson.dumps(
        [
            first[0] if first == last and first[1] == 0 and first[2] == 0 else (first, last)
            for first, last in runs
        ]
    )


class Seen(Enum):
    """What an earlier run left for one position."""

    NEW = "new"  # never read, or read but not sent: process it
    DONE = "done"  # settled: never again
    UNKNOWN = "unknown"  # on the wire when that run stopped: CleverTap may have it
    SETTLED = "settled"  # has its verdict (in the span), its record was not reported yet


@dataclass(slots=True)
class Resume:
    """How to read one input again. `skip_all` for an input already finished."""

    skip_all: bool = False
    read_through: tuple[int, int] = (0, 0)
    pending: list[Span] = field(default_factory=list)
    note: str | None = None
    _firsts: list[Position] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pending.sort(key=lambda s: s.first)
        self._firsts = [span.first for span in self.pending]

    def untouched(self, line: int, part: int) -> bool:
        """Whether no earlier run settled any operation of this record."""
        return (line, part) > self.read_through

    def touches(self, line: int, part: int) -> bool:
        """Whether any operation of this (already read) record is still pending."""
        at = bisect.bisect_right(self._firsts, (line, part, END)) - 1
        return at >= 0 and self.pending[at].last >= (line, part, 0)

    def seen(self, position: Position) -> Seen:
        if position[:2] > self.read_through:
            return Seen.NEW
        span = self.span(position)
        if span is None:
            return Seen.DONE
        if span.verdict is not None:
            return Seen.SETTLED
        return Seen.UNKNOWN if span.sent else Seen.NEW

    def span(self, position: Position) -> Span | None:
        """The pending span holding `position`, if any."""
        at = bisect.bisect_right(self._firsts, position) - 1
        if at >= 0 and position <= self.pending[at].last:
            return self.pending[at]
        return None

    def after(self, line: int, part: int) -> list[Span]:
        """The pending spans from beyond record (line, part): what a run that has read
        up to that record has not yet taken over from the earlier run."""
        cut: Position = (line, part, END)
        kept = []
        for span in self.pending:
            if span.last <= cut:
                continue
            first = span.first if span.first > cut else (line, part + 1, 0)
            kept.append(Span(first, span.last, span.sent, span.verdict))
        return kept


@dataclass(slots=True)
class Progress:
    """One input's progress in this run."""

    key: str
    size: int
    fingerprint: str
    fingerprint_len: int
    resume: Resume
    position: tuple[int, int] = (0, 0)  # the last record this run has taken in
    finished_reading: bool = False

    @property
    def read_through(self) -> tuple[int, int]:
        return max(self.position, self.resume.read_through)


def _cannot_open(path: Path, exc: OSError) -> str:
    # O_CREAT makes a missing file: its folder is missing (or a link points nowhere)
    why = missing_folder(path) if exc.errno == errno.ENOENT else None
    if why is not None:
        return f"{path}: cannot create the state file: {why}"
    return f"{path}: cannot open the state file ({exc.strerror})"


def fingerprint(path: Path, length: int = FINGERPRINT_BYTES) -> tuple[str, int]:
    with open(path, "rb") as f:
        head = f.read(length)
    return hashlib.sha256(head).hexdigest(), len(head)


class StateFile:
    """The state of resumable runs, locked for this process while open."""

    def __init__(self, path: Path, *, retry_unknown: bool = False) -> None:
        self.path = path
        self._retry_unknown = retry_unknown  # taking over 0.1's requests on the wire: see _migrate
        try:
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(_cannot_open(path, exc)) from None
        if not stat.S_ISREG(os.fstat(self._lock_fd).st_mode):  # a named pipe, a device
            os.close(self._lock_fd)
            raise UsageError(
                f"{path}: not a regular file; --state needs a file of its own, which ctsync "
                "creates when it does not exist (for example ctsync-state.db)"
            )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LockedError(self._locked_message()) from None
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
            self._db.execute(
                "INSERT OR REPLACE INTO holder (id, pid, started) VALUES (1, ?, ?)",
                (os.getpid(), time.time()),
            )
        except UsageError:
            self._db.close()
            os.close(self._lock_fd)
            raise
        except sqlite3.DatabaseError as exc:
            os.close(self._lock_fd)
            if _disk_full(path, exc):
                raise DiskFull(_FULL_BEFORE.format(path=path)) from None
            raise UsageError(f"{path}: not a ctsync state file ({exc})") from None
        self._message_ids: MessageIds | None = None

    def _migrate(self) -> None:
        """Take over the line-based state of ctsync 0.1 (table `files`), once."""
        old = self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'files'"
        ).fetchone()
        if old is None:
            return
        rows = self._db.execute(
            "SELECT path, size, fingerprint, fingerprint_len, done_through, read_through,"
            " pending, complete, updated FROM files"
        ).fetchall()
        # 0.1 kept the lines around each request on the wire, skipped and invalid records
        # between them included: what it may have sent is not known record by record.
        # Taken as unknown, every record of those lines that maps to an event now (0.1
        # skipped more) would be reported unknown and never sent: thousands for 500 on
        # the wire. So the person chooses: finish with 0.1, or send those lines again.
        on_wire = [
            (key, a, b)
            for key, *_, pending, _c, _u in rows
            for a, b, sent in orjson.loads(pending)
            if sent
        ]
        if on_wire and not self._retry_unknown:
            lines = sum(b - a + 1 for _, a, b in on_wire)
            raise UsageError(
                f"{self.path}: this state was written by ctsync 0.1, whose last run stopped "
                f"with requests on the wire; 0.1 kept only the lines they came from ({lines:,}"
                " lines), not which of their records it sent. Either finish that run with "
                "ctsync 0.1.0 (the same command; then this version takes the state over), or "
                "run again with --retry-unknown: the records of those lines are sent again "
                "(an event among them that CleverTap had stored is stored twice)"
            )
        for key, size, fp, fp_len, _done, read, pending, complete, updated in rows:
            spans = [[[a, 0, 0], [b, END, END], sent] for a, b, sent in orjson.loads(pending)]
            self._db.execute(
                "INSERT OR IGNORE INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    size,
                    fp,
                    fp_len,
                    orjson.dumps([read, END]).decode(),
                    orjson.dumps(spans).decode(),
                    complete,
                    updated,
                ),
            )
        self._db.execute("DROP TABLE files")

    def _locked_message(self) -> str:
        holder = ""
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1) as db:
                row = db.execute("SELECT pid, started FROM holder WHERE id = 1").fetchone()
            if row:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row[1]))
                holder = f" (pid {row[0]}, started {started})"
        except sqlite3.Error:
            pass
        return (
            f"another ctsync run{holder} is using the state file {self.path}; "
            "wait for it to finish (each run exits when its work is done)"
        )

    def close(self) -> None:
        self._db.close()
        os.close(self._lock_fd)

    def window_before(
        self, since: int | None, until: int | None
    ) -> tuple[int | None, int | None] | None:
        """The time window (`--since`, `--until`, epoch ms; None: open) of the run before
        this one when this run's reaches past it (earlier, or later), else None; records
        this run's. A window is a backfill of its own: inputs an earlier run finished are
        not read again, and their messages outside its window stay unsent (README:
        Backfills); a narrower window loses nothing. A state file written before ctsync
        kept the window says nothing."""
        try:
            row = self._db.execute("SELECT since, until FROM time_window").fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO time_window (id, since, until) VALUES (1, ?, ?)",
                (since, until),
            )
        except sqlite3.Error as exc:
            if _disk_full(self.path, exc):
                raise DiskFull(_FULL_BEFORE.format(path=self.path)) from None
            raise
        if row is None:
            return None
        before_since, before_until = row
        earlier = before_since is not None and (since is None or since < before_since)
        later = before_until is not None and (until is None or until > before_until)
        return (before_since, before_until) if earlier or later else None

    def open_input(self, source: Source) -> Progress:
        """Start (or resume) one input: a file, or a bucket object."""
        if isinstance(source, BucketObject):
            return self._open_object(source)
        if not isinstance(source, LocalFile):
            raise UsageError("--state resumes files; it cannot resume stdin (give file paths)")
        key = source.state_key
        size = source.file.stat().st_size
        row = self._row(key)
        print_now, print_len = fingerprint(source.file)
        if row is None:
            return Progress(key, size, print_now, print_len, Resume())
        old_size, old_print, old_len, read, pending, complete = row
        same = (
            print_now if old_len == print_len else fingerprint(source.file, old_len)[0]
        ) == old_print
        if not same or size < old_size:
            note = f"{source.name}: changed since the last run; read from the start"
            return Progress(key, size, print_now, print_len, Resume(note=note))
        resume = self._resume(source, read, pending)
        resume.skip_all = bool(complete) and size == old_size
        return Progress(key, size, print_now, print_len, resume)

    def _open_object(self, source: BucketObject) -> Progress:
        """A bucket object is identified by its URL (bucket and key), size and version
        (S3's ETag, GCS's generation), kept as its fingerprint. An object is never
        appended to, only rewritten whole: another version or size is another object,
        read from the start (what an earlier run left of the old one does not apply)."""
        key, size = source.state_key, source.size or 0
        version = f"{_VERSION_PREFIX}{source.version or ''}"
        row = self._row(key)
        if row is None:
            return Progress(key, size, version, _OBJECT, Resume())
        old_size, old_version, _kind, read, pending, complete = row
        if old_version != version or old_size != size:
            what = "generation" if key.startswith("gs://") else "ETag"
            old = str(old_version).removeprefix(_VERSION_PREFIX) or "?"
            note = (
                f"{source.name}: rewritten since the last run ({what} {old} -> "
                f"{source.version}); read from the start"
            )
            return Progress(key, size, version, _OBJECT, Resume(note=note))
        resume = self._resume(source, read, pending)
        resume.skip_all = bool(complete)
        return Progress(key, size, version, _OBJECT, resume)

    def _row(self, key: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(
            "SELECT size, fingerprint, fingerprint_len, read_through, pending, complete"
            " FROM inputs WHERE key = ?",
            (key,),
        ).fetchone()
        return row

    def _resume(self, source: Source, read: str, pending: str) -> Resume:
        """What an earlier run left of one input (read position and pending spans)."""
        try:
            line, part = orjson.loads(read)
            spans = _spans(orjson.loads(pending))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{self.path}: the state of {source.name} is damaged ({exc}); "
                "move the state file aside to start over (everything is then sent again)"
            ) from None
        return Resume(read_through=(int(line), int(part)), pending=spans)

    def save(self, progress: Progress, live: Iterable[Span]) -> None:
        """Write one input's progress: `live` are the spans of this run's batches that
        have no final answer yet."""
        self.checkpoint([(progress, Live(spans=list(live)))], {})

    def checkpoint(self, inputs: Iterable[tuple[Progress, Live]], outputs: dict[str, int]) -> None:
        """Write the inputs' progress (each with what this run holds of it without a final
        answer) and the outputs' lengths, in one transaction: a kill between them would
        leave lines the state does not know of, or miss lines it counts on."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for progress, live in inputs:
                    self._save(progress, live)
                    if self._message_ids is not None:  # the ids of its records (dedupe)
                        self._message_ids.write(progress.key)
                self._db.executemany(
                    "INSERT OR REPLACE INTO outputs (path, committed, closed) VALUES (?, ?, NULL)",
                    outputs.items(),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled it back itself (full)
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _disk_full(self.path, exc):
                raise DiskFull(
                    f"{self.path}: cannot write the state file: the disk is full; the run "
                    "stopped (free some space and run again with the same --state: it resumes)"
                ) from None
            raise OutputError(
                f"{self.path}: cannot write the state file ({exc}); the run stopped"
            ) from None

    def _save(self, progress: Progress, live: Live) -> None:
        line, part = progress.position
        spans = [*live.spans, *progress.resume.after(line, part)]
        entries = [orjson.dumps([_entry(span) for span in spans])[1:-1]] if spans else []
        for sent, runs in live.batches:
            if isinstance(runs, bytes):
                entries.append(b"[%d,%s]" % (sent, runs))
            elif runs:
                entries.append(orjson.dumps((int(sent), runs)))
        complete = progress.finished_reading and not entries
        self._db.execute(
            "INSERT OR REPLACE INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                progress.key,
                progress.size,
                progress.fingerprint,
                progress.fingerprint_len,
                orjson.dumps(progress.read_through).decode(),
                (b"[%s]" % b",".join(entries)).decode(),  # TEXT, as the schema says
                int(complete),
                time.time(),
            ),
        )

    def take_outputs(self, outputs: Iterable[Output]) -> None:
        """Before a run writes to its report and dead letters: take out of each what an
        earlier run with this state wrote after its last checkpoint (this run reads those
        records again), and mark it as being written (a kill leaves it so)."""
        for output in outputs:
            row = self._db.execute(
                "SELECT committed, closed FROM outputs WHERE path = ?", (output.key,)
            ).fetchone()
            if row is not None:
                output.cut(int(row[0]), None if row[1] is None else int(row[1]))
        try:
            self.checkpoint([], {output.key: output.length for output in outputs})
        except DiskFull:
            raise DiskFull(_FULL_BEFORE.format(path=self.path)) from None

    def close_outputs(self, lengths: dict[str, int]) -> None:
        """A run that ends (not killed) records each output's final length: what other
        runs append after it is theirs, and a resumed run leaves it in place."""
        with contextlib.suppress(sqlite3.Error):  # a full disk: the next run cuts to the end
            self._db.executemany(
                "UPDATE outputs SET closed = ? WHERE path = ?",
                [(length, path) for path, length in lengths.items()],
            )

    def message_ids(self, window_ms: int) -> MessageIds:
        """The messageIds earlier runs sent (`--dedupe-window` in ms): written with each
        input's progress, in this file's own table (made when missing)."""
        try:
            self._message_ids = MessageIds(self._db, window_ms=window_ms, persistent=True)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path}: not a ctsync state file ({exc})") from None
        return self._message_ids


def _entry(span: Span) -> list[Any]:
    entry: list[Any] = [span.first, span.last, int(span.sent)]
    if span.verdict is not None:
        entry.append(list(span.verdict))
    return entry


def _spans(entries: Any) -> list[Span]:
    """The spans of a `pending` column, in the order written (`Resume` sorts them)."""
    spans: list[Span] = []
    for entry in entries:
        if isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int:
            sent, runs = entry  # one batch's runs
            if sent not in (0, 1) or not isinstance(runs, list):
                raise ValueError(f"not a batch's runs: {entry!r:.60}")
            for run in runs:
                if type(run) is int:  # a run of one position, (line, 0, 0)
                    spans.append(Span((run, 0, 0), (run, 0, 0), bool(sent)))
                else:
                    first, last = run
                    spans.append(Span(_position(first), _position(last), bool(sent)))
        else:
            spans.append(_span(entry))
    return spans


def _span(entry: Any) -> Span:
    first, last, sent, *rest = entry
    verdict = None
    if rest:
        outcome, code, message, stage = rest[0]
        verdict = (str(outcome), str(code), str(message), str(stage))
    return Span(_position(first), _position(last), bool(sent), verdict)


def _position(value: Any) -> Position:
    line, part, op = value
    return (int(line), int(part), int(op))


def _disk_full(path: Path, exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for want of space: it says so (SQLITE_FULL), or it calls it an
    I/O error (creating the journal on a full disk) and the disk has almost no room."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    if code is None or code & 0xFF != sqlite3.SQLITE_IOERR:
        return False
    try:
        room = os.statvfs(path.absolute().parent)
    except OSError as err:
        return err.errno == errno.ENOSPC
    return room.f_bavail * room.f_frsize < 1 << 20
