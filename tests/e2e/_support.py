"""Helpers for end-to-end tests: build Segment exports, run the real `ctsync` command as a
subprocess against a sandbox on 127.0.0.1, and read what it printed and wrote."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ctsync.sandbox import DEFAULT_ACCOUNT_ID, DEFAULT_PASSCODE

TS = "2024-05-01T12:00:00Z"
RUN_TIMEOUT = 60.0  # seconds for one ctsync run; every run in these tests takes far less
IN_FLIGHT_NOTE = re.compile(
    r"([\d,]+) records were on the wire when an earlier run stopped and were sent again"
)
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

Message = dict[str, Any]


# -- Segment messages ----------------------------------------------------------------


_IDENTIFIES = itertools.count()


def identify(user: str, **traits: Any) -> Message:
    """A new identify: its own messageId, as Segment gives every message (ctsync skips
    a second message with the same messageId as a duplicate)."""
    return {
        "type": "identify",
        "userId": user,
        "messageId": f"id-{user}-{next(_IDENTIFIES)}",
        "timestamp": TS,
        "traits": traits,
    }


def track(user: str | None, event: str, seq: int, **properties: Any) -> Message:
    message: Message = {
        "type": "track",
        "event": event,
        "messageId": f"tr-{seq}",
        "timestamp": TS,
        "properties": {"seq": seq, **properties},
    }
    if user is not None:
        message["userId"] = user
    return message


def delete_user(user: str) -> Message:
    return {"type": "track", "event": "Delete User", "userId": user, "timestamp": TS}


def ndjson_line(message: Message) -> bytes:
    return orjson.dumps(message)


def write_export(path: Path, lines: Iterable[bytes | Message]) -> list[bytes]:
    """Write NDJSON (one line per message; bytes are written as given). Returns the lines,
    without their line ends, so line N of the file is `lines[N - 1]`."""
    raw = [line if isinstance(line, bytes) else ndjson_line(line) for line in lines]
    path.write_bytes(b"".join(line + b"\n" for line in raw))
    return raw


# -- running ctsync ------------------------------------------------------------------


def ctsync_env(
    account_id: str = DEFAULT_ACCOUNT_ID, passcode: str = DEFAULT_PASSCODE
) -> dict[str, str]:
    """The environment for a ctsync run: credentials from variables, nothing else of
    CleverTap's inherited, and no proxy (every request must stay on loopback)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CLEVERTAP_") and key.lower() not in _PROXY_VARIABLES
    }
    env.update(
        CLEVERTAP_ACCOUNT_ID=account_id,
        CLEVERTAP_PASSCODE=passcode,
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    return env


def upload_command(url: str, *args: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ctsync",
        "upload",
        "--endpoint",
        url,
        "--json",
        "--no-progress",
        *map(str, args),
    ]


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished ctsync run: exit code, output, and the `--json` summary if it printed one."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def summary(self) -> dict[str, Any]:
        lines = self.stdout.strip().splitlines()
        assert lines, f"no summary on stdout; exit {self.returncode}, stderr:\n{self.stderr}"
        value = orjson.loads(lines[-1])
        assert isinstance(value, dict)
        return value

    def describe(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def run_upload(
    url: str,
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Finished:
    """Run `ctsync upload --endpoint URL --json ARGS` to its end (killed after `timeout`)."""
    started = time.monotonic()
    done = subprocess.run(
        upload_command(url, *args),
        env=dict(env) if env is not None else ctsync_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


class Processes:
    """ctsync runs started in the background; whatever is still running at the end of
    the test is killed (see the `processes` fixture)."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[str]] = []

    def start_upload(
        self, url: str, *args: str | Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            upload_command(url, *args),
            env=dict(env) if env is not None else ctsync_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._started.append(process)
        return process

    def kill_all(self) -> None:
        for process in self._started:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                process.communicate(timeout=10)


def finish(process: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> Finished:
    """Wait for a background run to end (killing it after `timeout`)."""
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"ctsync ran longer than {timeout} s:\n{stderr}") from None
    return Finished(process.returncode, stdout, stderr, time.monotonic() - started)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# -- reading results -----------------------------------------------------------------


def assert_adds_up(summary: Mapping[str, Any]) -> None:
    """read = skipped + invalid + accepted + rejected + failed, and each count equals the
    total of its breakdown by code or reason."""
    parts = ("skipped", "invalid", "accepted", "rejected", "failed")
    assert summary["read"] == sum(summary[p] for p in parts), summary
    for part in ("skipped", "invalid", "rejected", "failed"):
        key = "skipped_by_reason" if part == "skipped" else f"{part}_by_code"
        assert sum(summary[key].values()) == summary[part], (part, summary)


def in_flight_noted(summary: Mapping[str, Any]) -> int:
    """How many records a resumed run's notes say it sent again, having been on the wire
    when the last run stopped."""
    return sum(
        int(match.group(1).replace(",", ""))
        for note in summary["notes"]
        for match in [IN_FLIGHT_NOTE.search(note)]
        if match is not None
    )


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def dead_letters(path: Path) -> list[bytes]:
    """The lines of a `--failed` file, without their line ends."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "every dead letter ends its line"
    return data.splitlines()


def duplicates(counts: Counter[int]) -> int:
    """Stored copies beyond the first."""
    return sum(n - 1 for n in counts.values() if n > 1)


def seqs_of(events: Sequence[Any]) -> Counter[int]:
    """How many times each input `seq` was stored (events carry it in evtData)."""
    return Counter(int(event.evt_data["seq"]) for event in events)
