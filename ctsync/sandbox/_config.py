"""How a sandbox is configured: CleverTap's limits, and the faults to inject."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_CLI_PORT = 8787
DEFAULT_ACCOUNT_ID = "sandbox"
DEFAULT_PASSCODE = "sandbox"

# CleverTap's documented limits (docs/clevertap-api.md).
MAX_RECORDS_PER_UPLOAD = 1000
MAX_TOKENS_PER_UPLOAD = 100
MAX_IDS_PER_DELETE = 100
MAX_CONCURRENT_UPLOADS = 15
MAX_CONCURRENT_DELETES = 3

Latency = int | tuple[int, int]
"""Milliseconds before answering: a fixed number, or (low, high) drawn uniformly."""

_LATENCY_PATTERN = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
_RATES = ("fault_rate", "drop_rate", "store_then_fail_rate", "store_then_drop_rate")


def parse_latency(text: str) -> Latency:
    """`"20"` -> 20, `"20-400"` -> (20, 400); ValueError for anything else."""
    match = _LATENCY_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"latency must be milliseconds (20) or a range (20-400), not {text!r}")
    low, high = match.groups()
    return int(low) if high is None else (int(low), int(high))


def format_latency(latency: Latency) -> str:
    """The `--latency-ms` text that `parse_latency` reads back as `latency`."""
    return str(latency) if isinstance(latency, int) else f"{latency[0]}-{latency[1]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    """Everything a sandbox needs to start.

    `port=0` (the default here, unlike the CLI's 8787) binds an ephemeral port, which is
    what tests want. `db=None` keeps the data in memory. `latency_ms` delays each `/1/`
    answer: a fixed number of milliseconds, or `(low, high)` for a delay drawn uniformly
    per request, so that requests overtake each other.

    Faults, as shares of `/1/` requests (each 0..1, together at most 1):
    - `fault_rate`: answered 429, 500 or 503 without storing anything;
    - `drop_rate`: the connection dropped without an answer, nothing stored;
    - `store_then_fail_rate`: stored, then answered 500 or 504 (a gateway that timed out
      while CleverTap did the work);
    - `store_then_drop_rate`: stored, then the connection dropped without an answer.

    `seed` makes the fault and latency draws reproducible.

    `sink`: answer like CleverTap (auth, limits, latency, faults, every record processed)
    without checking the records or storing anything: a lean receiver for benchmarks,
    which leaves the CPU to the client being measured.
    """

    host: str = DEFAULT_HOST
    port: int = 0
    account_id: str = DEFAULT_ACCOUNT_ID
    passcode: str = DEFAULT_PASSCODE
    db: Path | None = None
    latency_ms: Latency = 0
    fault_rate: float = 0.0
    drop_rate: float = 0.0
    store_then_fail_rate: float = 0.0
    store_then_drop_rate: float = 0.0
    seed: int = 0
    max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS
    max_concurrent_deletes: int = MAX_CONCURRENT_DELETES
    sink: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        low, high = self.latency_range
        if low < 0 or high < low:
            raise ValueError(
                f"latency_ms must be 0 or more, a range low to high, not {self.latency_ms}"
            )
        for name in _RATES:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate}")
        if sum(getattr(self, name) for name in _RATES) > 1.0:
            raise ValueError(f"{' + '.join(_RATES)} must not exceed 1")
        if self.max_concurrent_uploads < 1 or self.max_concurrent_deletes < 1:
            raise ValueError("concurrency limits must be at least 1")

    @property
    def credentials(self) -> dict[str, str]:
        """The headers every request needs, to `/_sandbox/...` as to the API."""
        return {"X-CleverTap-Account-Id": self.account_id, "X-CleverTap-Passcode": self.passcode}

    @property
    def latency_range(self) -> tuple[int, int]:
        """The latency as (low, high) milliseconds; equal for a fixed latency."""
        latency = self.latency_ms
        return (latency, latency) if isinstance(latency, int) else latency

    def to_cli_args(self) -> list[str]:
        """The `ctsync sandbox` options that start a server with this configuration."""
        args = [
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--account-id",
            self.account_id,
            "--passcode",
            self.passcode,
            "--latency-ms",
            format_latency(self.latency_ms),
            "--fault-rate",
            repr(self.fault_rate),
            "--drop-rate",
            repr(self.drop_rate),
            "--store-then-fail-rate",
            repr(self.store_then_fail_rate),
            "--store-then-drop-rate",
            repr(self.store_then_drop_rate),
            "--seed",
            str(self.seed),
            "--max-concurrent-uploads",
            str(self.max_concurrent_uploads),
            "--max-concurrent-deletes",
            str(self.max_concurrent_deletes),
        ]
        if self.db is not None:
            args += ["--db", str(self.db)]
        if self.sink:
            args.append("--sink")
        return args
