"""The CleverTap HTTP client: one keep-alive connection pool, careful retries, and
per-record verdicts read from CleverTap's answers.

What an answer means is decided in one place, `classify` (clevertap-api.md):

- 429 and 503, an error before the request was written, and 408: CleverTap did not take
  the batch. Retried with exponential backoff and full jitter (`Retry-After` honoured),
  up to `max_retries` times.
- 401: the run stops (wrong account ID, passcode or region). So does a 403, 404 or 405:
  the address or the account refuses the request as a whole (CleverTap answers a
  record's problem inside a 200, and a request of 100 ids to delete cannot be "not found"
  for one of them), so every later request would meet the same.
- 400, other refusals, a top-level `"status": "fail"`, and per-record rejections are
  final, except code 555 (a transient error for one record), retried once.
- After the request body went out, a lost connection, a timeout, a 500, 502 or 504, or a
  200 whose counts do not confirm every record leave it *unknown* whether CleverTap
  stored the records. CleverTap never deduplicates events, so only records that are safe
  to repeat (`resend`) are sent again; the others fail with code `outcome-unknown`.

`--timeout` bounds each attempt as a whole: connecting, sending, and the whole answer.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any

import httpx
import orjson

from ctsync import __version__
from ctsync.concurrency import Limit
from ctsync.errors import AuthError, OutputError
from ctsync.model import ACCEPTED, UNKNOWN, OnWire, Request, Verdict, delete_body, upload_body
from ctsync.prepare import ProfileKey
from ctsync.records import DeleteKey, Outcome, Stage
from ctsync.redact import redact
from ctsync.settings import ClientSettings
from ctsync.summary import ConcurrencyReport

UPLOAD_PATH = "/1/upload"
DELETE_PATH = "/1/delete/profiles.json"
RETRY_ONCE_CODES = frozenset({"555"})
NOT_TAKEN_STATUSES = frozenset({408, 429, 503})  # CleverTap did not take the batch
ERROR_TEXT_CHARS = 200  # of an answer that is not CleverTap's JSON: a proxy's whole page

_RECORD_NUMBER = re.compile(r"\s*Skipped record number\s*:\s*(\d+)\s*\.?\s*$")
# Errors raised before any byte of the request could reach CleverTap.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)

# -- classifying CleverTap's answers -------------------------------------------------


class Next(Enum):
    """What to do with one record after an attempt."""

    DONE = "done"  # its verdict is final
    RETRY = "retry"  # CleverTap did not take it: send it again
    RETRY_ONCE = "retry once"  # code 555: one more try
    UNKNOWN = "unknown"  # CleverTap may have stored it


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt ended: an HTTP answer, or an error and how far the request got."""

    status: int | None = None
    content: bytes = b""
    retry_after: str | None = None
    error: str | None = None  # what went wrong when there is no answer
    body_sent: bool = True  # the whole request was written (or may have been)


# Answers that refuse the address or the account, not a record: the run stops.
STOPPING_STATUSES = frozenset({401, 403, 404, 405})


@dataclass(frozen=True, slots=True)
class Refused:
    """401 (the account ID, passcode or region is wrong), or 403, 404 or 405 (the
    endpoint or the account refuses uploads, or deletions, at `path`): the run must
    stop."""

    status: int
    error: str
    path: str


Step = tuple[Verdict, Next]


