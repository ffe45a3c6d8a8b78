"""The benchmark's own code: the ceiling arithmetic, the option detection, the memory of
a whole process tree, the naive uploader and the results file. Behaviour only: no test
here times anything."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bench import naive
from bench import run as bench_run
from bench.run import (
    ChildRun,
    Row,
    api_ceiling,
    ceiling,
    child_env,
    has_workers_option,
    markdown,
    parse_args,
    rss_latency,
    rss_target_mb,
    run_child,
)
from ctsync.sandbox import SandboxConfig, running_sandbox


def test_the_api_ceiling_is_15000_records_per_latency() -> None:
    # The figures: one record per message, 150,000/s at 100 ms, 50,000/s at 300 ms.
    assert api_ceiling(100, 1000, 1000) == pytest.approx(150_000)
    assert api_ceiling(300, 1000, 1000) == pytest.approx(50_000)
    assert api_ceiling(20, 1000, 1000) == pytest.approx(750_000)
    # The actions preset sends one record for two messages: twice the messages per second.
    assert api_ceiling(100, 2000, 1000) == pytest.approx(300_000)
    assert math.isinf(api_ceiling(100, 1000, 0))


def test_the_api_ceiling_counts_3_deletion_requests_of_100_ids_per_latency() -> None:
    # 300,000 messages, 150,000 uploaded records and 9,000 deletions (3%): at 300 ms the
    # uploads allow 100,000 messages/s, the deletions 1,000 ids/s, so 33,333 messages/s.
    assert api_ceiling(300, 300_000, 150_000, 9_000) == pytest.approx(100_000 / 3)
    assert api_ceiling(100, 300_000, 150_000, 9_000) == pytest.approx(100_000)
    assert api_ceiling(20, 300_000, 150_000, 9_000) == pytest.approx(500_000)
    assert api_ceiling(300, 300_000, 0, 9_000) == pytest.approx(100_000 / 3)


def test_the_ceiling_is_the_lower_of_the_api_and_the_dry_run() -> None:
    assert ceiling(300, 1000, 1000, dry_rate=80_000) == pytest.approx(50_000)
    assert ceiling(100, 1000, 1000, dry_rate=80_000) == pytest.approx(80_000)


def test_the_memory_target_grows_by_60_mb_per_worker() -> None:
    assert rss_target_mb(None) == rss_target_mb(1) == 160
    assert rss_target_mb(2) == 220


def test_the_upload_measured_for_memory_is_at_100_ms_when_there_is_one() -> None:
    assert rss_latency([20, 100, 300]) == 100
    assert rss_latency([20, 300]) == 20


@pytest.mark.parametrize(
    ("help_text", "listed"),
    [
        ("  --batch-size N   Records per upload request.\n  --workers N  Processes", True),
        ("│ --workers            N  Processes preparing records │", True),
        ("  --concurrency auto|N  Requests in flight", False),
        ("  --max-workers-ever N", False),
    ],
)
def test_workers_are_passed_only_when_the_help_lists_the_option(
    help_text: str, listed: bool
) -> None:
    assert has_workers_option(help_text) is listed


def test_quick_is_small_and_runs_once() -> None:
    quick = parse_args(["--quick"])
    assert (quick.count, quick.repeat, quick.latencies) == (50_000, 1, [20, 100, 300])
    full = parse_args([])
    assert (full.count, full.repeat) == (1_000_000, 3)
    # Memory is measured at a million messages unless told, even when the rest is smaller
    # (the figure); --quick stays under two minutes by measuring its own export.
    assert quick.rss_count == 50_000
    assert parse_args(["--count", "300000"]).rss_count == 1_000_000
    assert parse_args(["--count", "300000", "--rss-count", "2000"]).rss_count == 2000
    assert parse_args(["--workers", "1,2", "--latencies", "50"]).workers == [1, 2]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--latencies", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--workers", "0"])


# A parent holding 60 MB starts a child holding 80 MB: the tree's peak is their sum,
# which ru_maxrss (the largest single process of the tree) cannot show.
_TREE = """
import subprocess, sys
child = "x = bytearray(80 * 1024 * 1024); import time; time.sleep(0.6)"
process = subprocess.Popen([sys.executable, "-c", child])
mine = bytearray(60 * 1024 * 1024)
assert process.wait() == 0
print('{"ok": true}')
"""
# `run_child` called from a small, fresh interpreter: Linux charges a process started
# with vfork and exec (as subprocess starts them) its starter's high-water RSS in its
# own ru_maxrss, so from pytest's process, grown by the tests before, the tree read as
# large as pytest (141 and 144 MB, twice; 177 MB under a parent holding 150 MB).
_MEASURE = """
import json, sys
from bench.run import run_child
run = run_child([sys.executable, "-c", sys.argv[1]], timeout=60)
print(json.dumps({"summary": run.summary(), "processes": run.tree_processes,
                  "peak": run.tree_peak_bytes, "max_rss_kib": run.max_rss_kib}))
