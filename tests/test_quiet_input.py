"""An input that falls quiet while it stays open (a pipe whose writer pauses, a person
typing, a named pipe): what was read goes out meanwhile, not when the next line comes.

Before: `sys.stdin.buffer.read(65536)` waited for 64 KiB or the end of the pipe, and the
run's event loop waited inside that read, so two lines written and then a pause reached
CleverTap only when the writer closed the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ctsync.run import feed
from ctsync.run.feed import Stepper
from ctsync.sandbox import running_sandbox
from tests.helpers import clean_env

GUARD_SECONDS = 30  # a guard against a hang, not a measure


def lines(users: range) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "type": "identify",
                "userId": f"u{n}",
                "messageId": f"m{n}",
                "timestamp": "2024-05-01T00:00:00.000Z",
                "traits": {"name": f"User {n}"},
            }
        )
        + b"\n"
        for n in users
    )


@contextlib.contextmanager
def upload_from(
    source: str, *extra: str, stdin: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """`ctsync upload SOURCE --json EXTRA` against a sandbox; killed at the end if still
    running."""
    with running_sandbox() as sandbox:
        env = clean_env(CLEVERTAP_ACCOUNT_ID="sandbox", CLEVERTAP_PASSCODE="sandbox", NO_PROXY="*")
        env.update(CTSYNC_WORKER_BLOCK_BYTES="4096", CTSYNC_WORKER_START_AFTER="0")
        process = subprocess.Popen(
            [sys.executable, "-m", "ctsync", "upload", source, "--endpoint", sandbox.url,
             "--json", *extra],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            yield process, sandbox
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()


def wait_until_stored(sandbox: Any, count: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while sandbox.stats().records_accepted < count:
        assert process.poll() is None, "the run ended while its input was open"
        assert time.monotonic() < deadline, (
            f"{sandbox.stats().records_accepted} of {count} records reached CleverTap "
            "while the input stayed open"
        )
        time.sleep(0.05)


def wait_until_stopping(process: subprocess.Popen[bytes]) -> None:
    """Until the run says it heard SIGTERM ("ctsync: stopping (SIGTERM)" on stderr). A
    test that closes the pipe right after the signal raced: when the end of the input
    reached the run first, it finished (exit 0) before the signal was handled."""
    assert process.stderr is not None
    said = b""
    deadline = time.monotonic() + GUARD_SECONDS
    while b"stopping (SIGTERM)" not in said:
        left = deadline - time.monotonic()
        assert left > 0, f"the run did not say it was stopping: {said!r}"
        ready, _, _ = select.select([process.stderr], [], [], left)
        if ready:
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, f"stderr closed before the run said it was stopping: {said!r}"
            said += chunk
    assert b"Traceback" not in said, said


def summary_of(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=GUARD_SECONDS)
    assert "Traceback" not in stderr.decode(), stderr.decode()
    value = orjson.loads(stdout)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("then", ["close", "sigterm", "sigterm, the writer lives on"])
def test_records_from_a_pipe_that_falls_quiet_go_out_while_it_stays_open(
    workers: str, then: str
) -> None:
    # Enough lines for several blocks of the worker processes, a few per profile, far
    # fewer than a request holds: they go out because the pipe is quiet, not full.
    # SIGTERM stops the run with its input thread waiting in a read of the pipe: with
    # the pipe left open, Python aborted at exit ("Fatal Python error:
    # _enter_buffered_busy", exit 134, after the summary: the thread held the lock of
    # sys.stdin's buffer), and a cron job's wrapper saw a crash.
    count = 60
    with upload_from("-", "--workers", workers, stdin=subprocess.PIPE) as (process, sandbox):
        assert process.stdin is not None
        process.stdin.write(lines(range(count)))
        process.stdin.flush()
        wait_until_stored(sandbox, count, process)
        # More after the pause is read as well.
        process.stdin.write(lines(range(count, count + 5)))
        process.stdin.flush()
        wait_until_stored(sandbox, count + 5, process)
        if then != "close":
            process.send_signal(15)
            wait_until_stopping(process)
        if then == "sigterm, the writer lives on":
            process.wait(timeout=GUARD_SECONDS)  # the pipe still open
        summary = summary_of(process)  # closes the pipe
        assert process.returncode == (0 if then == "close" else 143)
        assert sandbox.stats().records_accepted == count + 5  # nothing twice
    assert (summary["read"], summary["accepted"]) == (count + 5, count + 5)
    assert summary["failed"] == summary["invalid"] == summary["skipped"] == 0


def test_a_pipe_another_process_made_non_blocking_is_read_as_it_comes() -> None:
    # A parent that shares the pipe may set it non-blocking (O_NONBLOCK belongs to the
    # open pipe, not to one process): a read then finds nothing yet instead of waiting.
    # It crashed ("object of type 'NoneType' has no len()"); before, it read 0 records
    # and exited 0 as if the pipe were empty.
    read, write = os.pipe()
    os.set_blocking(read, False)
    try:
        with upload_from("-", "--workers", "1", stdin=read) as (process, sandbox):
            os.close(read)
            read = -1
            time.sleep(0.5)  # nothing written yet: ctsync waits, it does not end
            assert process.poll() is None
            os.write(write, lines(range(12)))
            os.close(write)
            write = -1
            summary = summary_of(process)
            assert process.returncode == 0
            assert sandbox.stats().records_accepted == 12
    finally:
        for end in (read, write):
            if end >= 0:
                os.close(end)
    assert (summary["read"], summary["accepted"]) == (12, 12)


def test_a_library_caller_that_read_part_of_stdin_loses_none_of_the_rest() -> None:
    # Bytes already in sys.stdin's buffer belong to the run: a caller may read a header
    # line first. (The CLI reads stdin through a descriptor of its own.)
    script = (
        "import sys\n"
        "sys.stdin.buffer.readline()\n"
        "from ctsync.api import UploadJob, upload\n"
        "print(upload(UploadJob(paths=['-'], client=None, workers=1)).read)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=lines(range(100)), capture_output=True,
        timeout=GUARD_SECONDS, check=True,
    )  # fmt: skip
    assert done.stdout.split()[-1] == b"99"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_steady_trickle_goes_out_every_second_or_so(workers: str) -> None:
    # A line every quarter second: the pipe is never quiet for a second at a time,
    # yet what was read goes out while it is still being written.
    stop = threading.Event()
    with upload_from("-", "--workers", workers, stdin=subprocess.PIPE) as (process, sandbox):
        assert process.stdin is not None
        pipe = process.stdin

        def write() -> None:
            for n in range(120):
                if stop.is_set():
                    return
                pipe.write(lines(range(n, n + 1)))
                pipe.flush()
                time.sleep(0.25)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            wait_until_stored(sandbox, 4, process)
            assert writer.is_alive(), "nothing went out until the writer was done"
        finally:
            stop.set()
            writer.join()
        summary = summary_of(process)
        assert process.returncode == 0
        stored = sandbox.stats().records_accepted
    assert summary["read"] == summary["accepted"] == stored


def test_a_read_that_takes_exactly_what_was_there_does_not_wait_for_more() -> None:
    # 128 lines of 512 bytes: 64 KiB, one read's worth, then a pause.
    padded = []
    for n in range(128):
        line = lines(range(n, n + 1))
        filler = 512 - len(line) - len(b',"pad":""')
        padded.append(line[:-3] + b',"pad":"' + b"x" * filler + b'"}}\n')
    data = b"".join(padded)
    assert len(data) == 65536 and all(len(line) == 512 for line in padded)
    assert all(orjson.loads(line) for line in padded)
    with upload_from("-", stdin=subprocess.PIPE) as (process, sandbox):
        assert process.stdin is not None
        process.stdin.write(data)
        process.stdin.flush()
        wait_until_stored(sandbox, 128, process)
        summary = summary_of(process)
    assert (summary["read"], summary["accepted"]) == (128, 128)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_is_read_as_its_writer_writes(tmp_path: Path) -> None:
    fifo = tmp_path / "events.ndjson"
    os.mkfifo(fifo)
    with upload_from(str(fifo)) as (process, sandbox):
        with open(fifo, "wb", buffering=0) as writer:  # opens once ctsync opens its end
            writer.write(lines(range(3)))
            wait_until_stored(sandbox, 3, process)
        summary = summary_of(process)
    assert process.returncode == 0
    assert (summary["read"], summary["accepted"]) == (3, 3)


def test_a_file_before_a_silent_stdin_goes_out_while_stdin_waits(tmp_path: Path) -> None:
    # `ctsync upload a.ndjson -`: the file's records do not wait for stdin's first byte.
    first = tmp_path / "a.ndjson"
    first.write_bytes(lines(range(20)))
    with upload_from(str(first), "-", stdin=subprocess.PIPE) as (process, sandbox):
        assert process.stdin is not None
        wait_until_stored(sandbox, 20, process)
        process.stdin.write(lines(range(20, 25)))
        summary = summary_of(process)  # closes the pipe
        assert sandbox.stats().records_accepted == 25
    assert process.returncode == 0
    assert (summary["read"], summary["accepted"]) == (25, 25)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_without_a_writer_holds_nothing_back_and_hears_sigterm(
    tmp_path: Path,
) -> None:
    # Opening a named pipe waits for a writer: the file before it goes out meanwhile,
    # and SIGTERM ends the run (it waited, deaf to signals, inside the open).
    first = tmp_path / "a.ndjson"
    first.write_bytes(lines(range(20)))
    fifo = tmp_path / "later.ndjson"
    os.mkfifo(fifo)
    with upload_from(str(first), str(fifo)) as (process, sandbox):
        wait_until_stored(sandbox, 20, process)
        process.send_signal(15)
        summary = summary_of(process)
    assert process.returncode == 143
    assert (summary["read"], summary["accepted"]) == (20, 20)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_that_ends_at_once_then_one_without_a_writer_hears_sigterm(
    tmp_path: Path,
) -> None:
    # The first pipe's writer writes and closes within a read's grace, so its end is
    # found by a step that then opens the next pipe: that step too must not wait in
    # the event loop's thread (it did, deaf to SIGTERM, now and then).
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    os.mkfifo(first)
    os.mkfifo(second)

    def write() -> None:
        with open(first, "wb", buffering=0) as writer:  # waits for ctsync's end
            writer.write(lines(range(50)))

    writer = threading.Thread(target=write)
    writer.start()
    with upload_from(str(first), str(second), "--workers", "1") as (process, sandbox):
        wait_until_stored(sandbox, 50, process)
        process.send_signal(15)
        summary = summary_of(process)
    writer.join()
    assert process.returncode == 143
    assert (summary["read"], summary["accepted"]) == (50, 50)


def test_a_file_read_on_the_input_thread_is_never_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file read before an input that may wait to open goes through the input thread
    a step at a time; its steps are quick and do not add up to a quiet input (which
    would send its records in partial requests). One step that waits long (the open of
    the input after it) is quiet."""
    monkeypatch.setattr(feed, "QUIET_SECONDS", 0.2)
    monkeypatch.setattr(feed, "WAIT_STEP", 0.01)

    def items() -> Iterator[int]:
        for n in range(40):  # 40 steps of 10 ms: 0.4 s in all
            time.sleep(0.01)
            yield n
        time.sleep(0.5)  # opening the next input waits for its writer
        yield 40

    async def go() -> list[float]:
        loop = asyncio.get_running_loop()
        quiet: list[float] = []
        steps = Stepper(
            items(), lambda: True, on_pipe=lambda: False, quiet=lambda: quiet.append(loop.time())
        )
        for n in range(40):
            assert await steps.next(lambda: False) == n
        assert quiet == []
        assert await steps.next(lambda: False) == 40
        assert len(quiet) >= 1
        return quiet

    asyncio.run(go())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_state_refuses_a_named_pipe_before_reading_it(tmp_path: Path) -> None:
    # Its fingerprint read the pipe's first bytes (lost to the run), then the run
    # waited for a second writer that never came, deaf to SIGTERM.
    fifo = tmp_path / "events.ndjson"
    os.mkfifo(fifo)
    state = tmp_path / "state.db"
    with upload_from(str(fifo), "--state", str(state)) as (process, _):
        _, stderr = process.communicate(timeout=GUARD_SECONDS)  # no writer needed
    assert process.returncode == 2, stderr
    message = stderr.decode()
    assert f"{fifo} is not a regular file" in message and "Traceback" not in message
    assert not state.exists()  # refused before the state file was opened


