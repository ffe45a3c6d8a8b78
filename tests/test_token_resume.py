"""Device tokens across kills and resumes: a run resumed from its state file does not map
again the records an earlier run finished, so it lacks the tokens they sent. A message's
operations must still be numbered as the earlier run numbered them (their numbers are
their positions in the state file), whatever the order of a mapping file's token
subscriptions and however many fire, and no run of positions may cover a token a
record passed over.

Hypothesis draws messages with repeated users and device tokens (some with a token
type CleverTap refuses), a mapping (the classic preset, its mapping file with the token
subscription first, with a second token subscription, or with the token's type read
from the message), `--events-only` or not, lanes, batch sizes, bulk or not, and the
requests at which the process is killed (the state file as it was at that instant, as
`kill -9` leaves it). Runs go on until one ends. Then, against a model CleverTap and
independently of ctsync's helpers:

- no profile write or event is sent again after CleverTap acknowledged it;
- a run sends each device token at most once (a resumed run may send again a token
  that a record it does not read again sent: a token goes once per run);
- every profile write (unless `--events-only`) and every device token of a valid
  message is stored; an event is stored at most once, and one that is missing was
  reported outcome-unknown; a message with a refused token type is reported invalid
  and nothing of it is stored, whether or not its token went out before.

Chosen scenarios then check more: a record the earlier run left pending, which had
passed over a token sent before it, does not send that token in the resumed run (no
run of positions in the state file covers that token's number).
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctsync import api
from ctsync.mapping import preset_as_mapping
from ctsync.options import MappingOptions
from ctsync.presets import Preset
from ctsync.run import RunOptions
from ctsync.settings import ClientSettings, RetryPolicy, Secret
from tests.helpers import classic_with_tokens, examples

LAYOUTS = ["preset", "token-first", "two-tokens", "token-type"]
BASE_TS = 1714564800  # 2024-05-01T12:00:00Z


class Killed(Exception):
    """The process dies: nothing after this instant reaches the state file."""


def mapping_of(layout: str) -> dict[str, Any] | None:
    """The classic preset as a mapping file with its token subscription first, or with a
    second one (`classic_with_tokens`), or with the Android token's type read from the
    message's `context.device.ttype` ("token-type"); None: the preset itself."""
    if layout == "preset":
        return None
    if layout != "token-type":
        return classic_with_tokens(layout)
    mapping = preset_as_mapping("classic")
    for each in mapping["subscriptions"]:
        if each["action"] == "tokenUpload" and each["name"].startswith("Android"):
            each["mapping"]["type"] = {"@path": "$.context.device.ttype"}
    return mapping


def refused(layout: str, token: int | None) -> bool:
    """Whether CleverTap refuses the message's token type (534): with "token-type", the
    tokens numbered 4 and 5, whose `ttype` is "bad"."""
    return layout == "token-type" and token is not None and token >= 4


def message(seq: int, kind: str, user: int, token: int | None, pad: int = 0) -> dict[str, Any]:
    """Message `seq`: device token `tok-<token % 2>` of an Android device, its type
    written "android" or "Android": the "two-tokens" mapping's second token (the device
    type) may then be sent while the first was passed over; its `ttype` "fcm", or "bad"
    for tokens 4 and 5. `pad`: that many bytes more in a field no mapping reads (a line
    of more than 64 KiB is a block of its own)."""
    body: dict[str, Any] = {
        "type": kind,
        "userId": f"u{user}",
        "anonymousId": f"a{user}",
        "messageId": f"m{seq}",
        "timestamp": f"2024-05-01T12:00:{seq:02d}Z",  # its records' ts: base + seq
    }
    if kind == "identify":
        body["traits"] = {"seq": seq}
    else:
        body["event"] = "Opened"
        body["properties"] = {"seq": seq}
    context: dict[str, Any] = {"library": {"name": "x" * pad}} if pad else {}
    if token is not None:
        device = "android" if token < 2 else "Android"
        ttype = "bad" if token >= 4 else "fcm"
        context["device"] = {"token": f"tok-{token % 2}", "type": device, "ttype": ttype}
    if context:
        body["context"] = context
    return body


