"""Where and how to reach CleverTap: regions, credentials and client limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ctsync.errors import UsageError

MAX_UPLOAD_BATCH = 1000  # records per POST /1/upload
MAX_DELETE_BATCH = 100  # identities per POST /1/delete/profiles.json
MAX_TOKENS_PER_UPLOAD = 100  # token records per upload request
MAX_UPLOAD_CONCURRENCY = 15  # CleverTap's per-account limit for uploads
MAX_DELETE_CONCURRENCY = 3  # and for deletes


class Region(StrEnum):
    """CleverTap's data centres; the region is fixed per account."""

    EU1 = "eu1"
    IN1 = "in1"
    US1 = "us1"
    SG1 = "sg1"
    APS3 = "aps3"
    MEC1 = "mec1"
    SK1 = "sk1"

    @property
    def base_url(self) -> str:
        return f"https://{self.value}.api.clevertap.com"


class Secret:
    """A passcode that never shows in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter for 429, 5xx, timeouts and lost connections."""

    max_retries: int = 5
    base_delay: float = 0.5  # seconds before the first retry, doubled each time
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After is capped to this


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """Everything the HTTP client needs."""

    account_id: str
    passcode: Secret
    base_url: str
    concurrency: int = 10
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def upload_concurrency(self) -> int:
        return max(1, min(self.concurrency, MAX_UPLOAD_CONCURRENCY))

    @property
    def delete_concurrency(self) -> int:
        return max(1, min(self.concurrency, MAX_DELETE_CONCURRENCY))


def resolve_base_url(region: Region, endpoint: str | None) -> str:
    """The base URL: `--endpoint` when given (proxies, the sandbox), else the region's host."""
    if endpoint:
        endpoint = endpoint.strip().rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise UsageError(
                f"--endpoint {endpoint!r} is not a URL: give a full base URL such as "
                "http://127.0.0.1:8787"
            )
        return endpoint
    return region.base_url