def test_a_stepper_takes_a_waiting_item_on_its_own_thread_and_says_when_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the next item waits for a writer, the event loop runs other tasks and the
    run takes what it has ready (`meanwhile`, woken by what it gives back); every quiet
    time the run is told, until a step finds its input ready; a stop while waiting ends
    the wait at once, and closing then leaves the generator to its thread."""
    monkeypatch.setattr(feed, "QUIET_SECONDS", 0.05)
    monkeypatch.setattr(feed, "WAIT_STEP", 0.01)
    gate = threading.Event()
    threads: list[str] = []

    def items() -> Iterator[int]:
        for n in range(1, 6):
            threads.append(threading.current_thread().name)
            if n in (2, 4, 5):
                gate.wait(GUARD_SECONDS)  # a quiet writer
                gate.clear()
            yield n

    async def go() -> None:
        loop = asyncio.get_running_loop()
        quiet: list[float] = []
        stopping = False
        slow = {"now": False}
        steps = Stepper(items(), lambda: slow["now"], quiet=lambda: quiet.append(loop.time()))
        assert await steps.next(lambda: stopping) == 1  # here: its input is ready
        ticks = 0

        async def ticking() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(ticking())
        # What the run has to wait for besides the step (a worker's block): done at
        # 0.1 s, after which nothing more.
        block: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.1, block.set_result, None)
        looks: list[float] = []

        async def meanwhile() -> asyncio.Future[Any] | None:
            looks.append(loop.time())
            return None if block.done() else block

        slow["now"] = True
        loop.call_later(0.3, gate.set)
        started = loop.time()
        assert await steps.next(lambda: stopping, meanwhile) == 2
        assert ticks >= 10, "the event loop stood still while the item waited"
        assert any(0.09 <= t - started < 0.2 for t in looks), "not woken by the block"
        assert len(quiet) >= 3  # every 0.05 s of a 0.3 s wait, give or take
        # A step whose input is ready: the input is not quiet; a short wait after it
        # tells nothing.
        slow["now"] = False
        assert await steps.next(lambda: stopping) == 3
        slow["now"] = True
        told = len(quiet)
        loop.call_later(0.02, gate.set)
        assert await steps.next(lambda: stopping) == 4
        assert len(quiet) == told
        # A stop while the writer is quiet: the wait ends, the generator stays waiting.
        stopping = True
        started = loop.time()
        assert await steps.next(lambda: stopping) is None
        assert loop.time() - started < 5
        steps.close()  # no "generator already executing"
        ticker.cancel()
        gate.set()  # lets the thread's step end

    asyncio.run(go())
    assert threads[0] == "MainThread" and threads[1] == "ctsync-input"