def classify(
    attempt: Attempt, path: str, keys: Sequence[ProfileKey | None]
) -> list[Step] | Refused:
    """The one place that decides what an attempt's outcome means, for each record."""
    n = len(keys)
    if attempt.status is None:
        error = attempt.error or "no answer"
        if not attempt.body_sent:
            return [
                (_failed("connection", f"{error} (before the request was sent)"), Next.RETRY)
            ] * n
        # ("Server disconnected without sending a response." ends on its own full stop.)
        said = error[:-1] if error.endswith(".") else error
        return [(_unknown(f"{said} after the request was sent"), Next.UNKNOWN)] * n
    status = attempt.status
    body = _json_object(attempt.content)
    error = _error_text(body, attempt.content)
    if status in STOPPING_STATUSES:
        return Refused(status, error, path)
    if status in NOT_TAKEN_STATUSES:
        return [(_failed(str(status), f"HTTP {status}: {error}", Stage.API), Next.RETRY)] * n
    if status >= 500:
        return [(_unknown(f"HTTP {status} after the request was sent: {error}"), Next.UNKNOWN)] * n
    if status != 200:
        return [(_failed(str(status), f"HTTP {status}: {error}", Stage.API), Next.DONE)] * n
    if body is None:
        return [
            (_unknown(f"HTTP 200 with an answer that is not a JSON object: {error}"), Next.UNKNOWN)
        ] * n
    if body.get("status") == "fail":
        failure = _failed(
            _outside(body.get("code", "fail")), f"CleverTap failed the batch: {error}", Stage.API
        )
        if path == DELETE_PATH:
            return [(failure, Next.DONE)] * n
        return [
            (failure, Next.DONE) if verdict is ACCEPTED else (verdict, Next.DONE)
            for verdict in _named_rejections(body, keys)[0]
        ]
    if path == DELETE_PATH:
        if body.get("status") == "success":
            return [(ACCEPTED, Next.DONE)] * n
        return [(_unknown(f"the answer does not say success: {error}"), Next.UNKNOWN)] * n
    return upload_steps(body, keys)


def all_taken(attempt: Attempt, path: str, n: int) -> bool:
    """Whether `classify` reads this answer to a request of `n` records as every record
    accepted and done: the common answer, then read without a step per record."""
    if attempt.status != 200:
        return False
    body = _json_object(attempt.content)
    if body is None or body.get("status") == "fail":
        return False
    if path == DELETE_PATH:
        return body.get("status") == "success"
    entries = body.get("unprocessed")
    if isinstance(entries, list) and entries:
        return False
    return _count(body.get("processed")) == n


def upload_steps(body: dict[str, Any], keys: Sequence[ProfileKey | None]) -> list[Step]:
    """Per-record steps from an upload's HTTP 200 answer.

    `unprocessed` entries name their record as "Skipped record number : N" (1-based in
    the request's `d`); failing that, by the identity or objectId in `record` (a JSON
    string or an object). `processed` must confirm every record not rejected by name:
    if it does not (missing, not a number, another count), those records are unknown.
    """
    n = len(keys)
    verdicts, named, unmatched = _named_rejections(body, keys)
    processed = _count(body.get("processed"))
    if unmatched or processed is None or processed != n - named:
        entries = body.get("unprocessed")
        listed = len(entries) if isinstance(entries, list) else 0
        unconfirmed = _unknown(
            f"CleverTap's answer does not confirm these records (processed="
            f"{_outside(repr(body.get('processed')))}, unprocessed={listed}, sent={n})"
        )
        return [
            (unconfirmed, Next.UNKNOWN) if v is ACCEPTED else (v, _after_rejection(v))
            for v in verdicts
        ]
    return [(v, Next.DONE if v is ACCEPTED else _after_rejection(v)) for v in verdicts]


def _after_rejection(verdict: Verdict) -> Next:
    return Next.RETRY_ONCE if verdict.code in RETRY_ONCE_CODES else Next.DONE


def _named_rejections(
    body: dict[str, Any], keys: Sequence[ProfileKey | None]
) -> tuple[list[Verdict], int, int]:
    """Verdicts with the rejections `unprocessed` names; how many were named, and how
    many entries named no record of the request."""
    n = len(keys)
    verdicts: list[Verdict] = [ACCEPTED] * n
    entries = body.get("unprocessed")
    named = unmatched = 0
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            unmatched += 1
            continue
        text = _outside(entry.get("error", "rejected"))
        match = _RECORD_NUMBER.search(text)
        if match:
            index: int | None = int(match.group(1)) - 1
            text = text[: match.start()].strip() or text
        else:
            index = _find_record(entry.get("record"), keys, verdicts)
        if index is None or not 0 <= index < n or verdicts[index] is not ACCEPTED:
            unmatched += 1
            continue
        verdicts[index] = Verdict(Outcome.REJECTED, _outside(entry.get("code", "rejected")), text)
        named += 1
    return verdicts, named, unmatched


