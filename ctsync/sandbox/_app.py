"""What the sandbox answers: routing, auth, limits, faults, validation and storage.

Knows nothing of sockets: it takes a parsed `Request` and returns a `Response`, or `DROP`
to have the connection aborted without an answer. The order for a CleverTap path:
auth (401) -> count in flight from the arrival of the head, over the limit (429) ->
draw a fault -> latency -> wait while answers are held (`hold_answers`) -> the fault,
or the work. The faults 429/500/503 and `drop` store nothing; `stored-500`, `stored-504`
and `stored-drop` do the work (store the records, log the deletions) and then answer
500/504 or abort the connection instead of the real answer.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import orjson

from ._config import MAX_IDS_PER_DELETE, MAX_RECORDS_PER_UPLOAD, SandboxConfig
from ._stats import Counters, Endpoint, Fault, SandboxStats
from ._store import DeleteKey, SandboxStore
from ._validation import check_upload

UPLOAD_PATH = "/1/upload"
DELETE_PATH = "/1/delete/profiles.json"
STATS_PATH = "/_sandbox/stats"
RESET_PATH = "/_sandbox/reset"
HOLD_PATH = "/_sandbox/hold"
RELEASE_PATH = "/_sandbox/release"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The request line and headers of one HTTP request. Header names are lower case."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Request:
    head: RequestHead
    body: bytes


@dataclass(frozen=True, slots=True)
class Admission:
    """An authenticated CleverTap request, counted in flight from the arrival of its head.

    Counting from the head, not from the full body, is what makes concurrency visible on
    one event loop: 15 clients sending 600 kB bodies overlap while their bodies arrive.
    """

    endpoint: Endpoint
    over_limit: bool


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


class Drop(Enum):
    """Abort the connection instead of answering."""

    DROP = "drop"


DROP: Final = Drop.DROP
Answer = Response | Drop


def fail(status: int, error: str) -> Response:
    """CleverTap's shape of a failed request."""
    return Response(status, orjson.dumps({"status": "fail", "error": error, "code": status}))


UNAUTHORIZED = fail(401, "Account ID is not valid")
TOO_MANY = fail(429, "Too many concurrent requests")
NOT_FOUND = fail(404, "Not found")
_INTERNAL_ERROR = fail(500, "Internal Server Error")
_FAULT_ANSWERS: Mapping[Fault, Answer] = {
    Fault.TOO_MANY_REQUESTS: TOO_MANY,
    Fault.INTERNAL_ERROR: _INTERNAL_ERROR,
    Fault.UNAVAILABLE: fail(503, "Service Unavailable"),
    Fault.DROP: DROP,
    Fault.STORED_THEN_500: _INTERNAL_ERROR,
    Fault.STORED_THEN_504: fail(504, "Gateway Timeout"),
    Fault.STORED_THEN_DROP: DROP,
}
_ERROR_FAULTS = (Fault.TOO_MANY_REQUESTS, Fault.INTERNAL_ERROR, Fault.UNAVAILABLE)
_STORED_ERROR_FAULTS = (Fault.STORED_THEN_500, Fault.STORED_THEN_504)
_ENDPOINTS: Mapping[str, Endpoint] = {UPLOAD_PATH: Endpoint.UPLOAD, DELETE_PATH: Endpoint.DELETE}


