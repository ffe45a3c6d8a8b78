"""Every `ctsync upload` option, given on the command line, changes what is sent.

The mapping and run options are checked in the request bodies of a dry run's `--output`;
the connection options in the requests a mocked CleverTap receives. Each expected record
is written by hand from the README and Segment's classic destination rules: 2024-01-01
00:00:00 UTC is 1704067200."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_httpx import HTTPXMock
from typer.testing import CliRunner

from ctsync import api
from ctsync.cli import app
from ctsync.errors import UsageError
from tests.helpers import ACCOUNT_ID, PASSCODE, confirm_every_record

runner = CliRunner()
NEW_YEAR = 1704067200
MESSAGES = [
    {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "a1",
        "messageId": "m1",
        "timestamp": "2024-01-01T00:00:00Z",
        "traits": {
            "since": "2024-01-01T00:00:00Z",
            "fine": "2024-01-01T00:00:00.123456Z",
            "address": {"city": "Paris"},
        },
    },
    {
        "type": "track",
        "userId": "u1",
        "messageId": "m2",
        "event": "Clicked",
        "timestamp": "2024-01-01T00:00:01Z",
        "properties": {"at": "2024-01-01", "cart": {"size": 2}, "tags": ["a", "b"]},
    },
    {  # a Phone CleverTap refuses: what --validate decides about
        "type": "identify",
        "userId": "u2",
        "messageId": "m3",
        "timestamp": "2024-01-01T00:00:02Z",
        "traits": {"phone": "12", "plan": "pro"},
    },
]
PROFILE = {
    "type": "profile",
    "identity": "u1",
    "ts": NEW_YEAR,
    "profileData": {
        "since": NEW_YEAR,
        "fine": "2024-01-01T00:00:00.123456Z",  # finer than ms: Segment's rule leaves it
        "address_city": "Paris",
    },
}
EVENT = {
    "type": "event",
    "identity": "u1",
    "ts": NEW_YEAR + 1,
    "evtName": "Clicked",
    "evtData": {"at": NEW_YEAR, "cart_size": 2, "tags_0": "a", "tags_1": "b"},
}
BAD_PHONE = {
    "type": "profile",
    "identity": "u2",
    "ts": NEW_YEAR + 2,
    "profileData": {"plan": "pro"},
}


def changed(record: dict[str, Any], **data: Any) -> dict[str, Any]:
    """`record` with its profileData or evtData keys set (a None value removes the key)."""
    record = copy.deepcopy(record)
    part = record["profileData"] if "profileData" in record else record["evtData"]
    for key, value in data.items():
        if value is None:
            part.pop(key)
        else:
            part[key] = value
    return record


# args after `--preset classic` -> every record sent (the default: PROFILE and EVENT)
CASES: dict[str, tuple[list[str], list[dict[str, Any]]]] = {
    "defaults": ([], [PROFILE, EVENT]),
    "--dates-as clevertap": (
        ["--dates-as", "clevertap"],
        [changed(PROFILE, since=f"$D_{NEW_YEAR}"), changed(EVENT, at=f"$D_{NEW_YEAR}")],
    ),
    "--no-convert-timestamps": (
        ["--no-convert-timestamps"],
        [changed(PROFILE, since="2024-01-01T00:00:00Z"), changed(EVENT, at="2024-01-01")],
    ),
    "--convert-microseconds": (
        ["--convert-microseconds"],
        [changed(PROFILE, fine=NEW_YEAR), EVENT],
    ),
    "--nested drop": (
        ["--nested", "drop"],
        [
            changed(PROFILE, address_city=None),
            changed(EVENT, cart_size=None, tags_0=None, tags_1=None),
        ],
    ),
    "--nested stringify": (
        ["--nested", "stringify"],
        [
            changed(PROFILE, address_city=None, address='{"city":"Paris"}'),
            changed(EVENT, cart_size=None, tags_0=None, tags_1=None)
            | {"evtData": {"at": NEW_YEAR, "cart": '{"size":2}', "tags": '["a","b"]'}},
        ],
    ),
    "--max-event-properties 3": (["--max-event-properties", "3"], [PROFILE]),  # EVENT has 4
    "--link-anonymous": (
        ["--link-anonymous"],
        [
            {
                key: value
                for key, value in changed(PROFILE, Identity="u1").items()
                if key != "identity"
            }
            | {"objectId": "a1"},
            EVENT,
        ],
    ),
    "--validate fix": (["--validate", "fix"], [PROFILE, EVENT, BAD_PHONE]),
    "--validate warn": (["--validate", "warn"], [PROFILE, EVENT, changed(BAD_PHONE, Phone="12")]),
    "--validate off": (["--validate", "off"], [PROFILE, EVENT, changed(BAD_PHONE, Phone="12")]),
}


def dry_run(tmp_path: Path, *args: str, exit_code: int) -> list[list[dict[str, Any]]]:
    """The records of each request a dry run of MESSAGES writes to --output; the run must
    exit with `exit_code` (README, Exit codes: 1 when a record was refused)."""
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in MESSAGES))
    out = tmp_path / "requests.ndjson"
    result = runner.invoke(
        app, ["upload", str(export), "--dry-run", "--quiet", "--output", str(out), *args]
    )
    assert result.exit_code == exit_code, result.output
    requests = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {(r["method"], r["path"]) for r in requests} <= {("POST", "/1/upload")}
    return [r["body"]["d"] for r in requests]


def in_any_order(records: list[dict[str, Any]]) -> list[bytes]:
    # Records of different profiles may go in either order (lanes): compare as a multiset.
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


@pytest.mark.parametrize("case", CASES)
def test_each_mapping_option_shows_in_the_request_bodies(tmp_path: Path, case: str) -> None:
    args, expected = CASES[case]
    # The default `--validate reject` refuses BAD_PHONE's Phone "12": exit 1; `fix`, `warn`
    # and `off` send that profile, and every record goes through.
    exit_code = 0 if "--validate" in args else 1
    requests = dry_run(tmp_path, "--preset", "classic", *args, exit_code=exit_code)
    sent = [record for request in requests for record in request]
    assert in_any_order(sent) == in_any_order(expected)


def test_preset_actions_keeps_nested_traits_and_sends_no_track(tmp_path: Path) -> None:
    """The Actions destination's default subscriptions: identify only, traits as given."""
    # Exit 0: "phone" stays a custom trait (no Phone to refuse) and the track is not
    # subscribed (skipped, not matched).
    requests = dry_run(tmp_path, "--preset", "actions", exit_code=0)
    sent = [record for request in requests for record in request]
    profile = {
        "type": "profile",
        "identity": "u1",
        "ts": NEW_YEAR,
        "profileData": {
            "since": NEW_YEAR,
            "fine": "2024-01-01T00:00:00.123456Z",
            "address": {"city": "Paris"},
        },
    }
    other = {**BAD_PHONE, "profileData": {"phone": "12", "plan": "pro"}}
    assert in_any_order(sent) == in_any_order([profile, other])