def _count(value: Any) -> int | None:
    """A count as CleverTap might write it (5, 5.0, "5"); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _find_record(
    record: Any, keys: Sequence[ProfileKey | None], verdicts: list[Verdict]
) -> int | None:
    if isinstance(record, str):
        record = _json_object(record.encode())
    if not isinstance(record, dict):
        return None
    wanted: list[ProfileKey] = []
    if record.get("identity") is not None:
        wanted.append(str(record["identity"]))
    if record.get("objectId") is not None:
        wanted.append(("guid", str(record["objectId"])))
    for key in wanted:
        for i, candidate in enumerate(keys):
            if verdicts[i] is ACCEPTED and candidate == key:
                return i
    return None


def _failed(code: str, message: str, stage: Stage = Stage.TRANSPORT) -> Verdict:
    return Verdict(Outcome.FAILED, code, message, stage)


_MAYBE = "; CleverTap may or may not have stored this record"
_NOT_AGAIN = ", so it was not sent again"


def _unknown(why: str) -> Verdict:
    return Verdict(Outcome.FAILED, UNKNOWN, f"{why}{_MAYBE}{_NOT_AGAIN}", Stage.TRANSPORT)


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _error_text(body: Mapping[str, Any] | None, content: bytes) -> str:
    """What an answer says went wrong, masked, then cut to a readable length."""
    if body is not None and body.get("error"):
        return _outside(body["error"])
    # Masked whole before the cut: a passcode straddling the cut would leak in pieces.
    text = _outside(content.decode("utf-8", "replace"))
    return text[:ERROR_TEXT_CHARS].strip() or "(empty answer)"


def _outside(value: object) -> str:
    """A value from CleverTap's answer (or whatever answered instead), as text that
    cannot show the passcode: a proxy may echo the request's headers."""
    return redact(str(value))


def retry_after_seconds(value: str | None) -> float | None:
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


# -- the client ---------------------------------------------------------------------


class _Trace:
    """Follows one attempt through httpcore's trace events: was it written at all, and
    was the whole request written (only then can CleverTap have stored it)."""

    __slots__ = ("body_sent", "on_wire", "seen", "started")

    def __init__(self, on_wire: OnWire | None) -> None:
        self.on_wire = on_wire
        self.seen = False  # the transport reports trace events
        self.started = False
        self.body_sent = False

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        self.seen = True
        if event.endswith("send_request_headers.started"):
            try:
                self.wire()
            except OutputError as exc:  # (the transport then writes nothing)
                exc.before_request = True
                raise
        elif event.endswith("send_request_body.complete"):
            self.body_sent = True

    def wire(self) -> None:
        if not self.started:
            self.started = True
            if self.on_wire is not None:
                self.on_wire()