class SandboxApp:
    """The state of one sandbox. Used from the event loop's thread only."""

    def __init__(self, config: SandboxConfig, store: SandboxStore) -> None:
        self.config = config
        self.store = store
        self.counters = Counters()
        self._rng = random.Random(config.seed)
        self._latency_rng = _latency_rng(config.seed)
        self._limits = {
            Endpoint.UPLOAD: config.max_concurrent_uploads,
            Endpoint.DELETE: config.max_concurrent_deletes,
        }
        # Cleared by `hold_answers`: CleverTap requests wait, in flight, until released. What
        # tests use instead of seconds of latency to keep requests on the wire.
        self._answering = asyncio.Event()
        self._answering.set()

    def stats(self) -> SandboxStats:
        """The counters and what the store holds."""
        return self.counters.snapshot(self.store.counts())

    def reset(self) -> None:
        """Forget stored data and counters; the fault sequence starts again from the seed."""
        self.store.reset()
        self.counters.reset()
        self._rng = random.Random(self.config.seed)
        self._latency_rng = _latency_rng(self.config.seed)

    def hold_answers(self) -> None:
        """From now on, CleverTap requests wait before their answer until released."""
        self._answering.clear()

    def release_answers(self) -> None:
        """Answer the held requests, and every later one without waiting."""
        self._answering.set()

    def admit(self, head: RequestHead) -> Admission | None:
        """Count an authenticated request to a CleverTap endpoint in flight.

        Call when its head has arrived, and `release` it once answered (or abandoned).
        """
        endpoint = _ENDPOINTS.get(head.path)
        if endpoint is None or head.method != "POST" or not self._authorized(head):
            return None
        self.counters.requests_by_endpoint[endpoint] += 1
        in_flight = self.counters.enter(endpoint)
        return Admission(endpoint, over_limit=in_flight > self._limits[endpoint])

    def release(self, admission: Admission | None) -> None:
        """Count a request admitted by `admit` out of flight."""
        if admission is not None:
            self.counters.leave(admission.endpoint)

    def _authorized(self, head: RequestHead) -> bool:
        return (
            head.headers.get("x-clevertap-account-id") == self.config.account_id
            and head.headers.get("x-clevertap-passcode") == self.config.passcode
        )

    async def handle(self, request: Request, admission: Admission | None) -> Answer:
        """Answer a request; `admission` is what `admit` said of its head."""
        if request.head.path.startswith("/_sandbox/"):
            return self._handle_sandbox(request.head)
        answer = await self._handle_clevertap(request, admission)
        if isinstance(answer, Response):
            self.counters.requests_by_status[answer.status] += 1
        return answer

    def _handle_sandbox(self, head: RequestHead) -> Response:
        # The controls read and wipe the account's data: the same credentials as the API.
        if not self._authorized(head):
            return UNAUTHORIZED
        if head.path == STATS_PATH and head.method == "GET":
            return Response(200, orjson.dumps(self.stats().to_json()))
        if head.path == RESET_PATH and head.method == "POST":
            self.reset()
            return Response(200, orjson.dumps({"status": "success"}))
        if head.path in (HOLD_PATH, RELEASE_PATH) and head.method == "POST":
            self.hold_answers() if head.path == HOLD_PATH else self.release_answers()
            return Response(200, orjson.dumps({"status": "success"}))
        return NOT_FOUND

    async def _handle_clevertap(self, request: Request, admission: Admission | None) -> Answer:
        head = request.head
        if admission is None:
            if head.path not in _ENDPOINTS:
                return NOT_FOUND
            if head.method != "POST":
                return fail(405, "Method not allowed")
            return UNAUTHORIZED
        if admission.over_limit:
            return TOO_MANY
        fault = self._draw_fault()
        latency = self._draw_latency()
        if latency:
            await asyncio.sleep(latency / 1000)
        await self._answering.wait()
        if fault is not None:
            self.counters.faults[fault] += 1
            if not fault.stores:
                return _FAULT_ANSWERS[fault]
        if self.config.sink:
            answer = self._sink(request, admission.endpoint)
        elif admission.endpoint is Endpoint.UPLOAD:
            answer = self._upload(request)
        else:
            answer = self._delete(request)
        return answer if fault is None else _FAULT_ANSWERS[fault]

    def _draw_fault(self) -> Fault | None:
        config = self.config
        # In this order, so that a seed draws today's 429/500/503/drop sequence when the
        # store-first faults are off.
        shares = (
            (config.drop_rate, (Fault.DROP,)),
            (config.fault_rate, _ERROR_FAULTS),
            (config.store_then_fail_rate, _STORED_ERROR_FAULTS),
            (config.store_then_drop_rate, (Fault.STORED_THEN_DROP,)),
        )
        if not any(share for share, _ in shares):
            return None
        draw = self._rng.random()
        for share, faults in shares:
            if draw < share:
                return faults[0] if len(faults) == 1 else self._rng.choice(faults)
            draw -= share
        return None

    def _draw_latency(self) -> float:
        low, high = self.config.latency_range
        return low if low == high else self._latency_rng.uniform(low, high)

    def _sink(self, request: Request, endpoint: Endpoint) -> Response:
        """`--sink`: every record processed, nothing checked or stored (one JSON decode
        per request, to count them)."""
        payload = _json_body(request.body)
        if not isinstance(payload, dict):
            return fail(400, "Malformed JSON payload")
        if endpoint is Endpoint.DELETE:
            return Response(200, b'{"status":"success"}')
        records = payload.get("d")
        if not isinstance(records, list) or not records:
            return fail(400, "Payload must be an object with a non-empty 'd' array")
        self.counters.records_accepted += len(records)
        return Response(200, b'{"status":"success","processed":%d}' % len(records))

    def _upload(self, request: Request) -> Response:
        payload = _json_body(request.body)
        if payload is None:
            return fail(400, "Malformed JSON payload")
        records = payload.get("d") if isinstance(payload, dict) else None
        if not isinstance(records, list):
            return fail(400, "Payload must be an object with a 'd' array")
        if not records:
            return fail(400, "No records in 'd'")
        if len(records) > MAX_RECORDS_PER_UPLOAD:
            return fail(
                400,
                f"Too many records: {len(records)}, at most {MAX_RECORDS_PER_UPLOAD} per request",
            )
        checked = check_upload(records)
        counters = self.counters
        if request.head.query.get("dryRun") in ("1", "true"):
            counters.records_dry_run += len(records)
        else:
            self.store.apply_upload(checked)
            counters.records_accepted += checked.processed
            counters.records_rejected += len(checked.unprocessed)
            counters.rejected_by_code.update(checked.rejected_codes)
        # Every record rejected is still HTTP 200 and "success" with processed 0: the
        # sandbox keeps one shape; clients must reconcile processed + unprocessed anyway.
        answer: dict[str, Any] = {"status": "success", "processed": checked.processed}
        if checked.unprocessed:
            answer["unprocessed"] = checked.unprocessed
        return Response(200, orjson.dumps(answer))

    def _delete(self, request: Request) -> Response:
        payload = _json_body(request.body)
        if not isinstance(payload, dict):
            return fail(400, "Malformed JSON payload")
        keys: list[DeleteKey] = [key for key in ("identity", "guid") if key in payload]
        if len(keys) != 1:
            return fail(400, "Exactly one of 'identity' or 'guid' is required")
        key = keys[0]
        value = payload[key]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            return fail(400, f"'{key}' must be a non-empty string or a list of them")
        if len(values) > MAX_IDS_PER_DELETE:
            return fail(
                400, f"Too many values: {len(values)}, at most {MAX_IDS_PER_DELETE} per request"
            )
        processed = self.store.apply_delete(key, values)
        return Response(200, orjson.dumps({"status": "success", "processed": processed}))


def _latency_rng(seed: int) -> random.Random:
    # Its own stream: a latency range leaves the fault sequence of a seed as it was.
    return random.Random(f"latency-{seed}")


def _json_body(body: bytes) -> Any | None:
    """The decoded body, or None when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
