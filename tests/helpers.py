"""Constants and small builders shared by tests."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from hypothesis import settings
from typer.testing import Result

from ctsync import api
from ctsync.ledger import Summary, Tracked, Verdict
from ctsync.mapping import preset_as_mapping
from ctsync.model import OnWire, Request
from ctsync.records import Delete, Mapper, MapResult, Message, Origin, Upload
from ctsync.run import RunOptions
from ctsync.settings import ClientSettings

QUICK_EXAMPLES = 20
"""Hypothesis examples per property in the fast tier (`make test`)."""
THOROUGH_EXAMPLES = 100
"""... and in the slow tier (`make test-all`): Hypothesis's own default, as before the tiers."""


def examples(thorough: int) -> int:
    """Examples for a property that runs `thorough` of them in the slow tier: the same
    share of it as the loaded profile's count (at least 5)."""
    return max(5, thorough * settings().max_examples // THOROUGH_EXAMPLES)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CLEVERTAP_ variable (the credentials a test
    gives are the only ones a run sees), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_")}
    env.update(extra)
    return env


def assert_exit(result: Result, code: int) -> None:
    """A run in Typer's runner ended as `ctsync` would exit with `code`: the command
    returned or raised SystemExit. Any other exception is caught by the runner (as exit 1,
    out of stderr), where a real process would have shown a crash and exited 70."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )


def identify(user: str, timestamp: Any = None) -> dict[str, Any]:
    """Segment's identify of `user` with traits {"plan": "pro"}, and a timestamp if given."""
    message: dict[str, Any] = {"type": "identify", "userId": user, "traits": {"plan": "pro"}}
    if timestamp is not None:
        message["timestamp"] = timestamp
    return message


def owner(line: int) -> Tracked:
    """The ledger's record for line `line` of input "f": one operation, no line or message
    kept (the planner's tests follow only where its operation goes)."""
    return Tracked(Origin("f", line), None, {}, 1)


PASSCODE = "pc-S3CRET-0d9f"
ACCOUNT_ID = "TEST-ACC-123"
BASE_URL = "https://eu1.api.clevertap.com"

# CleverTap's subscription flags (clevertap-api.md): reserved profile keys, booleans only.
SUBSCRIPTION_FLAGS: dict[str, Any] = {
    "MSG-email": False,
    "MSG-push": True,
    "MSG-sms": False,
    "MSG-whatsapp": True,
    "MSG-dndPhone": True,
    "MSG-dndEmail": False,
}
# Every reserved profile key, as a Segment trait that must reach CleverTap as written.
RESERVED_TRAITS: dict[str, Any] = {
    **SUBSCRIPTION_FLAGS,
    "category-unsubscribe": {"email": ["Marketing", "Transactional"]},
    "category-resubscribe": {"push": ["Offers"]},
}


def confirm_every_record(request: httpx.Request) -> httpx.Response:
    """CleverTap's answer to an upload it took whole: every record of `d` processed."""
    records = orjson.loads(request.content)["d"]
    return httpx.Response(200, json={"status": "success", "processed": len(records)})


def settled(summary: Summary) -> int:
    """How many records have an outcome, summed from the summary's JSON counts: an
    independent check of the accounting (never `Summary.balanced`, the code under test)."""
    counts = summary.as_dict()
    return sum(counts[k] for k in ("skipped", "invalid", "accepted", "rejected", "failed"))


def assert_accounted(summary: Summary) -> None:
    """Every record read has exactly one outcome: read = skipped + invalid + accepted +
    rejected + failed, and each count is its breakdown's total."""
    counts = summary.as_dict()
    for name in ("skipped", "invalid", "rejected", "failed"):
        by = "reason" if name == "skipped" else "code"
        assert counts[name] == sum(counts[f"{name}_by_{by}"].values()), name
    assert settled(summary) == counts["read"], counts


Kind = Literal["upload", "delete"]


class FakeSender:
    """The pipeline's `Sender` interface for tests: `send` hands the
    request to `answer`, which each fake overrides (one that takes no deletions asserts
    so there). `requests` and `retries` are what a sender reports."""

    requests = 0
    retries = 0

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        kind: Kind = "upload" if request.delete is None else "delete"
        return await self.answer(kind, request.bodies, on_wire)

    async def answer(
        self, kind: Kind, bodies: Sequence[bytes], on_wire: OnWire | None
    ) -> list[Verdict]:
        raise NotImplementedError


