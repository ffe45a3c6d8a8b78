"""How a sandbox is configured: CleverTap's limits, and the faults to inject."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    """Everything a sandbox needs to start.

    `port=0` (the default here, unlike the CLI's 8787) binds an ephemeral port, which is
    what tests want. `db=None` keeps the data in memory. `fault_rate` and `drop_rate` are
    shares of `/1/` requests (0..1, together at most 1) answered 429/500/503 or dropped
    without an answer; neither stores anything. `seed` makes the choice reproducible.
    """

    host: str = DEFAULT_HOST
    port: int = 0
    account_id: str = DEFAULT_ACCOUNT_ID
    passcode: str = DEFAULT_PASSCODE
    db: Path | None = None
    latency_ms: int = 0
    fault_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS
    max_concurrent_deletes: int = MAX_CONCURRENT_DELETES

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative, not {self.latency_ms}")
        for name in ("fault_rate", "drop_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate}")
        if self.fault_rate + self.drop_rate > 1.0:
            raise ValueError("fault_rate + drop_rate must not exceed 1")
        if self.max_concurrent_uploads < 1 or self.max_concurrent_deletes < 1:
            raise ValueError("concurrency limits must be at least 1")

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
            str(self.latency_ms),
            "--fault-rate",
            repr(self.fault_rate),
            "--drop-rate",
            repr(self.drop_rate),
            "--seed",
            str(self.seed),
            "--max-concurrent-uploads",
            str(self.max_concurrent_uploads),
            "--max-concurrent-deletes",
            str(self.max_concurrent_deletes),
        ]
        if self.db is not None:
            args += ["--db", str(self.db)]
        return args
