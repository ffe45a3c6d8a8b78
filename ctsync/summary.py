"""The end-of-run accounting: what every run returns, and what an error that stopped a
run carries. A leaf module: `errors` and `ledger` both use it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from ctsync.rules import FIXABLE_CODES

NOTES_SHOWN: Final = 20
"""Note lines in the summary (text and `--json`); a last line counts the ones left out."""


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 request`, `2 requests`, `1,000 records`."""
    return f"{count:,} {word if count == 1 else words or word + 's'}"


def were(count: int) -> str:
    """The verb after `plural(count, ...)`: `1 record was`, `2 records were`."""
    return "was" if count == 1 else "were"


@dataclass(frozen=True, slots=True)
class ConcurrencyReport:
    """Requests in flight for one endpoint over a run (the summary's `concurrency`)."""

    mode: str  # "auto" or "fixed"
    limit: int  # the most allowed: where auto starts, or the fixed number
    peak_in_flight: int  # the most requests that were in flight at once
    final_limit: int  # requests allowed in flight when the run ended
    lowest_limit: int  # the lowest it fell to (auto: after 429s)
    too_many_requests: int  # answers 429

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "limit": self.limit,
            "peak_in_flight": self.peak_in_flight,
            "final_limit": self.final_limit,
            "lowest_limit": self.lowest_limit,
            "http_429": self.too_many_requests,
        }


class Routine(StrEnum):
    """What a resumed run notes many times over: counted, one line each, after the notes
    that need a reader's attention."""

    FINISHED_EARLIER = "finished-earlier"
    DONE_EARLIER = "done-earlier"
    RESENT = "resent"

    def line(self, count: int) -> str:
        one, many = _ROUTINE_TEXT[self]
        return f"{count:,} {one if count == 1 else many}"


_ROUTINE_TEXT: Final = {
    Routine.FINISHED_EARLIER: (
        "input finished in an earlier run; skipped",
        "inputs finished in an earlier run; skipped",
    ),
    Routine.DONE_EARLIER: (
        "record done in an earlier run was skipped",
        "records done in earlier runs were skipped",
    ),
    Routine.RESENT: (
        "record was on the wire when an earlier run stopped and was sent again "
        "(safe to repeat: profile updates, tokens, deletions)",
        "records were on the wire when an earlier run stopped and were sent again "
        "(safe to repeat: profile updates, tokens, deletions)",
    ),
}


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
    # CPU seconds (user + system) of the run's own process, and of its worker processes.
    cpu_main: float = 0.0
    cpu_workers: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    signal: str | None = None  # SIGINT or SIGTERM when interrupted by one
    error: str | None = None  # what stopped the run early (refused credentials, a full disk)
    unreadable: int = 0  # files that ended early (truncated gzip, read errors)
    dropped: Counter[str] = field(default_factory=Counter)  # nested values --nested left out
    warnings: Counter[str] = field(default_factory=Counter)  # --validate warn: rules broken
    fixed: Counter[str] = field(default_factory=Counter)  # --validate fix: fields left out
    dates_left_as_text: Counter[str] = field(default_factory=Counter)  # finer than ms
    notes: list[str] = field(default_factory=list)  # each worth reading: see `note_lines`
    routine: Counter[Routine] = field(default_factory=Counter)
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

    @property
    def fixable(self) -> int:
        """Records refused for a standard profile value (a Phone, Gender, Email...), the
        codes `--validate fix` sends without that value (unless another rule is broken)."""
        return sum(
            count
            for counter in (self.invalid, self.rejected)
            for code, count in counter.items()
            if code in FIXABLE_CODES
        )

    def note_lines(self, limit: int = NOTES_SHOWN) -> list[str]:
        """The notes as shown, the same in the table and `--json`: what needs attention
        first (refusals `--validate fix` would avoid, then the notes in the order they
        came), then one counted line per routine note; past `limit`, one line counting
        the rest."""
        lines = []
        if self.fixable:
            lines.append(
                f"{self.fixable:,} records were refused for a standard profile value "
                "(Phone, Gender, Email...: codes 514-520); --validate fix sends such a "
                "record without that value, unless it breaks another rule too"
            )
        lines += self.notes
        lines += [kind.line(count) for kind, count in self.routine.items() if count]
        if len(lines) > limit:
            hidden = len(lines) - (limit - 1)
            lines = [*lines[: limit - 1], f"... and {hidden:,} more notes"]
        return lines

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
            "cpu_seconds": {"main": round(self.cpu_main, 3), "workers": round(self.cpu_workers, 3)},
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "signal": self.signal,
            "error": self.error,
            "notes": self.note_lines(),
        }