def mark(record: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a record CleverTap stores: its message's seq, or its token."""
    if record["type"] == "token":
        return ("token", record["objectId"], record["tokenData"]["id"])
    return (record["type"], record["ts"] - BASE_TS)


@dataclass
class Model:
    """CleverTap, and the process that is killed at the `kill_at`-th request, before
    CleverTap stores it: the state file is copied at that instant."""

    state: Path
    kill_at: int | None = None
    requests: int = 0
    killed: bool = False
    stored: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    acknowledged: set[tuple[Any, ...]] = field(default_factory=set)
    resent_after_ack: list[tuple[Any, ...]] = field(default_factory=list)
    tokens_this_run: Counter[tuple[Any, ...]] = field(default_factory=Counter)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.killed:
            raise httpx.ConnectError("the process is gone")
        self.requests += 1
        if self.kill_at is not None and self.requests >= self.kill_at:
            self.killed = True
            with sqlite3.connect(self.state) as db, sqlite3.connect(f"{self.state}.kill") as copy:
                db.backup(copy)
            raise Killed
        records = orjson.loads(request.content)["d"]
        marks = [mark(record) for record in records]
        for each in marks:
            if each[0] == "token":
                self.tokens_this_run[each] += 1
            if each in self.acknowledged:
                self.resent_after_ack.append(each)
            self.stored[each] += 1
        self.acknowledged.update(marks)
        return httpx.Response(200, json={"status": "success", "processed": len(records)})


@dataclass(frozen=True)
class Setup:
    """How the runs are made. `bulk`: "no"; "lines" (lines of 40 kB, blocks of one or
    two of them: a token's sender and a record that passes its token over then come in
    different blocks, the second in bulk); "block" (the whole input one block); in bulk,
    every block's plain records go in bulk (`wire.gather`), however few."""

    layout: str
    lanes: int
    size: int
    bulk: str = "no"
    events_only: bool = False


def run_once(export: Path, work: Path, model: Model, setup: Setup) -> None:
    mapping = mapping_of(setup.layout)
    mapping_file = None
    if mapping is not None:
        mapping_file = work / "mapping.json"
        mapping_file.write_bytes(orjson.dumps(mapping))
    job = api.UploadJob(
        paths=[str(export)],
        client=ClientSettings(
            account_id="acct",
            passcode=Secret("model-passcode-0001"),
            base_url="http://clevertap.test",
            concurrency=setup.lanes,
            retry=RetryPolicy(max_retries=0, base_delay=0.0, max_delay=0.0),
        ),
        preset=Preset.CLASSIC,
        mapping_file=mapping_file,
        mapping=MappingOptions(events_only=setup.events_only),
        run=RunOptions(batch_size=setup.size, lanes=setup.lanes),
        outputs=api.Outputs(report=work / "report.ndjson"),
        state=model.state,
    )
    tuning = {}
    if setup.bulk != "no":
        object.__setattr__(job, "_recipe", replace(job.recipe, bulk_from=1))
    if setup.bulk == "lines":
        tuning = {"CTSYNC_WORKER_BLOCK_BYTES": "1", "CTSYNC_WORKER_START_AFTER": "0"}
    try:
        with mock.patch.dict(os.environ, tuning):
            api.upload(job, transport=httpx.MockTransport(model.handle))
    except Exception:
        if not model.killed:
            raise
    if model.killed:  # kill -9: the state file is what it was at that instant
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{model.state}{suffix}").unlink(missing_ok=True)
        Path(f"{model.state}.kill").rename(model.state)


messages = st.lists(
    st.tuples(
        st.sampled_from(["identify", "identify", "track"]),
        st.integers(0, 2),
        st.one_of(st.none(), st.integers(0, 5)),
    ),
    min_size=1,
    max_size=12,
)


Drawn = list[tuple[str, int, int | None]]
"""Messages as (type, user number, token number or None)."""


def check(work: Path, drawn: Drawn, setup: Setup, kills: list[int]) -> Model:
    """Runs over one state file, killed at `kills` then to the end; the promises in the
    module's docstring checked. Returns the model, for more."""
    export = work / "export.ndjson"
    pad = 40_000 if setup.bulk == "lines" else 0
    export.write_bytes(
        b"".join(
            orjson.dumps(message(seq, kind, user, token, pad)) + b"\n"
            for seq, (kind, user, token) in enumerate(drawn, 1)
        )
    )
    model = Model(work / "state.db")
    for kill in [*kills, None]:
        model.kill_at, model.killed, model.requests = kill, False, 0
        model.tokens_this_run.clear()
        run_once(export, work, model, setup)
        assert all(count == 1 for count in model.tokens_this_run.values()), model.tokens_this_run
    assert model.killed is False
    resent = [each for each in model.resent_after_ack if each[0] != "token"]
    assert resent == []
    report = work / "report.ndjson"
    entries = [
        orjson.loads(line)
        for line in (report.read_bytes() if report.exists() else b"").splitlines()
    ]
    unknown = {entry["line"] for entry in entries if entry["code"] == "outcome-unknown"}
    invalid = {entry["line"] for entry in entries if entry["code"] == "534"}
    for seq, (kind, user, token) in enumerate(drawn, 1):
        record = ("profile", seq) if kind == "identify" else ("event", seq)
        if refused(setup.layout, token):
            assert seq in invalid and model.stored[record] == 0, seq
            continue
        if kind == "identify":
            assert model.stored[record] >= (0 if setup.events_only else 1), seq
        else:
            stored = model.stored[record]
            assert stored == 1 or (stored == 0 and seq in unknown), (seq, stored)
        if token is not None:
            assert model.stored[("token", f"a{user}", f"tok-{token % 2}")] >= 1
            if setup.layout == "two-tokens":
                device = "android" if token < 2 else "Android"
                assert model.stored[("token", f"a{user}", device)] >= 1
    return model


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    drawn=messages,
    setup=st.builds(
        Setup,
        layout=st.sampled_from(LAYOUTS),
        lanes=st.integers(1, 2),
        size=st.integers(1, 3),
        bulk=st.sampled_from(["no", "lines", "block"]),
        events_only=st.booleans(),
    ),
    kills=st.lists(st.integers(1, 10), max_size=2),
)
def test_tokens_and_resumes_lose_nothing_and_resend_nothing_acknowledged(
    tmp_path_factory: pytest.TempPathFactory,
    drawn: Drawn,
    setup: Setup,
    kills: list[int],
) -> None:
    check(tmp_path_factory.mktemp("tokens"), drawn, setup, kills)


