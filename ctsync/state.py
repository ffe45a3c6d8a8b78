"""Resumable runs: what each input file has been through, kept in a SQLite state file.

Per file (its absolute path, with its size and a fingerprint of its first 64 KiB, so a
rewritten file is not taken for the old one) the state keeps

- `done_through`: every record on a line at or below it reached a final outcome;
- `read_through`: the last line read;
- `pending`: the line spans, above `done_through`, of batches that had no answer yet,
  each marked `sent` if it was already on the wire. A span never covers a line of
  another batch that might be answered, so no acknowledged record is sent again.

A re-run skips finished files and, in the others, every line at or below `read_through`
that is not inside a pending span. So after a `kill -9` it re-sends only what was in
flight (outcome unknown: counted and reported as such) and what was read but not sent.

The state is written before every request goes out and after every answer, so a
`kill -9` at any moment leaves it exact. (SQLite in WAL mode: a commit survives the
process being killed without waiting for the disk.) The file is also the lock: a
second run on the same state file exits at once (flock, released by the kernel even
when the holder is killed).
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ctsync.errors import LockedError, OutputError, UsageError
from ctsync.reader import Source

FINGERPRINT_BYTES = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    fingerprint_len INTEGER NOT NULL,
    done_through INTEGER NOT NULL,
    read_through INTEGER NOT NULL,
    pending TEXT NOT NULL,
    complete INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holder (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER,
    started REAL
);
"""


@dataclass(frozen=True, slots=True)
class Span:
    """Lines `first`..`last` of one file held by a batch without an answer."""

    first: int
    last: int
    sent: bool


@dataclass(slots=True)
class Resume:
    """How to read one file again. `skip_all` for a file already finished."""

    skip_all: bool = False
    done_through: int = 0
    read_through: int = 0
    pending: list[Span] = field(default_factory=list)
    note: str | None = None
    _firsts: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pending.sort(key=lambda s: s.first)
        self._firsts = [span.first for span in self.pending]

    def _span(self, line: int) -> Span | None:
        at = bisect.bisect_right(self._firsts, line) - 1
        if at >= 0 and line <= self.pending[at].last:
            return self.pending[at]
        return None

    def wanted(self, line: int) -> bool:
        """Whether the record on `line` still needs to be processed."""
        if line > self.read_through:
            return True
        if line <= self.done_through:
            return False
        return self._span(line) is not None

    def was_sent(self, line: int) -> bool:
        """Whether the record on `line` was on the wire when the last run stopped."""
        if line <= self.done_through or line > self.read_through:
            return False
        span = self._span(line)
        return span is not None and span.sent


@dataclass(slots=True)
class FileProgress:
    """One file's progress in this run."""

    key: str
    size: int
    fingerprint: str
    fingerprint_len: int
    read_through: int = 0
    finished_reading: bool = False


def fingerprint(path: Path, length: int = FINGERPRINT_BYTES) -> tuple[str, int]:
    with open(path, "rb") as f:
        head = f.read(length)
    return hashlib.sha256(head).hexdigest(), len(head)


class StateFile:
    """The state of resumable runs, locked for this process while open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"{path}: cannot open the state file ({exc.strerror})") from None
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
            self._db.execute(
                "INSERT OR REPLACE INTO holder (id, pid, started) VALUES (1, ?, ?)",
                (os.getpid(), time.time()),
            )
        except sqlite3.DatabaseError as exc:
            os.close(self._lock_fd)
            raise UsageError(f"{path}: not a ctsync state file ({exc})") from None

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

    def open_file(self, source: Source) -> tuple[FileProgress, Resume]:
        """Start (or resume) one input file."""
        if source.path is None:
            raise UsageError("--state resumes files; it cannot resume stdin (give file paths)")
        key = str(source.path.resolve())
        size = source.path.stat().st_size
        row = self._db.execute(
            "SELECT size, fingerprint, fingerprint_len, done_through, read_through, pending,"
            " complete FROM files WHERE path = ?",
            (key,),
        ).fetchone()
        print_now, print_len = fingerprint(source.path)
        progress = FileProgress(key, size, print_now, print_len)
        if row is None:
            return progress, Resume()
        old_size, old_print, old_len, done, read, pending, complete = row
        same = (
            print_now if old_len == print_len else fingerprint(source.path, old_len)[0]
        ) == old_print
        if not same or size < old_size:
            return progress, Resume(
                note=f"{source.name}: changed since the last run; read from the start"
            )
        if complete and size == old_size:
            return progress, Resume(skip_all=True)
        spans = [Span(a, b, bool(sent)) for a, b, sent in orjson.loads(pending)]
        return progress, Resume(done_through=done, read_through=read, pending=spans)

    def save(self, progress: FileProgress, done_through: int, pending: Iterable[Span]) -> None:
        spans = sorted(pending, key=lambda s: s.first)
        complete = progress.finished_reading and not spans
        try:
            self._write(progress, done_through, spans, complete)
        except sqlite3.Error as exc:
            raise OutputError(
                f"{self.path}: cannot write the state file ({exc}); the run stopped"
            ) from None

    def _write(
        self, progress: FileProgress, done_through: int, spans: list[Span], complete: bool
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                progress.key,
                progress.size,
                progress.fingerprint,
                progress.fingerprint_len,
                done_through,
                progress.read_through,
                orjson.dumps([[s.first, s.last, int(s.sent)] for s in spans]).decode(),
                int(complete),
                time.time(),
            ),
        )
