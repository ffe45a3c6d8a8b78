"""Accounting: every input record ends in exactly one outcome, and the counts add up.

    read = skipped + invalid + accepted + rejected + failed

A record that produced operations is `Tracked` until each of them has a `Verdict`;
then its worst verdict decides its outcome (failed > rejected > accepted). Records that
did not go through are written to the report (and the dead-letter file) as they settle.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import orjson

from ctsync.errors import DiskFull, OutputError
from ctsync.model import ACCEPTED, Verdict
from ctsync.records import Invalid, Message, Origin, Outcome, Stage
from ctsync.summary import Summary

__all__ = [
    "ACCEPTED",
    "Ledger",
    "Lines",
    "Output",
    "Summary",
    "Tracked",
    "Verdict",
    "output_error",
    "report_line",
]


class Lines(Protocol):
    """Where NDJSON lines go: an `Output` file, standard output, or a test's BytesIO.
    Each `write` is one or more whole lines."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


DISK_FULL = "disk-full"
OUTPUT_FAILED = "output-error"
RESUMED_LATER = frozenset({"interrupted", "aborted", DISK_FULL, OUTPUT_FAILED})

_SEVERITY = {Outcome.ACCEPTED: 0, Outcome.REJECTED: 1, Outcome.FAILED: 2}


class Tracked:
    """One input record whose operations are queued or in flight.

    It keeps the record's input line, not the decoded message: thousands of records
    are in flight at once, and a decoded Segment message takes several times the memory
    of its line. `message` decodes the line again, for the few records reported, unless
    the record came with what its report reads (a stub: the line of `ctsync delete` is
    an identity, not JSON)."""

    __slots__ = ("_message", "dedupe", "origin", "raw", "remaining", "verdict")

    def __init__(
        self,
        origin: Origin,
        raw: bytes | None,
        message: Message,
        operations: int,
        dedupe: int | None = None,
    ):
        self.origin = origin
        self.raw = raw
        # Its messageId's key (`ctsync.dedupe`), when the run remembers it.
        self.dedupe = dedupe
        self._message = message if raw is None or message else None
        self.remaining = operations
        self.verdict = ACCEPTED

    @property
    def message(self) -> Message:
        if self._message is not None:
            return self._message
        assert self.raw is not None
        decoded: Message = orjson.loads(self.raw)
        return decoded


def report_line(
    origin: Origin,
    message: Message | None,
    verdict: Verdict,
    run: str | None = None,
    field: str | None = None,
) -> bytes:
    """One line of the `--report` file (NDJSON). `run` is the run's start time (UTC,
    ISO 8601): the report appends, and it tells one run's lines from another's. `field`
    names the property a `--validate fix` line is about. Who: `identity`, the userId as
    written (null without one); an anonymous message's anonymousId is its `objectId`, as
    CleverTap calls the profile it goes to."""
    message = message or {}
    identity = message.get("userId")
    line = {
        "source": origin.source,
        "line": origin.line,
        "part": origin.part,
        "messageId": message.get("messageId"),
        "identity": identity,
    }
    if identity is None and message.get("anonymousId") is not None:
        line["objectId"] = message["anonymousId"]
    line |= {
        "stage": verdict.stage.value,
        "code": verdict.code,
        "message": verdict.message,
        "run": run,
    }
    if field is not None:
        line["field"] = field
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