def mapper_that_dies_in_a_worker(tokens: set[tuple[str, str]]) -> Mapper:
    """A recipe's mapper factory: in a worker process it ends the process at once, as the
    kernel's OOM killer would; in the main process it maps nothing (every message
    skipped), so the run gets as far as handing out blocks."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        os._exit(9)
    return lambda message: []


# -- links and deletions (tests/test_batching.py, tests/test_pipeline.py) ------------------

Step = tuple[str, tuple[str, ...]]
"""One input operation, as the model of links and deletions sees it: ("link", (user,
device)), ("delete", (key,)), ("write", (key,)) or ("event", (key,))."""


def deletions_hold(steps: Sequence[Step], landed: dict[int, int]) -> None:
    """CleverTap's view of links and deletions, as the model knows them: a link merges
    the device's profile and the user's into one, which either key then reaches; a
    deletion by either key deletes the merged profile, after which each of its keys
    starts a new profile of its own. So each deletion must land after every operation
    (write, event, link) on any key of the profile it deletes since that key's last
    deletion, and before every later operation on those keys. `steps` are numbered from
    1; `landed` is each step's moment of landing (its request, numbered in the order
    they landed)."""
    merged: dict[str, set[str]] = {}
    last_cut: dict[str, int] = {}
    for n, (kind, keys) in enumerate(steps, 1):
        if kind == "link":
            group = merged.get(keys[0], {keys[0]}) | merged.get(keys[1], {keys[1]})
            for key in group:
                merged[key] = group
            continue
        if kind != "delete":
            continue
        for key in merged.get(keys[0], {keys[0]}):
            for m, (_, touched) in enumerate(steps, 1):
                if m == n or key not in touched:
                    continue
                if last_cut.get(key, 0) < m < n:
                    assert landed[m] < landed[n], (key, m, "lands after the deletion", n)
                elif m > n:
                    assert landed[m] > landed[n], (key, m, "lands before the deletion", n)
            last_cut[key] = n
            merged.pop(key, None)


def linking_mapper(tokens: set[tuple[str, str]]) -> Mapper:
    """A recipe's mapper factory (a worker builds it too) for messages of the shape
    `{"type": T, "n": N, "userId": U, "anonymousId": D}` (either id may be absent):
    an identify with both ids is a link (the device's profile, by objectId, with
    `Identity`, as --link-anonymous and a mapping file's link write it), with one a
    profile write; a track is an event; a delete deletes by identity, or by CleverTap
    ID (objectId) when it has only the anonymousId."""
    return _linking


def _linking(message: Message) -> MapResult:
    n, user, device = message["n"], message.get("userId"), message.get("anonymousId")
    kind = message["type"]
    if kind == "delete":
        return [Delete("identity", user) if user is not None else Delete("guid", str(device))]
    who = {"identity": user} if device is None else {"objectId": device}
    if kind == "track":
        return [Upload({"type": "event", **who, "evtName": "E", "evtData": {"n": n}})]
    data: dict[str, Any] = {"n": n}
    if user is not None and device is not None:
        data["Identity"] = user
    return [Upload({"type": "profile", **who, "profileData": data})]


def no_validator() -> None:
    """A recipe's validator factory for a run that checks nothing."""
    return None


# -- resumable runs (tests/test_state.py, tests/test_state_resume.py) ------------------


class CleverTap:
    """A stand-in CleverTap that stores every identity it is sent, in order."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            records = orjson.loads(request.content)["d"]
            with self.lock:
                self.received.extend(r["identity"] for r in records)
            return httpx.Response(200, json={"status": "success", "processed": len(records)})

        return httpx.MockTransport(handle)


def write_export(path: Path, users: range) -> None:
    """An NDJSON export of one identify per user number: userId "u<i>", traits {"i": i}."""
    lines = (
        orjson.dumps({"type": "identify", "userId": f"u{i}", "traits": {"i": i}}) + b"\n"
        for i in users
    )
    path.write_bytes(b"".join(lines))


def upload_with_state(
    path: Path, state: Path, server: CleverTap, settings: ClientSettings
) -> Summary:
    """Upload the export at `path` to `server` with the state file `state`, 10 records a
    batch."""
    job = api.UploadJob(
        paths=[str(path)], client=settings, state=state, run=RunOptions(batch_size=10)
    )
    return api.upload(job, transport=server.transport())


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on a free port of 127.0.0.1 in a thread, for the `with` block:
    its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def classic_with_tokens(layout: str) -> dict[str, Any]:
    """The classic preset as a mapping file whose token subscriptions come first
    ("token-first": its token records are not the last operations of a record), or with
    a second token record for every Android token ("two-tokens": the device type sent as
    a token, so a record looks two tokens up)."""
    mapping = preset_as_mapping("classic")
    subscriptions = mapping["subscriptions"]
    tokens = [s for s in subscriptions if s["action"] == "tokenUpload"]
    if layout == "token-first":
        subscriptions = [*tokens, *(s for s in subscriptions if s not in tokens)]
    else:
        assert layout == "two-tokens", layout
        second = {**tokens[0], "name": "Second token"}
        second["mapping"] = {**second["mapping"], "id": {"@path": "$.context.device.type"}}
        subscriptions = [*subscriptions, second]
    return {**mapping, "subscriptions": subscriptions}


TOKEN_SUBSCRIPTION: dict[str, Any] = {
    "name": "token",
    "enabled": True,
    "trigger": "context.device.token exists",
    "action": "tokenUpload",
    "mapping": {
        "objectId": {"@path": "$.anonymousId"},
        "id": {"@path": "$.context.device.token"},
        "type": {"@literal": "fcm"},
    },
}
"""A mapping file's subscription that sends every message's device token (fcm)."""
