"""The throughput benchmark: `make bench`, or

    python -m bench.run [--count 1000000] [--gzip] [--latency-ms 20] [--skip-e2e]

Generates a Segment export once (cached under bench/data/, which git ignores), then
measures, each as the median of `--repeat` runs on this (shared, noisy) machine:

1. the floor: orjson `loads` + `dumps` of every line in a bare loop. No Python pipeline
   that decodes and re-encodes every message can beat it;
2. `ctsync upload FILE --dry-run --quiet --json` as a child process: events/s from the
   wall time (interpreter start-up included) and the count it read, and its ratio to the
   floor;
3. `ctsync upload` against a local sandbox (a child process on 127.0.0.1, an ephemeral
   port, `--latency-ms` per request): events/s and its ratio to the dry run; afterwards
   the sandbox's `/_sandbox/stats` must show every identify accepted and at most 15
   uploads in flight;
4. the dry run's peak RSS at 100k messages and at `--count`: streaming keeps them close.

Peak RSS comes from `os.wait4`, which returns the resource usage of exactly the child it
reaps (`ru_maxrss`, in KiB on Linux). `getrusage(RUSAGE_CHILDREN)` would not do: its
`ru_maxrss` is the largest of all children reaped so far, so deltas between runs are
meaningless.

Prints a Rich table and writes it, with the machine and the command, to bench/results.md.
Everything runs on loopback, every child has a time limit, and the sandbox is stopped in
a `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import platform
import selectors
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from rich.console import Console
from rich.table import Table

from bench.generate import DEFAULT_SEED, DELETE_USER, IDENTIFY, generate_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results.md"
VENV_BIN = Path(sys.executable).parent
SANDBOX_ACCOUNT = "sandbox"
SANDBOX_PASSCODE = "sandbox"
SANDBOX_START_SECONDS = 20.0
MAX_UPLOADS_IN_FLIGHT = 15  # CleverTap's limit, which the sandbox counts
RSS_SMALL_COUNT = 100_000

# Targets printed next to the figures.
DRY_RUN_TARGET = 0.40  # of the floor
E2E_TARGET = 0.80  # of the dry run
RSS_TARGET_MB = 150.0


@dataclass(frozen=True, slots=True)
class Dataset:
    """A generated export and what it holds, by kind of message."""

    path: Path
    count: int
    counts: dict[str, int]

    @property
    def expected_profiles(self) -> int:
        """Upload records the actions preset makes: one per identify (the data is clean)."""
        return self.counts.get(IDENTIFY, 0)


@dataclass(frozen=True, slots=True)
class ChildRun:
    """One finished child process: wall time, peak RSS, and what it printed."""

    seconds: float
    cpu_seconds: float  # user + system
    max_rss_kib: int
    returncode: int
    stdout: bytes
    stderr: bytes

    def summary(self) -> dict[str, Any]:
        """The `--json` summary that `ctsync upload` printed."""
        if self.returncode != 0:
            raise RuntimeError(
                f"ctsync exited {self.returncode}: {self.stderr.decode(errors='replace')[-2000:]}"
            )
        value = orjson.loads(self.stdout)
        if not isinstance(value, dict):
            raise RuntimeError(f"unexpected summary: {self.stdout[:200]!r}")
        return value


@dataclass(frozen=True, slots=True)
class Rate:
    """The runs of one measurement: events over seconds, each."""

    events: int
    seconds: list[float]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_second(self) -> float:
        return self.events / self.median_seconds


# --- data -----------------------------------------------------------------------------


def dataset(count: int, *, seed: int, compress: bool, console: Console) -> Dataset:
    """The cached export for these arguments, generated on first use."""
    suffix = ".ndjson.gz" if compress else ".ndjson"
    path = DATA / f"segment-{count}-s{seed}{suffix}"
    meta = path.with_name(path.name + ".counts.json")
    if path.exists() and meta.exists():
        return Dataset(path, count, orjson.loads(meta.read_bytes()))
    console.print(f"generating {count:,} messages into {_relative(path)} ...")
    started = time.perf_counter()
    generated = generate_file(path, count, seed=seed, compress=compress)
    counts = dict(sorted(generated.counts.items()))
    meta.write_bytes(orjson.dumps(counts))
    console.print(
        f"  {time.perf_counter() - started:.1f}s, {generated.size / count:.0f} bytes/message"
    )
    return Dataset(path, count, counts)


def _open_lines(path: Path) -> IO[bytes] | gzip.GzipFile:
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")
    return open(path, "rb")


# --- measurements ---------------------------------------------------------------------


def floor_once(path: Path) -> tuple[int, float]:
    """Read every line, `loads` it and `dumps` it again: (lines, seconds)."""
    loads, dumps = orjson.loads, orjson.dumps
    events = 0
    started = time.perf_counter()
    with _open_lines(path) as lines:
        for line in lines:
            dumps(loads(line))
            events += 1
    return events, time.perf_counter() - started


def run_child(
    command: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> ChildRun:
    """Run `command` to its end; its peak RSS comes from `os.wait4` on exactly this child.

    Killed when it outlives `timeout` seconds. stdout (a small JSON summary) is read
    through a pipe, stderr through a temporary file, so neither can fill up and block.
    """
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=ROOT
        )
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            assert process.stdout is not None
            out = process.stdout.read()
            process.stdout.close()
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        err = errors.read()
    if process.returncode == -9 and seconds >= timeout:
        raise RuntimeError(f"{shlex.join(command)} took more than {timeout:.0f}s: killed")
    cpu = usage.ru_utime + usage.ru_stime
    return ChildRun(seconds, cpu, usage.ru_maxrss, process.returncode, out, err)


def child_timeout(count: int) -> float:
    """Generous, but bounded: 1 ms per message, and at least two minutes."""
    return max(120.0, count / 1000)


def ctsync_command(path: Path, *extra: str) -> list[str]:
    return [str(VENV_BIN / "ctsync"), "upload", str(path), "--quiet", "--json", *extra]


def dry_run(data: Dataset) -> ChildRun:
    return run_child(ctsync_command(data.path, "--dry-run"), timeout=child_timeout(data.count))


# --- the sandbox ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sandbox:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the sandbox process has used so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_sandbox/stats", timeout=10) as answer:
            value = orjson.loads(answer.read())
        assert isinstance(value, dict)
        return value

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/_sandbox/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()


@contextlib.contextmanager
def running_sandbox(latency_ms: int) -> Iterator[Sandbox]:
    """`python -m ctsync.sandbox` on 127.0.0.1, an ephemeral port; stopped on exit."""
    command = [
        sys.executable,
        "-m",
        "ctsync.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--latency-ms",
        str(latency_ms),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = _listening_url(process, process.stdout)
        # Keep reading whatever else it prints, so a full pipe never blocks it.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield Sandbox(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening_url(process: subprocess.Popen[bytes], stdout: IO[bytes]) -> str:
    prefix = b"ctsync sandbox listening on "
    deadline = time.monotonic() + SANDBOX_START_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=0.2):
                line = stdout.readline()
                if line.startswith(prefix):
                    return line[len(prefix) :].strip().decode()
                if not line:
                    break
    raise RuntimeError(f"the sandbox did not start (exit code {process.poll()})")


@dataclass(frozen=True, slots=True)
class EndToEnd:
    rate: Rate
    stats: dict[str, Any]
    summary: dict[str, Any]
    problems: list[str]
    ctsync_cpu: float  # seconds, median over runs
    sandbox_cpu: float


def end_to_end(data: Dataset, *, latency_ms: int, repeat: int) -> EndToEnd:
    env = {**os.environ, "CLEVERTAP_PASSCODE": SANDBOX_PASSCODE}
    seconds: list[float] = []
    problems: list[str] = []
    stats: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    ctsync_cpu: list[float] = []
    sandbox_cpu: list[float] = []
    with running_sandbox(latency_ms) as sandbox:
        for _ in range(repeat):
            sandbox.reset()
            command = ctsync_command(
                data.path, "--endpoint", sandbox.url, "--account-id", SANDBOX_ACCOUNT
            )
            before = sandbox.cpu_seconds()
            child = run_child(command, timeout=child_timeout(data.count), env=env)
            sandbox_cpu.append(sandbox.cpu_seconds() - before)
            ctsync_cpu.append(child.cpu_seconds)
            summary = child.summary()
            seconds.append(child.seconds)
            stats = sandbox.stats()
            problems += _check_end_to_end(data, summary, stats)
    return EndToEnd(
        Rate(data.count, seconds),
        stats,
        summary,
        sorted(set(problems)),
        statistics.median(ctsync_cpu),
        statistics.median(sandbox_cpu),
    )


def _check_end_to_end(data: Dataset, summary: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    problems = []
    if summary.get("read") != data.count:
        problems.append(f"ctsync read {summary.get('read')} of {data.count} messages")
    for outcome in ("invalid", "rejected", "failed"):
        if summary.get(outcome):
            problems.append(f"ctsync: {summary[outcome]} {outcome}")
    if stats.get("records_accepted") != data.expected_profiles:
        problems.append(
            f"sandbox accepted {stats.get('records_accepted')} records, "
            f"expected {data.expected_profiles}"
        )
    peak = stats.get("peak_in_flight", {}).get("upload", 0)
    if peak > MAX_UPLOADS_IN_FLIGHT:
        problems.append(f"{peak} uploads in flight at once (CleverTap allows 15)")
    return problems


# --- reporting ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    measurement: str
    runs: str
    seconds: str
    rate: str
    ratio: str
    target: str
    met: bool | None


def _mb(kib: int) -> float:
    return kib / 1024


def _verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {
        "CPU": model,
        "cores": f"{cores} ({usable} usable by this process)",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": f"{platform.system()} {platform.release()}",
        "orjson": orjson.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render(rows: list[Row], console: Console) -> None:
    table = Table(title="ctsync throughput (medians)", title_justify="left")
    for name, justify in (
        ("measurement", "left"),
        ("runs", "right"),
        ("median s", "right"),
        ("events/s or MB", "right"),
        ("ratio", "right"),
        ("target", "right"),
        ("met", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        style = "red" if row.met is False else None
        table.add_row(
            row.measurement,
            row.runs,
            row.seconds,
            row.rate,
            row.ratio,
            row.target,
            _verdict(row.met),
            style=style,
        )
    console.print(table)


def markdown(rows: list[Row], notes: list[str], command: str) -> str:
    lines = ["# ctsync benchmark results", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in machine().items()]
    lines += [
        "",
        "| measurement | runs | median s | events/s or MB | ratio | target | met |",
        "|---|---:|---:|---:|---:|---:|:-:|",
    ]
    for row in rows:
        cells = (row.measurement, row.runs, row.seconds, row.rate, row.ratio, row.target)
        lines.append("| " + " | ".join(cells) + f" | {_verdict(row.met)} |")
    lines += ["", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------


def measure(args: argparse.Namespace, console: Console) -> tuple[list[Row], list[str], bool]:
    """Every measurement; returns the rows, the notes, and whether the end-to-end run
    delivered what it should (missed speed targets are reported, not failed)."""
    data = dataset(args.count, seed=args.seed, compress=args.gzip, console=console)
    small = (
        dataset(RSS_SMALL_COUNT, seed=args.seed, compress=args.gzip, console=console)
        if args.count != RSS_SMALL_COUNT
        else data
    )
    rows: list[Row] = []
    notes: list[str] = [
        f"input: {_relative(data.path)}, {data.count:,} messages "
        f"({', '.join(f'{k} {v:,}' for k, v in data.counts.items())})",
    ]

    console.print(f"floor: orjson loads+dumps, {args.repeat} runs ...")
    floor_runs = [floor_once(data.path) for _ in range(args.repeat)]
    floor = Rate(floor_runs[0][0], [seconds for _, seconds in floor_runs])
    rows.append(
        Row(
            "floor: orjson loads+dumps per line, bare loop",
            str(args.repeat),
            f"{floor.median_seconds:.2f}",
            f"{floor.per_second:,.0f}/s",
            "1.00",
            "",
            None,
        )
    )

    console.print(f"dry run: ctsync upload --dry-run, {args.repeat} runs ...")
    dry_children = [dry_run(data) for _ in range(args.repeat)]
    dry_summaries = [child.summary() for child in dry_children]
    dry = Rate(dry_summaries[0]["read"], [child.seconds for child in dry_children])
    dry_ratio = dry.per_second / floor.per_second
    met = dry_ratio >= DRY_RUN_TARGET
    rows.append(
        Row(
            "ctsync upload --dry-run (wall time)",
            str(args.repeat),
            f"{dry.median_seconds:.2f}",
            f"{dry.per_second:,.0f}/s",
            f"{dry_ratio:.2f} of floor",
            f">= {DRY_RUN_TARGET:.2f}",
            met,
        )
    )
    inner = statistics.median(s["elapsed_seconds"] for s in dry_summaries)
    dry_cpu = statistics.median(child.cpu_seconds for child in dry_children)
    notes.append(
        f"dry run by its own clock (without interpreter start-up): "
        f"{dry.events / inner:,.0f} events/s ({inner:.2f}s); accepted "
        f"{dry_summaries[0]['accepted']:,}, skipped {dry_summaries[0]['skipped']:,}, "
        f"{dry_summaries[0]['requests']} requests"
    )

    delivered = True
    if not args.skip_e2e:
        console.print(
            f"end to end: sandbox with {args.latency_ms} ms latency, {args.e2e_repeat} run(s) ..."
        )
        e2e = end_to_end(data, latency_ms=args.latency_ms, repeat=args.e2e_repeat)
        e2e_ratio = e2e.rate.per_second / dry.per_second
        met = e2e_ratio >= E2E_TARGET
        rows.append(
            Row(
                f"ctsync upload -> sandbox, {args.latency_ms} ms latency",
                str(args.e2e_repeat),
                f"{e2e.rate.median_seconds:.2f}",
                f"{e2e.rate.per_second:,.0f}/s",
                f"{e2e_ratio:.2f} of dry run",
                f">= {E2E_TARGET:.2f}",
                met,
            )
        )
        stats = e2e.stats
        notes.append(
            "sandbox after the last run: records accepted "
            f"{stats.get('records_accepted'):,} (expected {data.expected_profiles:,}), "
            f"deletions {stats.get('deletions')} (Delete User messages "
            f"{data.counts.get(DELETE_USER, 0)}), peak in flight "
            f"{stats.get('peak_in_flight')} (limit upload 15), requests by status "
            f"{stats.get('requests_by_status')}; ctsync requests {e2e.summary.get('requests')}"
            f", retries {e2e.summary.get('retries')}"
        )
        notes.append(
            f"CPU during the end-to-end run: ctsync {e2e.ctsync_cpu:.1f}s, sandbox "
            f"{e2e.sandbox_cpu:.1f}s, over {e2e.rate.median_seconds:.1f}s of wall time on "
            f"{os.cpu_count()} cores (the dry run used {dry_cpu:.1f}s)"
        )
        notes += [f"PROBLEM: {problem}" for problem in e2e.problems]
        delivered = not e2e.problems

    big_rss = max(child.max_rss_kib for child in dry_children)
    sizes = [(data.count, big_rss)]
    if small is not data:
        console.print(f"peak RSS at {small.count:,} messages, {args.repeat} runs ...")
        sizes.insert(0, (small.count, max(dry_run(small).max_rss_kib for _ in range(args.repeat))))
    for count, kib in sizes:
        last = count == data.count
        rows.append(
            Row(
                f"dry run peak RSS at {count:,} messages",
                str(args.repeat),
                "",
                f"{_mb(kib):.1f} MB",
                f"{kib / sizes[0][1]:.2f} of {sizes[0][0] // 1000}k"
                if count != sizes[0][0]
                else "",
                f"< {RSS_TARGET_MB:.0f} MB" if last else "",
                _mb(kib) < RSS_TARGET_MB if last else None,
            )
        )
    notes += [
        f"medians of {args.repeat} runs (end to end: {args.e2e_repeat}); the machine is shared, "
        "so compare ratios from one run rather than absolute rates across runs",
        "events/s of child processes = messages read / wall time, interpreter start-up "
        "included; peak RSS = ru_maxrss of the reaped child from os.wait4 (the worst run)",
    ]
    return rows, notes, delivered


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Measure ctsync's throughput and memory."
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="messages in the export")
    parser.add_argument("--gzip", action="store_true", help="benchmark a gzipped export")
    parser.add_argument("--latency-ms", type=int, default=20, help="sandbox latency per request")
    parser.add_argument("--skip-e2e", action="store_true", help="no sandbox run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of floor and dry run")
    parser.add_argument("--e2e-repeat", type=int, default=1, help="runs against the sandbox")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown to write")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1 or args.e2e_repeat < 1 or args.latency_ms < 0:
        parser.error("--count, --repeat and --e2e-repeat must be positive")
    console = Console(width=None if sys.stdout.isatty() else 130)
    command = shlex.join(
        ["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]
    )
    rows, notes, delivered = measure(args, console)
    render(rows, console)
    for note in notes:
        console.print(f"- {note}", highlight=False)
    args.results.write_text(markdown(rows, notes, command))
    console.print(f"written to {_relative(args.results)}")
    return 0 if delivered else 1


if __name__ == "__main__":
    sys.exit(main())
