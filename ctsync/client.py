"""The CleverTap HTTP client: one keep-alive connection pool, bounded concurrency,
careful retries, and per-record verdicts read from CleverTap's answers.

Retry policy (clevertap-api.md):
- connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
  jitter (`Retry-After` honoured), up to `max_retries` times;
- 400/401/403/404 and per-record rejections are never retried, except code 555 (a
  transient server error for one record), which is retried once;
- a connection lost *after* the request was sent leaves the outcome unknown. CleverTap
  never deduplicates events, so such a batch is re-sent only if every record in it is
  safe to repeat (profile upserts without `$incr`/`$decr`/`$add`, tokens, deletions);
  otherwise its records fail with code `outcome-unknown` and are never sent twice.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import httpx
import orjson

from ctsync import __version__
from ctsync.errors import AuthError
from ctsync.ledger import ACCEPTED, Verdict
from ctsync.records import CleverTapRecord, DeleteKey, Outcome, Stage
from ctsync.settings import ClientSettings

UPLOAD_PATH = "/1/upload"
DELETE_PATH = "/1/delete/profiles.json"
RETRY_ONCE_CODES = frozenset({"555"})
NON_IDEMPOTENT_OPERATORS = frozenset({"$incr", "$decr", "$add"})

_RECORD_NUMBER = re.compile(r"\s*Skipped record number\s*:\s*(\d+)\s*\.?\s*$")


# -- classifying CleverTap's answers -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answered:
    """HTTP 200 with a JSON object: read per-record results from it."""

    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Retry:
    """Worth another try: 429, 5xx. `after` is the server's Retry-After, in seconds."""

    reason: Verdict
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The whole request failed for good (400, 403, 404, an unreadable answer)."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """401: the account ID, passcode or region is wrong; the run must stop."""

    error: str


Classified = Answered | Retry | Refused | Unauthorized


def classify(status: int, content: bytes, retry_after: str | None = None) -> Classified:
    """The one place that decides what an HTTP answer from CleverTap means."""
    body = _json_object(content)
    error = _error_text(body, content)
    if status == 401:
        return Unauthorized(error)
    if status == 429 or status >= 500:
        return Retry(
            Verdict(Outcome.FAILED, str(status), f"HTTP {status}: {error}", Stage.API),
            _retry_after_seconds(retry_after),
        )
    if status != 200:
        return Refused(Verdict(Outcome.FAILED, str(status), f"HTTP {status}: {error}", Stage.API))
    if body is None:
        # Processed or not, we cannot tell: never resend.
        return Refused(
            Verdict(
                Outcome.FAILED,
                "unreadable-answer",
                f"HTTP 200 with a body that is not a JSON object: {error}",
                Stage.API,
            )
        )
    return Answered(body)


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _error_text(body: dict[str, Any] | None, content: bytes) -> str:
    if body is not None and body.get("error"):
        return str(body["error"])
    text = content[:200].decode("utf-8", "replace").strip()
    return text or "(empty answer)"


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def upload_verdicts(body: dict[str, Any], records: Sequence[CleverTapRecord]) -> list[Verdict]:
    """Per-record verdicts from an upload's HTTP 200 answer.

    `unprocessed` entries name their record as "Skipped record number : N" (1-based in
    the request's `d`); failing that, by the identity in `record` (a JSON string or an
    object). A top-level `"status": "fail"` fails every record it does not reject
    individually. If `processed` does not add up with what was rejected, the records
    not named are not confirmed: they fail (code `unconfirmed`) rather than being
    counted as stored.
    """
    n = len(records)
    verdicts: list[Verdict] = [ACCEPTED] * n
    entries = body.get("unprocessed")
    entries = entries if isinstance(entries, list) else []
    named = 0
    unmatched = 0
    for entry in entries:
        if not isinstance(entry, dict):
            unmatched += 1
            continue
        text = str(entry.get("error", "rejected"))
        match = _RECORD_NUMBER.search(text)
        index: int | None = None
        if match:
            index = int(match.group(1)) - 1
            text = text[: match.start()].strip() or text
        else:
            index = _find_record(entry.get("record"), records, verdicts)
        if index is None or not 0 <= index < n or verdicts[index] is not ACCEPTED:
            unmatched += 1
            continue
        code = str(entry.get("code", "rejected"))
        verdicts[index] = Verdict(Outcome.REJECTED, code, text, Stage.API)
        named += 1
    if body.get("status") == "fail":
        failure = Verdict(
            Outcome.FAILED,
            str(body.get("code", "fail")),
            f"CleverTap failed the batch: {_error_text(body, b'')}",
            Stage.API,
        )
        return [failure if v is ACCEPTED else v for v in verdicts]
    processed = body.get("processed")
    if unmatched or (isinstance(processed, int) and processed != n - named):
        unconfirmed = Verdict(
            Outcome.FAILED,
            "unconfirmed",
            f"CleverTap's answer does not add up (processed={processed}, unprocessed="
            f"{len(entries)}, sent={n}); these records may or may not have been stored",
            Stage.API,
        )
        return [unconfirmed if v is ACCEPTED else v for v in verdicts]
    return verdicts


def _find_record(
    record: Any, records: Sequence[CleverTapRecord], verdicts: list[Verdict]
) -> int | None:
    if isinstance(record, str):
        record = _json_object(record.encode())
    if not isinstance(record, dict):
        return None
    for key in ("identity", "objectId"):
        value = record.get(key)
        if value is None:
            continue
        for i, candidate in enumerate(records):
            if verdicts[i] is ACCEPTED and candidate.get(key) == value:
                return i
    return None


def is_idempotent(record: CleverTapRecord) -> bool:
    """Whether sending `record` twice leaves CleverTap as sending it once."""
    kind = record.get("type")
    if kind == "token":
        return True
    if kind != "profile":
        return False
    data = record.get("profileData")
    if not isinstance(data, dict):
        return True
    return not any(
        isinstance(v, dict) and not NON_IDEMPOTENT_OPERATORS.isdisjoint(v) for v in data.values()
    )


def _all_idempotent(records: Sequence[CleverTapRecord]) -> bool:
    return all(map(is_idempotent, records))


# Lost after the request left: the server may have processed it.
_AMBIGUOUS = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


def _describe(exc: httpx.TransportError) -> str:
    detail = str(exc) or "no detail"
    return f"{exc.__class__.__name__}: {detail}"


# -- the client ---------------------------------------------------------------------


class CleverTapClient:
    """Sends upload and delete requests. Use as `async with CleverTapClient(settings)`.

    `transport` lets tests and the sandbox swap the network; `sleep` and `jitter` make
    backoff testable.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._sleep = sleep
        self._jitter = jitter
        self._http: httpx.AsyncClient | None = None
        self._upload_slots = asyncio.Semaphore(settings.upload_concurrency)
        self._delete_slots = asyncio.Semaphore(settings.delete_concurrency)
        self.requests = 0
        self.retries = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    async def __aenter__(self) -> CleverTapClient:
        settings = self.settings
        pool = settings.upload_concurrency + settings.delete_concurrency
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={
                "X-CleverTap-Account-Id": settings.account_id,
                "X-CleverTap-Passcode": settings.passcode.reveal(),
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": f"ctsync/{__version__}",
            },
            timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=self._transport,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def upload(self, records: Sequence[CleverTapRecord]) -> list[Verdict]:
        """Send up to 1000 records; one verdict per record, in order."""
        verdicts: list[Verdict] = [ACCEPTED] * len(records)
        todo = list(range(len(records)))
        retried_once: set[int] = set()
        while todo:
            batch = [records[i] for i in todo]
            answer = await self._exchange(
                UPLOAD_PATH,
                orjson.dumps({"d": batch}),
                self._upload_slots,
                functools.partial(_all_idempotent, batch),
            )
            if isinstance(answer, Verdict):
                for i in todo:
                    verdicts[i] = answer
                break
            again = []
            for i, verdict in zip(todo, upload_verdicts(answer, batch), strict=True):
                verdicts[i] = verdict
                if verdict.code in RETRY_ONCE_CODES and i not in retried_once:
                    retried_once.add(i)
                    again.append(i)
            todo = again
        return verdicts

    async def delete(self, key: DeleteKey, values: Sequence[str]) -> list[Verdict]:
        """Delete up to 100 profiles by identity or CleverTap ID (guid)."""
        body = orjson.dumps({key: list(values)})
        answer = await self._exchange(DELETE_PATH, body, self._delete_slots, lambda: True)
        if isinstance(answer, Verdict):
            return [answer] * len(values)
        if answer.get("status") == "fail":
            failure = Verdict(
                Outcome.FAILED, str(answer.get("code", "fail")), _error_text(answer, b""), Stage.API
            )
            return [failure] * len(values)
        return [ACCEPTED] * len(values)

    async def _exchange(
        self,
        path: str,
        body: bytes,
        slots: asyncio.Semaphore,
        idempotent: Callable[[], bool],
    ) -> dict[str, Any] | Verdict:
        """POST until CleverTap answers for good: the JSON body of an HTTP 200, or one
        verdict for the whole request. Raises AuthError on 401. `idempotent` (asked only
        when a connection is lost after sending) says whether sending again is safe."""
        attempt = 0
        while True:
            try:
                response = await self._post(path, body, slots)
            except httpx.TransportError as exc:
                if isinstance(exc, _AMBIGUOUS) and not idempotent():
                    return Verdict(
                        Outcome.FAILED,
                        "outcome-unknown",
                        f"{_describe(exc)} after the request was sent; CleverTap may have "
                        "stored these records, so they were not re-sent (events would duplicate)",
                        Stage.TRANSPORT,
                    )
                reason = Verdict(
                    Outcome.FAILED, exc.__class__.__name__, _describe(exc), Stage.TRANSPORT
                )
                after = None
            else:
                answer = classify(
                    response.status_code, response.content, response.headers.get("Retry-After")
                )
                if isinstance(answer, Answered):
                    return answer.body
                if isinstance(answer, Refused):
                    return answer.verdict
                if isinstance(answer, Unauthorized):
                    raise AuthError(self._auth_message(answer.error))
                reason, after = answer.reason, answer.after
            if attempt >= self.settings.retry.max_retries:
                return Verdict(
                    reason.outcome,
                    reason.code,
                    f"{reason.message} (gave up after {attempt + 1} attempts)",
                    reason.stage,
                )
            await self._sleep(self._backoff(attempt, after))
            attempt += 1
            self.retries += 1

    async def _post(self, path: str, body: bytes, slots: asyncio.Semaphore) -> httpx.Response:
        assert self._http is not None, "use CleverTapClient as an async context manager"
        async with slots:
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                return await self._http.post(path, content=body)
            finally:
                self.in_flight -= 1

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        policy = self.settings.retry
        if retry_after is not None:
            return min(retry_after, policy.max_retry_after)
        ceiling = min(policy.max_delay, policy.base_delay * 2.0**attempt)
        return ceiling / 2 + self._jitter() * ceiling / 2

    def _auth_message(self, error: str) -> str:
        return (
            f"CleverTap refused the credentials (HTTP 401: {error}) at {self.settings.base_url}. "
            f"Check the account ID ({self.settings.account_id}), the passcode, and the region: "
            "a wrong region also answers 401 (the region shows in your dashboard URL, "
            "e.g. in1.dashboard.clevertap.com -> --region in1)."
        )
