"""What people see: the live progress display and the end-of-run summary (stderr)."""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ctsync.ledger import Summary


class ProgressView:
    """A Rich progress display fed by the pipeline's `Observer.update` calls."""

    def __init__(self, console: Console, total_bytes: int | None) -> None:
        self._started = time.monotonic()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[counts]}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("upload", total=total_bytes, counts="starting")

    def __enter__(self) -> ProgressView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, summary: Summary, consumed: int) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        counts = (
            f"read {summary.read:,}  accepted {summary.accepted:,}  "
            f"failed {summary.failed.total() + summary.rejected.total():,}  "
            f"{summary.read / elapsed:,.0f} rec/s"
        )
        self._progress.update(self._task, completed=consumed, counts=counts)


def render_summary(summary: Summary, console: Console) -> None:
    """The summary table: every input record in exactly one row group."""
    title = "ctsync summary (dry run: nothing was sent)" if summary.dry_run else "ctsync summary"
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_column("detail")
    table.add_row("read", f"{summary.read:,}", _rate(summary))
    for name, counter in (
        ("skipped", summary.skipped),
        ("invalid", summary.invalid),
    ):
        table.add_row(name, f"{counter.total():,}", _breakdown(counter))
    table.add_row(
        "accepted", f"{summary.accepted:,}", "would be sent" if summary.dry_run else "by CleverTap"
    )
    table.add_row("rejected", f"{summary.rejected.total():,}", _breakdown(summary.rejected))
    table.add_row("failed", f"{summary.failed.total():,}", _breakdown(summary.failed))
    console.print(table)
    for label, counter in (
        ("fixed (--validate fix)", summary.fixed),
        ("dropped values", summary.dropped),
        ("dates left as text", summary.dates_left_as_text),
    ):
        if counter:
            # Property names come from the data: printed as text, not as Rich markup.
            console.print(f"{label}: {counter.total():,} ({_breakdown(counter)})", markup=False)
    if not summary.balanced:  # never expected: say so loudly rather than hide it
        console.print("[bold red]the counts do not add up: please report this as a bug[/]")
    for note in summary.notes[:20]:
        console.print(f"[yellow]note:[/] {note}")
    if len(summary.notes) > 20:
        console.print(f"[yellow]note:[/] ... and {len(summary.notes) - 20} more")
    if summary.interrupted:
        console.print("[yellow]interrupted: the counts cover the records read before the stop[/]")


def _rate(summary: Summary) -> str:
    if summary.elapsed <= 0:
        return ""
    rate = summary.read / summary.elapsed
    retries = f", {summary.retries:,} retries" if summary.retries else ""
    return f"{summary.elapsed:.1f}s, {rate:,.0f} rec/s, {summary.requests:,} requests{retries}"


def _breakdown(counter: Counter[str], limit: int = 6) -> str:
    parts = [f"{key}: {count:,}" for key, count in counter.most_common(limit)]
    if len(counter) > limit:
        parts.append(f"+{len(counter) - limit} more")
    return ", ".join(parts)
