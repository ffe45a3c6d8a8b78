"""Per-record rejections, answered inside HTTP 200 as CleverTap does."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from ctsync.sandbox import Code, Sandbox

from ._support import event, profile, upload

TOKEN: dict[str, Any] = {
    "type": "token",
    "objectId": "abc",
    "tokenData": {"id": "tok-1", "type": "fcm"},
}


def _token(**changes: Any) -> dict[str, Any]:
    token_data = dict(TOKEN["tokenData"])
    record = {**TOKEN, "tokenData": token_data}
    for key, value in changes.items():
        if key in ("id", "type"):
            token_data[key] = value
        else:
            record[key] = value
    return record


def _by_object_id(value: Any) -> dict[str, Any]:
    return _without(event("u1"), "identity") | {"objectId": value}


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


REJECTED: list[tuple[str, Any, Code]] = [
    ("event without evtName", _without(event("u1"), "evtName"), Code.EVENT_NAME_MISSING),
    ("event with empty evtName", event("u1", evtName=""), Code.EVENT_NAME_MISSING),
    ("evtData not an object", event("u1", evtData=[1]), Code.INVALID_STRUCTURE),
    ("profileData not an object", profile("u1") | {"profileData": "x"}, Code.INVALID_STRUCTURE),
    ("Notification Sent", event("u1", "Notification Sent"), Code.RESTRICTED_EVENT),
    ("App Launched", event("u1", "App Launched"), Code.RESTRICTED_EVENT),
    ("UTM Visited", event("u1", "UTM Visited"), Code.RESTRICTED_EVENT),
    ("Stayed", event("u1", "Stayed"), Code.RESTRICTED_EVENT),
    ("App Uninstalled spelled loosely", event("u1", "app uninstalled"), Code.RESTRICTED_EVENT),
    ("App Launched without spaces", event("u1", "AppLaunched"), Code.RESTRICTED_EVENT),
    ("Gender", profile("u1", Gender="Male"), Code.GENDER_INVALID),
    ("Email", profile("u1", Email="not-an-email"), Code.EMAIL_INVALID),
    ("Phone without +", profile("u1", Phone="4915112345"), Code.PHONE_INVALID),
    ("Phone with spaces", profile("u1", Phone="+49 151 12345"), Code.PHONE_INVALID),
    ("Phone a number", profile("u1", Phone=4915112345), Code.PHONE_INVALID),
    ("Employed", profile("u1", Employed="yes"), Code.EMPLOYED_INVALID),
    ("Education", profile("u1", Education="PhD"), Code.EDUCATION_INVALID),
    ("Married", profile("u1", Married=True), Code.MARRIED_INVALID),
    ("Age", profile("u1", Age="forty"), Code.AGE_INVALID),
    ("no identifier", _without(event("u1"), "identity"), Code.IDENTITY_INVALID),
    ("empty identity", event(""), Code.IDENTITY_INVALID),
    ("identity of 120 characters", event("x" * 120), Code.IDENTITY_INVALID),
    ("identity and objectId", event("u1", objectId="abc"), Code.IDENTITY_INVALID),
    ("identity null", event("u1") | {"identity": None}, Code.IDENTITY_INVALID),
    ("type missing", _without(event("u1"), "type"), Code.TYPE_INVALID),
    ("type unknown", event("u1", type="page"), Code.TYPE_INVALID),
    ("record not an object", "just a string", Code.TYPE_INVALID),
    ("ts a string", event("u1", ts="2024-03-05T10:00:00Z"), Code.TS_INVALID),
    ("ts a float", event("u1", ts=1709632800.5), Code.TS_INVALID),
    ("ts in milliseconds", event("u1", ts=1709632800000), Code.TS_INVALID),
    ("ts null", event("u1", ts=None), Code.TS_INVALID),
    (
        "objectId empty",
        _without(event("u1"), "identity") | {"objectId": ""},
        Code.OBJECT_ID_INVALID,
    ),
    (
        "objectId a number",
        _without(event("u1"), "identity") | {"objectId": 7},
        Code.OBJECT_ID_INVALID,
    ),
    ("token without objectId", _without(TOKEN, "objectId"), Code.TOKEN_OBJECT_ID_INVALID),
    ("token without tokenData", _without(TOKEN, "tokenData"), Code.TOKEN_DATA_MISSING),
    ("token id empty", _token(id=""), Code.TOKEN_ID_INVALID),
    ("token type missing", _token(type=None), Code.TOKEN_TYPE_MISSING),
    ("token type unknown", _token(type="webpush"), Code.TOKEN_TYPE_INVALID),
]


@pytest.mark.parametrize(
    ("record", "code"), [(r, c) for _, r, c in REJECTED], ids=[name for name, _, _ in REJECTED]
)
def test_each_rule_rejects_with_its_code_and_position(
    client: httpx.Client, sandbox: Sandbox, record: Any, code: Code
) -> None:
    good = event("ok")
    response = upload(client, [good, good, record, good])
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["processed"] == 3
    [failure] = body["unprocessed"]
    assert failure["status"] == "fail"
    assert failure["code"] == code
    assert failure["error"].endswith("Skipped record number : 3")
    assert isinstance(failure["record"], str)
    assert orjson.loads(failure["record"]) == record
    stats = sandbox.stats()
    assert (stats.records_accepted, stats.records_rejected) == (3, 1)
    assert stats.rejected_by_code == {int(code): 1}


def test_the_gender_text_is_the_recorded_one(client: httpx.Client) -> None:
    [failure] = upload(client, [profile("6", Gender="X")]).json()["unprocessed"]
    assert failure["error"] == (
        "Profile data is incorrect. Gender needs to be M/F.Skipped record number : 1"
    )


def test_the_phone_text(client: httpx.Client) -> None:
    records = [event("a"), event("b"), profile("c", Phone="123")]
    [failure] = upload(client, records).json()["unprocessed"]
    assert failure["error"] == "Phone number is invalid. Skipped record number : 3"


@pytest.mark.parametrize(
    "record",
    [
        profile("u1", Gender="M", Email="a@example.com", Phone="+4915112345", Age=40),
        profile("u1", Employed="Y", Education="Graduate", Married="N", Age=40.5),
        profile("u1"),
        _without(profile("u1"), "profileData"),
        _without(event("u1"), "evtData"),
        _without(event("u1"), "ts"),
        event("u1", "Charged", evtData={"Amount": 10, "Items": [{"sku": "A"}]}),
        event("x" * 119),
        event("u1") | {"identity": 12345},
        _by_object_id("__g1"),
        _without(event("u1"), "identity") | {"FBID": "fb1"},
        _without(event("u1"), "identity") | {"GPID": "gp1"},
        TOKEN,
        _token(type="apns"),
        _token(type="gcm"),
    ],
)
def test_valid_records_are_processed(client: httpx.Client, record: dict[str, Any]) -> None:
    assert upload(client, [record]).json() == {"status": "success", "processed": 1}


def test_all_rejected_is_still_200_success_with_processed_0(client: httpx.Client) -> None:
    response = upload(client, [event("u1", "Stayed"), profile("u1", Gender="?")])
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["processed"]) == ("success", 0)
    assert [f["code"] for f in body["unprocessed"]] == [513, 514]
    assert [f["error"][-1] for f in body["unprocessed"]] == ["1", "2"]


def test_only_100_tokens_per_request(client: httpx.Client, sandbox: Sandbox) -> None:
    tokens = [_token(objectId=f"o{n}", id=f"t{n}") for n in range(102)]
    body = upload(client, tokens).json()
    assert body["processed"] == 100
    assert [f["code"] for f in body["unprocessed"]] == [535, 535]
    assert body["unprocessed"][0]["error"].endswith("Skipped record number : 101")
    assert sandbox.stats().tokens == 100


def test_one_request_mixes_profiles_events_and_tokens(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    body = upload(client, [profile("u1", Name="A"), event("u1"), TOKEN]).json()
    assert body == {"status": "success", "processed": 3}
    stats = sandbox.stats()
    assert (stats.profiles, stats.events, stats.tokens) == (1, 1, 1)
