"""What people see: progress while a run goes, the stop notice, and the end-of-run
summary (all on stderr)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import timedelta

from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ctsync.concurrency import AUTO
from ctsync.ledger import Summary
from ctsync.stopping import SendCounter
from ctsync.summary import ConcurrencyReport, plural

PLAIN_INTERVAL = 10.0  # seconds between two plain progress lines (cron logs stay readable)
PLAIN_WIDTH = 80  # a plain progress line never wraps in an 80-column log viewer


def plain_interval() -> float:
    """`PLAIN_INTERVAL`, or `CTSYNC_PROGRESS_INTERVAL` seconds when set (for tests, which
    wait for a line instead of ten seconds; not a user setting)."""
    try:
        return max(0.01, float(os.environ["CTSYNC_PROGRESS_INTERVAL"]))
    except (KeyError, ValueError):
        return PLAIN_INTERVAL


class RunView:
    """A run's observer for people: by itself it shows nothing while the run goes, but
    says what a first Ctrl-C or SIGTERM waits for. The progress views build on it."""

    def __init__(self, console: Console, total_bytes: int | None = None) -> None:
        self._console = console
        self._total = total_bytes
        self._started = time.monotonic()
        self._summary = Summary()
        self._consumed = 0
        self._counter: SendCounter | None = None
        self._deadline: float | None = None

    def __enter__(self) -> RunView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, summary: Summary, consumed: int) -> None:
        self._summary = summary
        self._consumed = consumed

    def sending(self, counter: SendCounter) -> None:
        self._counter = counter

    def stopping(self, signal_name: str, counter: SendCounter, deadline: float) -> None:
        self._counter = counter
        self._deadline = deadline
        what = "Ctrl-C" if signal_name == "SIGINT" else signal_name
        # (a service manager or cron sends SIGTERM: no one there presses Ctrl-C)
        again = (
            "press Ctrl-C again to stop now"
            if signal_name == "SIGINT"
            else f"a second {signal_name} (or Ctrl-C) stops now"
        )
        seconds = max(0, round(deadline - time.monotonic()))
        if counter.in_flight:
            waits = (
                f"waiting up to {seconds} s for {plural(counter.in_flight, 'request')} in flight"
            )
        else:
            waits = "no request in flight; finishing"
        self._console.print(
            f"[yellow]ctsync: stopping ({what}): {waits}; {again}[/]",
            highlight=False,
            soft_wrap=True,
        )

    def status(self, width: int = PLAIN_WIDTH) -> str:
        """One line for a log, at most `width` characters with `ctsync: ` before it, in
        short numbers (`10.0M`) up to 99.9M: read, sent, accepted, and invalid, skipped,
        failed when not 0 (sent yields when they are all there); then the rate, the eta
        and the bytes read while they fit."""
        summary = self._summary
        room = width - len("ctsync: ")
        sent = self._counter.records if self._counter is not None else 0
        counts = [
            f"read {_short(summary.read)}",
            f"{'built' if summary.dry_run else 'sent'} {_short(sent)}",
            f"accepted {_short(summary.accepted)}",
        ]
        for name, count in (
            ("invalid", summary.invalid.total()),
            ("skipped", summary.skipped.total()),
            ("failed", summary.failed.total() + summary.rejected.total()),
        ):
            if count:
                counts.append(f"{name} {_short(count)}")
        if len("  ".join(counts)) > room:
            del counts[1]
        elapsed = max(time.monotonic() - self._started, 1e-6)
        pace = [f"{_short(round(summary.read / elapsed))} rec/s", self._eta(elapsed)]
        pace.append(_size(self._consumed, self._total))
        for part in pace:
            if part and len("  ".join([*counts, part])) <= room:
                counts.append(part)
        return "  ".join(counts)

    def _counts(self) -> list[str]:
        summary = self._summary
        sent = self._counter.records if self._counter is not None else 0
        failed = summary.failed.total() + summary.rejected.total()
        return [
            f"read {summary.read:,}",
            f"sent {sent:,}" if not summary.dry_run else f"built {sent:,}",
            f"accepted {summary.accepted:,}",
            f"invalid {summary.invalid.total():,}",
            f"skipped {summary.skipped.total():,}",
            f"failed {failed:,}",
        ]

    def _pace(self) -> list[str]:
        summary = self._summary
        elapsed = max(time.monotonic() - self._started, 1e-6)
        parts = [f"{summary.read / elapsed:,.0f} rec/s", _bytes(self._consumed, self._total)]
        eta = self._eta(elapsed)
        return [*parts, eta] if eta else parts

    def _eta(self, elapsed: float) -> str:
        summary = self._summary
        if self._total and self._consumed and summary.read:
            # Done = the share of the input read, times the share of what was read that
            # has its outcome: reading ends long before the last answers arrive.
            settled = summary.read - self._unsettled()
            done = min(1.0, self._consumed / self._total) * settled / summary.read
            if done > 0:
                return f"eta {_clock(elapsed * (1 - done) / done)}"
        return ""

    def _unsettled(self) -> int:
        summary = self._summary
        settled = (
            summary.accepted
            + summary.skipped.total()
            + summary.invalid.total()
            + summary.rejected.total()
            + summary.failed.total()
        )
        return max(0, summary.read - settled)

    def stop_status(self) -> str:
        """While stopping: what is awaited and how long is left."""
        if self._deadline is None:
            return ""
        left = max(0.0, self._deadline - time.monotonic())
        in_flight = self._counter.in_flight if self._counter is not None else 0
        return (
            f"stopping: {plural(in_flight, 'request')} in flight, {_clock(left)} left "
            "(Ctrl-C again stops now)"
        )


class ProgressView(RunView):
    """The live display on a terminal: one status line, a bar when the size is known,
    and the countdown while stopping."""

    def __init__(self, console: Console, total_bytes: int | None) -> None:
        super().__init__(console, total_bytes)
        self._live = Live(
            console=console,
            get_renderable=self._render,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> ProgressView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def _render(self) -> RenderableType:
        grid = Table.grid(padding=(0, 2))
        grid.add_row(Text("  ".join(self._counts())))
        pace = Text("  ".join(self._pace()))
        if self._total:
            bar = Table.grid(padding=(0, 2))
            bar.add_row(ProgressBar(total=self._total, completed=self._consumed, width=30), pace)
            grid.add_row(bar)
        else:
            grid.add_row(pace)
        stopping = self.stop_status()
        if stopping:
            grid.add_row(Text(stopping, style="yellow"))
        return grid


class PlainProgress(RunView):
    """`--progress` where stderr is not a terminal (a cron log): one plain line every
    `interval` seconds, no cursor movement."""

    def __init__(
        self, console: Console, total_bytes: int | None, interval: float | None = None
    ) -> None:
        super().__init__(console, total_bytes)
        self._interval = plain_interval() if interval is None else interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="ctsync-progress", daemon=True)

    def __enter__(self) -> PlainProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _tick(self) -> None:
        while not self._done.wait(self._interval):
            line = self.stop_status() or self.status()
            self._console.print(f"ctsync: {escape(line)}", highlight=False, soft_wrap=True)


def _bytes(consumed: int, total: int | None) -> str:
    if total:
        return f"{consumed / 1e6:,.1f}/{total / 1e6:,.1f} MB"
    return f"{consumed / 1e6:,.1f} MB"


def _short(count: int) -> str:
    """A count in at most 5 characters up to 99.9M, to within 0.5%: `9,999`, `99.9k`,
    `999k`, `1.25M`, `10.0M`."""
    if count < 10_000:
        return f"{count:,}"
    if count < 99_950:
        return f"{count / 1e3:.1f}k"
    if count < 999_500:
        return f"{count / 1e3:.0f}k"
    if count < 9_995_000:
        return f"{count / 1e6:.2f}M"
    return f"{count / 1e6:.1f}M"


def _size(consumed: int, total: int | None) -> str:
    """Bytes read (of the total), in MB or GB: `512.0/2,048.0 MB`, `6.1/12.0 GB`."""
    unit, scale = ("GB", 1e9) if max(consumed, total or 0) >= 1e9 else ("MB", 1e6)
    if total:
        return f"{consumed / scale:,.1f}/{total / scale:,.1f} {unit}"
    return f"{consumed / scale:,.1f} {unit}"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=max(0, round(seconds))))


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
    for endpoint, report in summary.concurrency.items():
        console.print(_concurrency_line(endpoint, report), highlight=False)
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
    for note in summary.note_lines():
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if summary.interrupted:
        console.print("[yellow]interrupted: the counts cover the records read before the stop[/]")


def _concurrency_line(endpoint: str, report: ConcurrencyReport) -> str:
    """e.g. `upload requests in flight (auto, at most 15): peak 15, final limit 9, lowest 3;
    12 answered 429`."""
    line = (
        f"{endpoint} requests in flight ({report.mode}, at most {report.limit}): "
        f"peak {report.peak_in_flight}"
    )
    if report.mode == AUTO:
        line += f", final limit {report.final_limit}, lowest {report.lowest_limit}"
    return line + f"; {report.too_many_requests:,} answered 429"


def _rate(summary: Summary) -> str:
    if summary.elapsed <= 0:
        return ""
    rate = summary.read / summary.elapsed
    retries = f", {plural(summary.retries, 'retry', 'retries')}" if summary.retries else ""
    return (
        f"{summary.elapsed:.1f}s, {rate:,.0f} rec/s, {plural(summary.requests, 'request')}{retries}"
    )


def _breakdown(counter: Counter[str], limit: int = 6) -> str:
    parts = [f"{key}: {count:,}" for key, count in counter.most_common(limit)]
    if len(counter) > limit:
        parts.append(f"+{len(counter) - limit} more")
    return ", ".join(parts)