def test_batch_size_is_records_per_request(tmp_path: Path) -> None:
    requests = dry_run(tmp_path, "--preset", "classic", "--batch-size", "1", exit_code=1)
    assert sorted(len(r) for r in requests) == [1, 1]
    assert in_any_order([r for request in requests for r in request]) == in_any_order(
        [PROFILE, EVENT]
    )


# -- connection options: what a mocked CleverTap receives --------------------------------

ENV = {"CLEVERTAP_ACCOUNT_ID": ACCOUNT_ID, "CLEVERTAP_PASSCODE": PASSCODE}


def send(
    tmp_path: Path, httpx_mock: HTTPXMock, *args: str, message: int = 0
) -> tuple[int, dict[str, Any]]:
    export = tmp_path / "export.ndjson"
    export.write_bytes(orjson.dumps(MESSAGES[message]) + b"\n")
    result = runner.invoke(app, ["upload", str(export), "--json", *args], env=ENV)
    return result.exit_code, orjson.loads(result.stdout)


@pytest.mark.parametrize(("args", "requests", "code"), [([], 1, 1), (["--retry-unknown"], 2, 0)])
def test_retry_unknown_sends_again_after_an_unclear_answer(
    tmp_path: Path, httpx_mock: HTTPXMock, args: list[str], requests: int, code: int
) -> None:
    """An event is not safe to send twice (CleverTap does not deduplicate them): only with
    --retry-unknown is it sent again after a 500."""
    httpx_mock.add_response(status_code=500, json={"status": "fail", "error": "oops"})
    if requests > 1:  # pytest-httpx insists that every answer it is given is used
        httpx_mock.add_callback(confirm_every_record)
    exit_code, summary = send(tmp_path, httpx_mock, "--preset", "classic", *args, message=1)
    assert (exit_code, len(httpx_mock.get_requests())) == (code, requests)
    assert summary["accepted"] == (1 if code == 0 else 0)


@pytest.mark.parametrize("retries", [0, 2])
def test_max_retries_bounds_the_attempts(
    tmp_path: Path, httpx_mock: HTTPXMock, retries: int
) -> None:
    httpx_mock.add_response(status_code=429, json={"status": "fail"}, is_reusable=True)
    exit_code, summary = send(tmp_path, httpx_mock, "--max-retries", str(retries))
    assert len(httpx_mock.get_requests()) == retries + 1
    assert (exit_code, summary["failed_by_code"]) == (1, {"429": 1})


@pytest.mark.parametrize(
    ("args", "url"),
    [
        (["--region", "in1"], "https://in1.api.clevertap.com/1/upload"),
        (["--endpoint", "http://127.0.0.1:9/proxy/"], "http://127.0.0.1:9/proxy/1/upload"),
    ],
)
def test_region_and_endpoint_choose_the_url(
    tmp_path: Path, httpx_mock: HTTPXMock, args: list[str], url: str
) -> None:
    httpx_mock.add_callback(confirm_every_record, is_reusable=True)
    assert send(tmp_path, httpx_mock, *args)[0] == 0
    assert [str(r.url) for r in httpx_mock.get_requests()] == [url]


def test_timeout_reaches_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--timeout bounds each attempt (tested against a slow server in the client's tests):
    here, only that the command line passes it on."""
    seen: list[float] = []

    def upload(job: api.UploadJob, **kwargs: Any) -> Any:
        assert job.client is not None
        seen.append(job.client.timeout)
        raise UsageError("stop here")

    monkeypatch.setattr(api, "upload", upload)
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"")
    result = runner.invoke(app, ["upload", str(export), "--timeout", "7.5"], env=ENV)
    assert result.exit_code == 2 and seen == [7.5]
