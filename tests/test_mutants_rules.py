"""CleverTap data rules that mutation testing (`make mutate MUTATE=rules`) showed no test
checked. Expectations from clevertap-api.md, written by hand."""

from __future__ import annotations

from typing import Any

import pytest

from ctsync.rules import check_upload, profile_operation

# -- identifiers: exactly one of identity, objectId, FBID, GPID ------------------------


@pytest.mark.parametrize("identifier", ["FBID", "GPID"])
def test_fbid_and_gpid_are_identifiers(identifier: str) -> None:
    profile = {"type": "profile", identifier: "1234567890", "profileData": {"Name": "Ada"}}
    assert check_upload(profile) == []
    event = {"type": "event", identifier: "1234567890", "evtName": "Signed Up", "evtData": {}}
    assert check_upload(event) == []


@pytest.mark.parametrize("identifier", ["FBID", "GPID"])
def test_fbid_or_gpid_beside_an_identity_is_two_identifiers(identifier: str) -> None:
    record = {"type": "profile", "identity": "u1", identifier: "123", "profileData": {}}
    assert [v.code for v in check_upload(record)] == ["523"]


@pytest.mark.parametrize("identifier", ["identity", "FBID", "GPID"])
def test_a_token_is_identified_by_its_objectid_alone(identifier: str) -> None:
    token = {
        "type": "token",
        "objectId": "__g1",
        identifier: "x",
        "tokenData": {"id": "t", "type": "fcm"},
    }
    assert [v.code for v in check_upload(token)] == ["530"]


@pytest.mark.parametrize("kind", ["fcm", "apns", "gcm"])
def test_the_three_token_types_are_valid(kind: str) -> None:
    token = {"type": "token", "objectId": "__g1", "tokenData": {"id": "t", "type": kind}}
    assert check_upload(token) == []


# -- profile operations: {"$add": [...]}, {"$remove": [...]}, {"$incr": n}, ... --------


@pytest.mark.parametrize(
    "value",
    [{"$add": ["a"]}, {"$remove": ["a"]}, {"$incr": 1}, {"$decr": 2}, {"$delete": 1}],
)
def test_each_documented_operator_is_an_operation(value: dict[str, Any]) -> None:
    assert profile_operation(value) == next(iter(value))


@pytest.mark.parametrize(
    "value", [{"$incr": 1, "$decr": 1}, {"$multiply": 2}, {"incr": 1}, ["$incr"], "$incr", {}]
)
def test_anything_else_is_a_value(value: Any) -> None:
    assert profile_operation(value) is None


def test_standard_keys_do_not_count_toward_the_256_custom_properties() -> None:
    custom: dict[str, Any] = {f"custom_{i}": i for i in range(256)}
    standard: dict[str, Any] = {
        "Name": "Ada",
        "Email": "ada@example.com",
        "Phone": "+4915112345678",
        "Gender": "F",
        "DOB": "$D_631152000",
        "Photo": "https://example.com/ada.png",
        "Employed": "Y",
        "Education": "Graduate",
        "Married": "N",
        "Age": 36,
        "Identity": "u1",
        "MSG-email": True,
    }
    data = {**custom, **standard}
    assert check_upload({"type": "profile", "identity": "u1", "profileData": data}) == []
    one_more = {"type": "profile", "identity": "u1", "profileData": {**data, "custom_256": 1}}
    assert [v.code for v in check_upload(one_more)] == ["512"]