SCENARIOS = [
    # Found by the property before the fix: the token subscription first; the second
    # identify passed over the token the first had sent. Killed at the fourth request, the
    # resumed run (which does not map the first identify again) numbered the third
    # identify's records afresh, and sent a device token again after CleverTap had it.
    pytest.param(
        [("identify", 0, None), ("identify", 0, 1), ("identify", 0, 1)],
        Setup("token-first", 1, 1),
        [4],
        id="renumbered",
    ),
    # No run of positions may cover a token passed over before a record's first
    # operation: the third identify's token (number 0) was sent by the first; the second
    # and the third went in one request, killed.
    pytest.param(
        [("identify", 0, 1), ("identify", 1, None), ("identify", 0, 1)],
        Setup("token-first", 1, 2),
        [2],
        id="gap-before",
    ),
    # Nor one that goes on past a record that passed its token over (its last number).
    pytest.param(
        [("identify", 0, 1), ("identify", 0, 1), ("identify", 1, None)],
        Setup("preset", 1, 2),
        [2],
        id="gap-after",
    ),
    # In bulk, a plain record whose token was passed over keeps its own number (1, with
    # the token subscription first), not 0: else the resumed run lost its profile.
    pytest.param(
        [("identify", 0, 1), ("identify", 0, 1)],
        Setup("token-first", 1, 1, bulk="lines"),
        [2],
        id="bulk-number",
    ),
    # In bulk, no run of positions goes on past a record that passed its token over
    # (the blocks: the first line, then the second and the third).
    pytest.param(
        [("identify", 0, 1), ("identify", 0, 1), ("identify", 1, None)],
        Setup("preset", 1, 2, bulk="lines"),
        [2],
        id="bulk-gap-after",
    ),
    # Found by review (older than the fix): in bulk, nor past a record skipped because
    # its only record, a token (an identify under --events-only), was sent already.
    pytest.param(
        [("track", 0, 0), ("track", 1, None), ("identify", 0, 0), ("track", 2, None)],
        Setup("preset", 1, 2, bulk="block", events_only=True),
        [2],
        id="bulk-gap-after-skip",
    ),
]

# Found by review (older than the fix): a message whose token had gone out already was
# valid with a token type CleverTap refuses (its token record was left out before it was
# checked); a resumed run, which lacks that token, found it invalid and neither sent nor
# reported what the first run had left pending of it. Validity no longer depends on the
# tokens sent: the message is invalid in every run, reported once, nothing of it sent.
REFUSED = [
    pytest.param(
        [("identify", 0, 0), (kind, 0, 4)], Setup("token-type", 1, 1), [kill], id=f"{kind}-{kill}"
    )
    for kind in ("identify", "track")
    for kill in (1, 2, 3)
]


@pytest.mark.parametrize(("drawn", "setup", "kills"), REFUSED)
def test_a_refused_token_type_makes_its_message_invalid_in_every_run(
    tmp_path: Path, drawn: Drawn, setup: Setup, kills: list[int]
) -> None:
    check(tmp_path, drawn, setup, kills)


@pytest.mark.parametrize(("drawn", "setup", "kills"), SCENARIOS)
def test_a_pending_record_does_not_send_again_the_token_it_passed_over(
    tmp_path: Path, drawn: Drawn, setup: Setup, kills: list[int]
) -> None:
    """In each scenario every record after the kill that carries the token is one the
    earlier run left pending, having passed the token over: no run sends it again."""
    model = check(tmp_path, drawn, setup, kills)
    assert model.resent_after_ack == []