class Ledger:
    """Counts outcomes and writes the report and dead letters as records settle."""

    def __init__(
        self,
        *,
        report: Lines | None = None,
        dead_letters: Lines | None = None,
        resumable: bool = False,
        dry_run: bool = False,
        run: str | None = None,
    ) -> None:
        # Set from the start: a dry run stopped by an error is still a dry run.
        self.summary = Summary(dry_run=dry_run)
        started = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.run = run or started  # the `run` of each report line
        self._report = report
        self._dead_letters = dead_letters
        # The files among them: their lengths are committed with the state (see Output).
        self.files: list[Output] = [o for o in (report, dead_letters) if isinstance(o, Output)]
        self.summary.notes += [o.note for o in self.files if o.note]
        # The first output that could not be written. The ledger stops writing to it and
        # goes on counting; the run raises this at its next safe point.
        self.output_error: OutputError | None = None
        # With a state file, records stopped by an interruption are re-sent by the next
        # run: keeping them out of the dead letters stops them being sent twice.
        self._resumed_later = RESUMED_LATER if resumable else frozenset()

    def read(self) -> None:
        self.summary.read += 1

    def skip(self, reason: str) -> None:
        self.summary.skipped[reason] += 1

    def invalid(
        self, origin: Origin, raw: bytes | None, message: Message | None, invalid: Invalid
    ) -> None:
        self.summary.invalid[invalid.code] += 1
        self._write(
            origin,
            raw,
            message,
            Verdict(Outcome.INVALID, invalid.code, invalid.message, invalid.stage),
        )

    def fixed(self, origin: Origin, message: Message, field: str, code: str, text: str) -> None:
        """`--validate fix` left out or rewrote `field` of a record that is sent: counted by
        code, and one report line (stage `validate`); the record's outcome is its own."""
        self.summary.fixed[code] += 1
        if self._report is not None:
            verdict = Verdict(Outcome.ACCEPTED, code, text, Stage.VALIDATE)
            self._report = self._put(
                self._report, "report", report_line(origin, message, verdict, self.run, field)
            )

    def unreadable(self, origin: Origin, invalid: Invalid) -> None:
        """A file that could not be read to its end: not a record, but never silent."""
        self.summary.unreadable += 1
        self.summary.notes.append(f"{origin.source}: {invalid.message}")
        if self._report is not None:
            line = report_line(
                origin,
                None,
                Verdict(Outcome.FAILED, invalid.code, invalid.message, invalid.stage),
                self.run,
            )
            self._report = self._put(self._report, "report", line)

    def settle(self, tracked: Tracked, verdict: Verdict) -> None:
        """One operation of `tracked` has its verdict; count the record when it is the last."""
        if (
            verdict is not ACCEPTED
            and _SEVERITY[verdict.outcome] > _SEVERITY[tracked.verdict.outcome]
        ):
            tracked.verdict = verdict
        tracked.remaining -= 1
        if tracked.remaining:
            return
        final = tracked.verdict
        if final is ACCEPTED or final.outcome is Outcome.ACCEPTED:
            self.summary.accepted += 1
        else:
            counter = (
                self.summary.rejected if final.outcome is Outcome.REJECTED else self.summary.failed
            )
            counter[final.code] += 1
            self._write(tracked.origin, tracked.raw, tracked.message, final)

    def _write(
        self, origin: Origin, raw: bytes | None, message: Message | None, verdict: Verdict
    ) -> None:
        if self._report is not None:
            self._report = self._put(
                self._report, "report", report_line(origin, message, verdict, self.run)
            )
        if self._dead_letters is not None and verdict.code not in self._resumed_later:
            line = (
                raw if raw is not None else orjson.dumps(message) if message is not None else None
            )
            if line is not None:
                self._dead_letters = self._put(self._dead_letters, "dead-letter file", line + b"\n")

    @property
    def writes_lines(self) -> bool:
        """Whether a record's line may be written (the report reads its message, the dead
        letters are its line): without, the run keeps no line of a record in flight."""
        return self._report is not None or self._dead_letters is not None

    def lengths(self) -> dict[str, int]:
        """Each output file's length in whole lines, by its absolute path (after `flush`:
        what the state commits)."""
        return {o.key: o.length for o in self.files}

    def flush(self) -> None:
        """Hand what the report and dead letters hold to the operating system, so that a
        record the state file calls settled is in them even after `kill -9`."""
        for attribute, what in (("_report", "report"), ("_dead_letters", "dead-letter file")):
            output = getattr(self, attribute)
            if output is None:
                continue
            try:
                output.flush()
            except OSError as exc:
                setattr(self, attribute, None)
                if self.output_error is None:
                    self.output_error = output_error(output, what, exc)

    def _put(self, output: Lines, what: str, data: bytes) -> Lines | None:
        """Write `data`; the output to keep using, or None once it cannot be written (the
        first such error is kept in `output_error`, for the run to stop on)."""
        try:
            output.write(data)
        except OSError as exc:
            if self.output_error is None:
                self.output_error = output_error(output, what, exc)
            return None
        return output


