"""Running a sandbox as a separate process, as `make demo` and end-to-end tests do."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx

from ._config import SandboxConfig
from ._stats import SandboxStats

LISTENING_PREFIX = "ctsync sandbox listening on "
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class SandboxProcess:
    """A sandbox in a child process, reachable at `url`."""

    url: str
    process: subprocess.Popen[str]
    config: SandboxConfig = field(default_factory=SandboxConfig)

    def stats(self) -> SandboxStats:
        """Fetch `GET /_sandbox/stats` (with the sandbox's credentials)."""
        response = httpx.get(
            f"{self.url}/_sandbox/stats", headers=self.config.credentials, timeout=10.0
        )
        response.raise_for_status()
        return SandboxStats.from_json(response.json())


def read_listening_url(line: str) -> str:
    """The URL in the sandbox's start line, `ctsync sandbox listening on http://...`."""
    if not line.startswith(LISTENING_PREFIX):
        raise ValueError(f"not a sandbox start line: {line!r}")
    return line[len(LISTENING_PREFIX) :].strip()


@contextlib.contextmanager
def sandbox_process(
    config: SandboxConfig | None = None, *, command: Sequence[str] | None = None
) -> Iterator[SandboxProcess]:
    """Start `python -m ctsync.sandbox` with `config`, wait for its URL, stop it on exit.

    `command` replaces the program (default: this interpreter with `-m ctsync.sandbox`),
    e.g. `["ctsync", "sandbox"]` once the main CLI mounts the sandbox.
    """
    config = config or SandboxConfig()
    program = list(command) if command is not None else [sys.executable, "-m", "ctsync.sandbox"]
    process = subprocess.Popen(
        [*program, *config.to_cli_args()],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = read_listening_url(_first_line(process))
        yield SandboxProcess(url, process, config)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _first_line(process: subprocess.Popen[str]) -> str:
    """The child's first line of output, waiting at most START_TIMEOUT_SECONDS."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = process.stdout.readline()
                if not line:
                    break
                return line
            if process.poll() is not None:
                break
    raise RuntimeError(f"the sandbox did not start (exit code {process.poll()})")
