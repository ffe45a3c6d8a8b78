"""Where and how to reach CleverTap: regions, credentials and client limits."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ctsync import redact
from ctsync.concurrency import AUTO, Concurrency
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

    @classmethod
    def _missing_(cls, value: object) -> Region | None:
        # `IN1` as the dashboard's docs sometimes spell it is `in1`.
        if isinstance(value, str):
            lowered = value.strip().lower()
            for region in cls:
                if region.value == lowered:
                    return region
        return None


def parse_region(value: str) -> Region:
    """The region `value` names, in any case; a ValueError otherwise, which suggests the
    nearest region (`in` -> in1) and lists them all."""
    region = Region._missing_(value)
    if region is not None:
        return region
    names = [r.value for r in Region]
    typed = value.strip().lower()
    nearest = [n for n in names if typed and n.startswith(typed)] or difflib.get_close_matches(
        typed, names, n=1, cutoff=0.5
    )
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    raise ValueError(f"{value!r} is not a CleverTap region ({', '.join(names)}){hint}")


class Secret:
    """A passcode that never shows in repr, str, logs or tracebacks.

    Made from text as read (the environment, a file, the command line): surrounding
    whitespace and a final newline are dropped, as `$(cat file)` of a CRLF file or an
    editor's newline would add them; anything else that cannot go in an HTTP header
    (a control character, a non-ASCII character) is a UsageError naming `source`, never
    the value. Every Secret is registered for redaction (`ctsync.redact`)."""

    __slots__ = ("_value",)

    def __init__(self, value: str, *, source: str = "the passcode") -> None:
        value = value.strip()
        problem = header_value_problem(value)
        if problem:
            raise UsageError(f"{source}: the passcode {problem}")
        self._value = value
        redact.register(value)

    @classmethod
    def from_file(cls, path: Path) -> Secret:
        """The passcode held in `path` (UTF-8 text; whitespace around it is dropped)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the passcode file ({exc.strerror})") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise UsageError(
                f"{path}: the passcode file is not UTF-8 text; a CleverTap passcode is "
                "ASCII letters, digits and dashes: copy it again from the dashboard"
            ) from None
        return cls(text, source=str(path))

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def header_value_problem(value: str) -> str:
    """Why `value` cannot be sent as an HTTP header value, or "" when it can. Says what
    kind of character is wrong, never the value (it may be a secret)."""
    if not value:
        return "is empty"
    for char in value:
        if char == "\t" or ord(char) < 0x20 or ord(char) == 0x7F:
            return (
                "contains a control character (a tab, a line break or similar); "
                "copy it again from the dashboard, or fix where it is set"
            )
        if ord(char) > 0x7E:
            return (
                "contains a non-ASCII character, which cannot be sent in an HTTP header; "
                "copy it again from the dashboard"
            )
    return ""


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
    concurrency: Concurrency = AUTO  # requests in flight: a number, or adaptive
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def adaptive(self) -> bool:
        """`auto`: start at CleverTap's limits, halve on 429, grow back (concurrency.py)."""
        return self.concurrency == AUTO

    @property
    def upload_concurrency(self) -> int:
        """Upload requests in flight at most (where `auto` starts)."""
        return upload_lanes(self.concurrency)

    @property
    def delete_concurrency(self) -> int:
        """Delete requests in flight at most (where `auto` starts)."""
        return delete_lanes(self.concurrency)


def upload_lanes(concurrency: Concurrency) -> int:
    """Upload requests that may be in flight, and so the lanes of an upload run: `auto`
    starts at CleverTap's 15 (the adaptive limit then decides how many send at a time);
    a number is kept within 1..15."""
    if concurrency == AUTO:
        return MAX_UPLOAD_CONCURRENCY
    return max(1, min(concurrency, MAX_UPLOAD_CONCURRENCY))


def delete_lanes(concurrency: Concurrency) -> int:
    """Delete requests that may be in flight: `auto` and any number above it, 3."""
    if concurrency == AUTO:
        return MAX_DELETE_CONCURRENCY
    return max(1, min(concurrency, MAX_DELETE_CONCURRENCY))


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