def output_error(
    output: Lines, what: str, exc: OSError, then: str = "the run stopped before its end"
) -> OutputError:
    """The error for an output that could not be written, naming it and the cause."""
    name = getattr(output, "name", what)
    error = DiskFull if disk_full(exc) else OutputError
    return error(f"{name}: cannot write the {what} ({exc.strerror or exc}); {then}")


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


BUFFERED = 1 << 20
"""Bytes of whole lines an Output holds before it writes them."""


class Output:
    """An output file (report, dead letters, request output) written in whole lines.

    Each `write` is one or more whole lines. They are handed to the operating system
    whole, so a kill leaves no half-written line, and a write that fails part way (a full
    disk) is cut back to its last whole line. `length` is the size of the file's whole
    lines: a state file records it at every checkpoint, and a resumed run cuts the file
    back to it (`cut`), so that what a killed run wrote after its last checkpoint, which
    the resumed run writes again, is there once."""

    def __init__(self, path: Path, what: str, *, append: bool) -> None:
        self.name = str(path)
        self.what = what
        self.key = str(path.resolve())
        flags = os.O_RDWR | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o666)
        self._lines: list[bytes] = []
        self._held = 0
        self.note: str | None = None
        self.length = 0
        # A pipe or a device (/dev/stderr, a FIFO) is written as it comes: nothing to cut.
        self.regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        try:
            if self.regular:
                self.length = os.lseek(self._fd, 0, os.SEEK_END)
                self._end_on_whole_line()
        except OSError:
            os.close(self._fd)
            raise

    def _end_on_whole_line(self) -> None:
        """A run killed while writing (or stopped by a full disk, in an older version)
        may have left half a line: appending onto it would make one broken line of two."""
        if not self.length or os.pread(self._fd, 1, self.length - 1) == b"\n":
            return
        keep = end = self.length
        while keep > 0:
            start = max(0, keep - 65536)
            at = os.pread(self._fd, keep - start, start).rfind(b"\n")
            keep = start + at + 1 if at >= 0 else start
            if at >= 0:
                break
        os.ftruncate(self._fd, keep)
        self.length = keep
        self.note = (
            f"{self.name}: its last line was incomplete ({end - keep:,} bytes, left by a run "
            "stopped while writing it); cut off before appending"
        )

    def cut(self, committed: int, end: int | None) -> None:
        """Take out what a run that used this file with the same state wrote after its last
        checkpoint: bytes `committed`..`end` (to the end of the file if that run was
        killed, `end` None). A file shorter than that is not the one the state knew (moved
        aside, rotated): it is left alone. What other runs appended after `end` stays."""
        self.flush()
        size = self.length
        stop = size if end is None else end
        if not self.regular or committed > stop or stop > size or committed == stop:
            return
        tail = os.pread(self._fd, size - stop, stop) if size > stop else b""
        os.ftruncate(self._fd, committed)
        self.length = committed
        if tail:
            self._lines.append(tail)
            self._held += len(tail)
            self.flush()
        if self.note is None:
            self.note = (
                f"{self.name}: {stop - committed:,} bytes an earlier run wrote after its last "
                "checkpoint were taken out; this run writes those records' lines again"
            )

    def write(self, data: bytes) -> int:
        self._lines.append(data)
        self._held += len(data)
        if self._held >= BUFFERED:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Write the lines held; on an error, the file ends on its last whole line."""
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._held = 0
        done = 0
        try:
            with memoryview(data) as view:
                while done < len(data):
                    done += os.write(self._fd, view[done:])
        except OSError:
            keep = self.length + data.rfind(b"\n", 0, done) + 1
            self.length += done
            if self.regular:
                with contextlib.suppress(OSError):  # /dev/full: nothing was written anyway
                    os.ftruncate(self._fd, keep)
                    self.length = keep
            raise
        self.length += done

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1
