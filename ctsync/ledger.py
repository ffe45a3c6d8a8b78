"""Accounting: every input record ends in exactly one outcome, and the counts add up.

    read = skipped + invalid + accepted + rejected + failed

A record that produced operations is `Tracked` until each of them has a `Verdict`;
then its worst verdict decides its outcome (failed > rejected > accepted). Records that
did not go through are written to the report (and the dead-letter file) as they settle.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from ctsync.concurrency import ConcurrencyReport
from ctsync.errors import OutputError
from ctsync.records import Invalid, Message, Origin, Outcome, Stage
from ctsync.redact import redact_bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happened to one operation: accepted, or rejected/failed with a code and why."""

    outcome: Outcome
    code: str = ""
    message: str = ""
    stage: Stage = Stage.API


ACCEPTED = Verdict(Outcome.ACCEPTED)

RESUMED_LATER = frozenset({"interrupted", "aborted"})

_SEVERITY = {Outcome.ACCEPTED: 0, Outcome.REJECTED: 1, Outcome.FAILED: 2}


class Tracked:
    """One input record whose operations are queued or in flight.

    It keeps the record's input line, not the decoded message: thousands of records
    are in flight at once, and a decoded Segment message takes several times the memory
    of its line. `message` decodes the line again, for the few records reported."""

    __slots__ = ("_message", "origin", "raw", "remaining", "verdict")

    def __init__(self, origin: Origin, raw: bytes | None, message: Message, operations: int):
        self.origin = origin
        self.raw = raw
        self._message = message if raw is None else None
        self.remaining = operations
        self.verdict = ACCEPTED

    @property
    def message(self) -> Message:
        if self._message is not None:
            return self._message
        assert self.raw is not None
        decoded: Message = orjson.loads(self.raw)
        return decoded


@dataclass(slots=True)
class Summary:
    """The end-of-run accounting. `skipped`, `invalid`, `rejected` and `failed` count by
    reason or code; their totals with `accepted` add up to `read`."""

    read: int = 0
    accepted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    elapsed: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    signal: str | None = None  # SIGINT or SIGTERM when interrupted by one
    error: str | None = None  # what stopped the run early (refused credentials, a full disk)
    unreadable: int = 0  # files that ended early (truncated gzip, read errors)
    dropped: Counter[str] = field(default_factory=Counter)  # nested values --nested left out
    warnings: Counter[str] = field(default_factory=Counter)  # --validate warn: rules broken
    fixed: Counter[str] = field(default_factory=Counter)  # --validate fix: fields left out
    dates_left_as_text: Counter[str] = field(default_factory=Counter)  # finer than ms
    notes: list[str] = field(default_factory=list)
    # Requests in flight per endpoint used ("upload", "delete"); empty in a dry run.
    concurrency: dict[str, ConcurrencyReport] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        settled = (
            self.accepted
            + self.skipped.total()
            + self.invalid.total()
            + self.rejected.total()
            + self.failed.total()
        )
        return settled == self.read

    @property
    def complete(self) -> bool:
        """Every matched record went through."""
        return not (
            self.invalid or self.rejected or self.failed or self.unreadable or self.interrupted
        )

    def as_dict(self) -> dict[str, Any]:
        """The `--json` summary: the six counts as integers, then the breakdowns."""
        return {
            "read": self.read,
            "skipped": self.skipped.total(),
            "invalid": self.invalid.total(),
            "accepted": self.accepted,
            "rejected": self.rejected.total(),
            "failed": self.failed.total(),
            "skipped_by_reason": dict(self.skipped.most_common()),
            "invalid_by_code": dict(self.invalid.most_common()),
            "rejected_by_code": dict(self.rejected.most_common()),
            "failed_by_code": dict(self.failed.most_common()),
            "unreadable_files": self.unreadable,
            "dropped_values": dict(self.dropped.most_common()),
            "warnings_by_code": dict(self.warnings.most_common()),
            "fixed_by_code": dict(self.fixed.most_common()),
            "dates_left_as_text": dict(self.dates_left_as_text.most_common()),
            "requests": self.requests,
            "retries": self.retries,
            "http_429": sum(c.too_many_requests for c in self.concurrency.values()),
            "concurrency": {name: c.as_dict() for name, c in self.concurrency.items()},
            "elapsed_seconds": round(self.elapsed, 3),
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "signal": self.signal,
            "error": self.error,
            "notes": self.notes,
        }


def report_line(
    origin: Origin,
    message: Message | None,
    verdict: Verdict,
    run: str | None = None,
    field: str | None = None,
) -> bytes:
    """One line of the `--report` file (NDJSON). `run` is the run's start time (UTC,
    ISO 8601): the report appends, and it tells one run's lines from another's. `field`
    names the property a `--validate fix` line is about."""
    message = message or {}
    identity = message.get("userId")
    if identity is None:
        identity = message.get("anonymousId")
    line = {
        "source": origin.source,
        "line": origin.line,
        "part": origin.part,
        "messageId": message.get("messageId"),
        "identity": identity,
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
        report: IO[bytes] | None = None,
        dead_letters: IO[bytes] | None = None,
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

    def _put(self, output: IO[bytes], what: str, data: bytes) -> IO[bytes] | None:
        """Write `data`; the output to keep using, or None once it cannot be written (the
        first such error is kept in `output_error`, for the run to stop on)."""
        try:
            output.write(redact_bytes(data))
        except OSError as exc:
            if self.output_error is None:
                self.output_error = output_error(output, what, exc)
            return None
        return output


def output_error(
    output: IO[bytes], what: str, exc: OSError, then: str = "the run stopped before its end"
) -> OutputError:
    """The error for an output that could not be written, naming it and the cause."""
    name = getattr(output, "name", what)
    return OutputError(f"{name}: cannot write the {what} ({exc.strerror or exc}); {then}")