class CleverTapClient:
    """Sends upload and delete requests. Use as `async with CleverTapClient(settings)`.

    `transport` lets tests and the sandbox swap the network; `sleep` and `jitter` make
    backoff testable. The default jitter draws from a generator of the client's own: the
    `random` module's shared one belongs to the program ctsync runs in (Hypothesis, for
    one, sees a library that moves it as a fault in the test that was running).
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._sleep = sleep
        self._jitter = jitter if jitter is not None else random.Random().random
        self._clients: list[httpx.AsyncClient] = []  # every one made (see `__aenter__`)
        self._idle: list[httpx.AsyncClient] = []  # ... and those no attempt holds now
        self._ssl: ssl.SSLContext | None = None
        # Permits per attempt: fixed, or adaptive to 429s (`--concurrency auto`).
        self.upload_limit = Limit(settings.upload_concurrency, adaptive=settings.adaptive)
        self.delete_limit = Limit(settings.delete_concurrency, adaptive=settings.adaptive)
        self.requests = 0
        self.retries = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def stop_waiting(self) -> None:
        """Attempts still waiting for a permit end with CancelledError, unsent."""
        self.upload_limit.cancel_waiting()
        self.delete_limit.cancel_waiting()

    def concurrency(self) -> dict[str, ConcurrencyReport]:
        """Requests in flight per endpoint, for the endpoints that were used."""
        limits = {"upload": self.upload_limit, "delete": self.delete_limit}
        return {name: limit.report() for name, limit in limits.items() if limit.peak_in_flight}

    async def __aenter__(self) -> CleverTapClient:
        # One HTTP client, with one connection, per request that may be in flight. A pool
        # of many connections looks at each of them whenever a request starts or ends
        # (with 18, that was 12% of a run's CPU in httpcore against a fast endpoint);
        # each attempt takes an idle client instead (`_attempt`), and its connection is
        # kept alive for the next. Their TLS context is built once and shared.
        settings = self.settings
        self._ssl = httpx.create_ssl_context()
        for _ in range(settings.upload_concurrency + settings.delete_concurrency):
            self._idle.append(self._new_client())
        return self

    def _new_client(self) -> httpx.AsyncClient:
        settings = self.settings
        client = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={
                "X-CleverTap-Account-Id": settings.account_id,
                "X-CleverTap-Passcode": settings.passcode.reveal(),
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": f"ctsync/{__version__}",
            },
            timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            transport=self._transport,
            verify=self._ssl if self._ssl is not None else True,
        )
        self._clients.append(client)
        return client

    async def __aexit__(self, *exc_info: object) -> None:
        clients, self._clients, self._idle = self._clients, [], []
        for client in clients:
            await client.aclose()

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        """The run's `model.Sender`: `upload` or `delete`, as the request says."""
        if request.delete is None:
            return await self.upload(request.bodies, request.keys, request.resend, on_wire)
        return await self.delete(request.delete, request.bodies, request.keys, on_wire)

    async def upload(
        self,
        bodies: Sequence[bytes],
        keys: Sequence[ProfileKey | None],
        resend: Sequence[bool],
        on_wire: OnWire | None = None,
    ) -> list[Verdict]:
        """Send up to 1000 encoded records; one verdict per record, in order. `resend`
        says which records may be sent again after an unclear answer."""
        return await self._deliver(
            UPLOAD_PATH, upload_body, bodies, keys, resend, self.upload_limit, on_wire
        )

    async def delete(
        self,
        key: DeleteKey,
        bodies: Sequence[bytes],
        keys: Sequence[ProfileKey | None],
        on_wire: OnWire | None = None,
    ) -> list[Verdict]:
        """Delete up to 100 profiles by identity or CleverTap ID (guid); deleting twice
        is harmless, so unclear answers are retried."""

        def body(chosen: Sequence[bytes]) -> bytes:
            return delete_body(key, chosen)

        resend = [True] * len(bodies)
        return await self._deliver(
            DELETE_PATH, body, bodies, keys, resend, self.delete_limit, on_wire
        )

    async def _deliver(
        self,
        path: str,
        join: Callable[[Sequence[bytes]], bytes],
        bodies: Sequence[bytes],
        keys: Sequence[ProfileKey | None],
        resend: Sequence[bool],
        slots: Limit,
        on_wire: OnWire | None,
    ) -> list[Verdict]:
        """Attempt until every record has a final verdict. Raises AuthError on an answer
        that stops the run (`Refused`)."""
        final: list[Verdict] = [ACCEPTED] * len(bodies)
        last: dict[int, Verdict] = {}
        maybe_stored: set[int] = set()
        retried_once: set[int] = set()
        todo = list(range(len(bodies)))
        attempt = 0
        untaken = True  # every attempt so far was certainly not taken (Next.RETRY)
        while todo:
            whole = len(todo) == len(bodies)
            sent = bodies if whole else [bodies[i] for i in todo]
            outcome = await self._attempt(path, join(sent), slots, on_wire)
            if all_taken(outcome, path, len(todo)):
                return final  # (a record in `todo` has no final verdict yet: ACCEPTED)
            steps = classify(outcome, path, keys if whole else [keys[i] for i in todo])
            if isinstance(steps, Refused):
                refused = AuthError(self._refusal_message(steps))
                refused.stored_nothing = untaken
                refused.status = steps.status
                raise refused
            untaken = untaken and all(step is Next.RETRY for _, step in steps)
            again: list[int] = []
            backoff = False
            for i, (verdict, step) in zip(todo, steps, strict=True):
                if step is Next.DONE:
                    final[i] = verdict
                elif step is Next.RETRY_ONCE and i not in retried_once:
                    retried_once.add(i)
                    again.append(i)
                    last[i] = verdict
                elif step is Next.RETRY_ONCE or (step is Next.UNKNOWN and not resend[i]):
                    final[i] = verdict
                else:  # RETRY, or UNKNOWN and safe to repeat
                    if step is Next.UNKNOWN:
                        maybe_stored.add(i)
                    again.append(i)
                    last[i] = verdict
                    backoff = True
            if again and backoff and attempt >= self.settings.retry.max_retries:
                for i in again:
                    final[i] = self._gave_up(last[i], i in maybe_stored, attempt + 1)
                break
            if again and backoff:
                after = retry_after_seconds(outcome.retry_after) if outcome.status else None
                await self._sleep(self._backoff(attempt, after))
                attempt += 1
            if again:
                self.retries += 1
            todo = again
        return final

    @staticmethod
    def _gave_up(verdict: Verdict, maybe_stored: bool, attempts: int) -> Verdict:
        """A record that was sent again (safe to repeat) until the retries ran out: its
        last verdict, but not its "not sent again"."""
        message = verdict.message.removesuffix(_NOT_AGAIN)
        if maybe_stored and not message.endswith(_MAYBE):  # a 429 last, a 500 before
            message += _MAYBE
        return Verdict(
            verdict.outcome,
            UNKNOWN if maybe_stored else verdict.code,
            f"{message} (sent {attempts} times: safe to repeat; gave up)"
            if maybe_stored
            else f"{message} (gave up after {attempts} attempts)",
            verdict.stage,
        )

    async def _attempt(
        self, path: str, body: bytes, slots: Limit, on_wire: OnWire | None
    ) -> Attempt:
        """One POST, bounded by `timeout` as a whole."""
        assert self._ssl is not None, "use CleverTapClient as an async context manager"
        trace = _Trace(on_wire)
        async with slots:
            # An idle client: there are as many as permits, unless a limit grew past them.
            http = self._idle.pop() if self._idle else self._new_client()
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                async with asyncio.timeout(self.settings.timeout):
                    response = await http.post(path, content=body, extensions={"trace": trace})
                slots.answered(response.status_code)  # 429 halves an adaptive limit
            except TimeoutError:
                return self._lost(trace, f"no complete answer within {self.settings.timeout:g} s")
            except httpx.TransportError as exc:
                if isinstance(exc, _NOT_SENT):
                    return Attempt(error=_describe(exc), body_sent=False)
                return self._lost(trace, _describe(exc))
            finally:
                self.in_flight -= 1
                self._idle.append(http)
        if not trace.seen:  # a transport that does not trace: it was sent
            trace.wire()
        return Attempt(
            status=response.status_code,
            content=response.content,
            retry_after=response.headers.get("Retry-After"),
        )

    @staticmethod
    def _lost(trace: _Trace, error: str) -> Attempt:
        if not trace.seen:  # cannot tell how far it got: assume CleverTap may have it
            trace.wire()
            return Attempt(error=error, body_sent=True)
        return Attempt(error=error, body_sent=trace.body_sent)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: a delay drawn uniformly below the exponential ceiling."""
        policy = self.settings.retry
        if retry_after is not None:
            return min(retry_after, policy.max_retry_after)
        ceiling = min(policy.max_delay, policy.base_delay * 2.0**attempt)
        return self._jitter() * ceiling

    def _refusal_message(self, refused: Refused) -> str:
        # What the person gave is echoed masked: a passcode pasted as the account ID
        # (or into the endpoint) is exactly what this message is about.
        where, account = redact(self.settings.base_url), redact(self.settings.account_id)
        status, error, path = refused.status, refused.error, refused.path
        what = "uploads" if path == UPLOAD_PATH else "deletions"
        if status in (404, 405):
            return (
                f"Nothing at {where} takes {what} (HTTP {status}: {error} for {path}). "
                "Check --endpoint (the base URL, without /1/...) or --region."
            )
        if status == 403:
            verb = "upload" if path == UPLOAD_PATH else "delete profiles"
            return (
                f"CleverTap does not allow this account to {verb} (HTTP 403: {error}) at "
                f"{where}. Check the account ID ({account}) and the passcode, and that the "
                "account may use the API (the dashboard's Settings > Project)."
            )
        return (
            f"CleverTap refused the credentials (HTTP 401: {error}) at {where}. "
            f"Check the account ID ({account}), the passcode, and the region: "
            "a wrong region also answers 401 (the region shows in your dashboard URL, "
            "e.g. in1.dashboard.clevertap.com -> --region in1)."
        )


def _describe(exc: httpx.TransportError) -> str:
    detail = redact(str(exc)) or "no detail"  # a library's words may quote what was sent
    return f"{exc.__class__.__name__}: {detail}"