"""
MB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def test_the_peak_memory_covers_the_whole_process_tree() -> None:
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE, _TREE],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
        check=True,
    )
    run = json.loads(measured.stdout)
    assert run["summary"] == {"ok": True}
    assert run["processes"] >= 2
    assert run["peak"] >= 140 * MB
    assert run["max_rss_kib"] * 1024 < 140 * MB  # no single process ever held both


def test_a_child_that_outlives_its_time_is_killed() -> None:
    with pytest.raises(RuntimeError, match="killed"):
        run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def _export(path: Path, count: int) -> None:
    lines = []
    for i in range(count):
        kind = ("identify", "track", "page", "group")[i % 4]
        message: dict[str, object] = {
            "type": kind,
            "userId": f"u{i}",
            "timestamp": "2024-05-01T00:00:00.000Z",
        }
        if kind == "identify":
            message["traits"] = {"n": i}
        if kind == "track":
            message |= {"event": "Played", "properties": {"n": i}}
        lines.append(json.dumps(message))
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name", ["export.ndjson", "export.ndjson.gz"])
def test_the_naive_uploader_sends_identifies_and_tracks_one_request_at_a_time(
    tmp_path: Path, name: str
) -> None:
    export = tmp_path / name
    _export(export, 40)  # 10 identify, 10 track, 10 page, 10 group
    with running_sandbox(SandboxConfig(sink=True, latency_ms=5)) as sandbox:
        result = naive.upload(export, sandbox.url, "sandbox", "sandbox", batch=3)
        stats = sandbox.stats()
    assert result["messages"] == 40
    assert result["records"] == stats.records_accepted == 20
    assert result["requests"] == stats.requests_by_endpoint["upload"] == 7  # ceil(20 / 3)
    assert stats.peak_in_flight["upload"] == 1
    assert result["refused"] == 0


def test_the_naive_mapping_is_the_obvious_one() -> None:
    track = {
        "type": "track",
        "userId": "u1",
        "event": "Played",
        "properties": {"n": 1},
        "timestamp": "2024-05-01T00:00:00Z",
    }
    assert naive.to_record(track) == {
        "type": "event",
        "identity": "u1",
        "ts": 1714521600,
        "evtName": "Played",
        "evtData": {"n": 1},
    }
    assert naive.to_record({"type": "page", "userId": "u1"}) is None
    assert naive.to_record({"type": "identify"}) is None  # no identity at all


def test_the_results_file_names_the_command_the_machine_and_every_row() -> None:
    rows = [
        Row("floor", "3", "1.00", "400,000/s", "1.00"),
        Row("best dry run, actions", "", "", "240,000/s", "0.60 of floor", ">= 0.60", True),
        Row("upload -> receiver 300 ms", "1", "9.00", "40,000/s", "0.80", ">= 0.90", False),
    ]
    text = markdown(rows, ["a note"], "python -m bench.run --quick")
    assert "Command: `python -m bench.run --quick`" in text
    for key in ("- CPU:", "- cores:", "- Python:", "- OS:", "- date:"):
        assert key in text
    assert "| best dry run, actions |  |  | 240,000/s | 0.60 of floor | >= 0.60 | yes |" in text
    assert "| upload -> receiver 300 ms | 1 | 9.00 | 40,000/s | 0.80 | >= 0.90 | NO |" in text
    assert "- a note" in text


def test_the_deletions_bound_counts_three_requests_at_once() -> None:
    """7 deletion requests at 300 ms: 3 + 3 + 1 rounds, at least 0.9 s."""
    from bench.run import _deletions_bound

    assert "7 deletion requests" in _deletions_bound({"requests_by_endpoint": {"delete": 7}}, 300)
    assert "at least 0.9s" in _deletions_bound({"requests_by_endpoint": {"delete": 7}}, 300)
    assert _deletions_bound({"requests_by_endpoint": {"upload": 9}}, 300) == ""


def test_dedupe_pairs_alternate_which_run_goes_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The cost of dedupe is a median of pairs, and which of a pair runs first takes
    turns (ABBA): on a shared machine the first of two runs back to back was measured to
    move the ratio as much as the code did."""
    started: list[bool] = []

    def child(command: list[str], timeout: float) -> ChildRun:
        on = "--no-dedupe" not in command
        started.append(on)
        seconds = 1.1 if on else 1.0  # dedupe costs a tenth more time
        return ChildRun(seconds, seconds, 1, 1 << 20, 1, 0, b"{}", b"")

    monkeypatch.setattr(bench_run, "run_child", child)
    monkeypatch.setattr(bench_run, "has_option", lambda program, option: True)
    bench = bench_run.Bench(parse_args([]), Console(file=io.StringIO()))
    export = bench_run.Dataset(tmp_path / "export.ndjson", 1000, {})
    bench.dedupe_cost("ctsync", export, [1])
    assert len(started) == 2 * bench_run.DEDUPE_PAIRS >= 24
    pairs = [started[i : i + 2] for i in range(0, len(started), 2)]
    assert all(sorted(pair) == [False, True] for pair in pairs)
    assert [pair[0] for pair in pairs[:4]] == [True, False, True, False]
    (row,) = bench.rows
    assert row.ratio.startswith("0.91 of --no-dedupe") and row.met is True


def test_children_write_and_read_bytecode_as_an_installed_program_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With PYTHONDONTWRITEBYTECODE inherited, every measured process compiled every
    # module of ctsync again: start-up a user never pays (pip compiles at install).
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    env = child_env(CLEVERTAP_PASSCODE="x")
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert (env["SOMETHING_ELSE"], env["CLEVERTAP_PASSCODE"]) == ("kept", "x")
    child = run_child(
        [sys.executable, "-c", "import sys; print(sys.flags.dont_write_bytecode)"], timeout=30
    )
    assert child.stdout.strip() == b"0"
