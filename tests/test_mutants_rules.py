"""CleverTap data rules that mutation testing (`make mutate MUTATE=rules`) showed no test
checked. Expectations from clevertap-api.md, written by hand."""

from __future__ import annotations

from typing import Any

import pytest

from ctsync.rules import check_upload, fix_upload, profile_operation

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
    [
        {"$add": ["a"]},
        {"$remove": ["a"]},
        {"$incr": 1},
        {"$decr": 2},
        {"$delete": 1},
        {"$set": "$D_1136225047"},  # README: "$set" is one of the operations sent as written
    ],
)
def test_each_documented_operator_is_an_operation(value: dict[str, Any]) -> None:
    assert profile_operation(value) == next(iter(value))


# CleverTap's system events (the "System Events" table of docs.clevertap.com/docs/events;
# clevertap-api.md names five of them as examples): raising one is refused with 513,
# whatever its case and spacing.
SYSTEM_EVENTS = [
    "App Installed",
    "App Launched",
    "App Uninstalled",
    "Notification Sent",
    "Notification Viewed",
    "Notification Clicked",
    "Push Impressions",
    "UTM Visited",
    "Stayed",
    "Session Concluded",
    "Geocluster Entered",
    "Geocluster Exited",
]


@pytest.mark.parametrize("name", SYSTEM_EVENTS)
def test_a_system_event_cannot_be_raised(name: str) -> None:
    for written in (name, name.upper(), name.replace(" ", "")):
        event = {"type": "event", "identity": "u1", "evtName": written}
        assert [v.code for v in check_upload(event)] == ["513"]


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


# -- standard profile values: each documented value passes ----------------------------


def profile(**data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": "u1", "profileData": data}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Gender", "M"),
        ("Gender", "F"),
        ("Employed", "Y"),
        ("Employed", "N"),
        ("Education", "School"),
        ("Education", "College"),
        ("Education", "Graduate"),
        ("Married", "Y"),
        ("Married", "N"),
    ],
)
def test_each_documented_value_of_a_standard_key_is_valid(key: str, value: str) -> None:
    # clevertap-api.md: Employed (Y/N), Education (School/College/Graduate), Married (Y/N).
    assert check_upload(profile(**{key: value})) == []


def test_an_identity_of_119_characters_is_valid_and_of_120_is_not() -> None:
    # clevertap-api.md: identity "under 120 characters" (523 otherwise).
    assert check_upload({"type": "event", "identity": "u" * 119, "evtName": "E"}) == []
    assert check_upload(profile() | {"identity": "u" * 119}) == []
    (violation,) = check_upload(profile() | {"identity": "u" * 120})
    assert violation.code == "523"
    # Beside a second identifier, the one reason is the second identifier, not the length.
    (violation,) = check_upload(profile() | {"identity": "u" * 119, "GPID": "1"})
    assert violation.message == "identity and GPID: a record carries exactly one identifier"


# -- what each violation tells the user (the report's message) ------------------------
# The report's `message` says what was wrong and what CleverTap takes (the values as
# clevertap-api.md gives them); a broken wording reaches every report.


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ({"Gender": "X"}, "514", "Gender 'X' is invalid: must be M or F"),
        ({"Email": "ada"}, "515", "Email 'ada' is invalid: must be an email address"),
        (
            {"Phone": "12"},
            "516",
            "Phone '12' is invalid: must be + then country code and number, digits only",
        ),
        ({"Employed": "yes"}, "517", "Employed 'yes' is invalid: must be Y or N"),
        (
            {"Education": "PhD"},
            "518",
            "Education 'PhD' is invalid: must be School, College or Graduate",
        ),
        ({"Married": "no"}, "519", "Married 'no' is invalid: must be Y or N"),
        ({"Age": "old"}, "520", "Age 'old' is invalid: must be a number"),
        ({"MSG-email": "yes"}, "512", "MSG-email 'yes' is invalid: must be true or false"),
        (
            {"category-unsubscribe": "email"},
            "512",
            "category-unsubscribe 'email' is invalid: must be an object of arrays of "
            'category names, like {"email": ["Marketing"]}',
        ),
    ],
)
def test_a_bad_standard_value_says_what_clevertap_takes(
    data: dict[str, Any], code: str, message: str
) -> None:
    (violation,) = check_upload(profile(**data))
    assert (violation.code, violation.message) == (code, message)


def token(**data: Any) -> dict[str, Any]:
    return {"type": "token", "objectId": "__g1", "tokenData": data}


@pytest.mark.parametrize(
    ("record", "code", "message"),
    [
        ({"type": "user"}, "524", "type 'user' is not profile, event or token"),
        (
            {"type": "profile", "profileData": {}},
            "523",
            "no identifier: one of identity, objectId, FBID, GPID",
        ),
        (
            {"type": "profile", "identity": "u1", "FBID": "1", "profileData": {}},
            "523",
            "identity and FBID: a record carries exactly one identifier",
        ),
        (
            {"type": "profile", "identity": "", "profileData": {}},
            "523",
            "identity must be a string of 1 to 119 characters",
        ),
        (
            {"type": "profile", "objectId": "", "profileData": {}},
            "526",
            "objectId must be a non-empty string",
        ),
        (
            {"type": "profile", "identity": "u1", "ts": "2024-01-01", "profileData": {}},
            "525",
            "ts '2024-01-01' is not integer Unix epoch seconds",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {7: "x"}},
            "512",
            "profile key 7 is not a string",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"k" * 121: "x"}},
            "512",
            f"profile key {'k' * 40!r}... is over 120 characters",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"a.b": "x"}},
            "512",
            "profile key 'a.b' has a character CleverTap forbids in keys",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"bio": "é" * 300}},
            "512",
            "value of 'bio' is over 512 bytes",
        ),
        ({"type": "profile", "identity": "u1"}, "512", "profileData is missing or not an object"),
        (
            {"type": "profile", "identity": "u1", "profileData": {f"c{i}": i for i in range(257)}},
            "512",
            "257 custom profile properties; CleverTap allows 256",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"n": {"$incr": "x"}}},
            "512",
            "n: $incr takes a number, not 'x'",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"tags": {"$add": 5}}},
            "512",
            "tags: $add takes a string or an array of strings",
        ),
        ({"type": "event", "identity": "u1"}, "509", "evtName is missing or empty"),
        (
            {"type": "event", "identity": "u1", "evtName": "a.b"},
            "512",
            "event name 'a.b' has a character CleverTap forbids",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "App Launched"},
            "513",
            "'App Launched' is a CleverTap system event; it cannot be raised",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "E", "evtData": "x"},
            "512",
            "evtData is not an object",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "E", "evtData": {"a.b": 1}},
            "512",
            "event property key 'a.b' has a character CleverTap forbids in keys",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "Charged", "evtData": {"a": {"b": 1}}},
            "512",
            "event property 'a' is nested; values must be scalars",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": {"sku": "a"}},
            },
            "512",
            "Charged Items is not a list",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": [{}] * 51},
            },
            "512",
            "Charged has 51 Items; keep them at 50 or fewer",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": [{"a.b": 1}]},
            },
            "512",
            "Items key 'a.b' has a character CleverTap forbids in keys",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": [{"x": [1]}]},
            },
            "512",
            "Charged Items #1 'x' is nested; keep it flat",
        ),
        (
            {"type": "token", "objectId": "", "tokenData": {"id": "t", "type": "fcm"}},
            "530",
            "a token record needs an objectId (the CleverTap ID)",
        ),
        # clevertap-api.md: a token record is {"type":"token","objectId":...,"tokenData":
        # {"id":"<token>","type":"fcm"|"apns"|"gcm"}}; 530-535 say which part is wrong.
        (token(id="", type="fcm"), "532", "tokenData has no id"),
        (token(type="fcm"), "532", "tokenData has no id"),
        (token(id=12345, type="fcm"), "535", "token id 12345 is not a string"),
        (token(id="t", type=""), "533", "tokenData has no type"),
        (token(id="t"), "533", "tokenData has no type"),
        (token(id="t", type="sms"), "534", "token type 'sms' is not fcm, apns or gcm"),
        (
            {"type": "token", "objectId": "__g1", "tokenData": "t"},
            "531",
            "tokenData is missing or not an object",
        ),
        (
            {**token(id="t", type="fcm"), "identity": "u1"},
            "530",
            "a token record is identified by objectId alone",
        ),
    ],
)
def test_a_broken_record_says_what_is_wrong(
    record: dict[str, Any], code: str, message: str
) -> None:
    (violation,) = check_upload(record)
    assert (violation.code, violation.message) == (code, message)


def test_too_many_event_properties_says_how_many_and_the_limit() -> None:
    event = {"type": "event", "identity": "u1", "evtName": "E", "evtData": {"a": 1, "b": 2}}
    (violation,) = check_upload(event, max_event_properties=1)
    assert (violation.code, violation.message) == ("522", "2 event properties; the limit is 1")


def test_each_charged_item_that_is_not_an_object_is_named_by_its_position() -> None:
    event = {"type": "event", "identity": "u1", "evtName": "Charged", "evtData": {}}
    event["evtData"] = {"Items": ["x", {"sku": "a"}, 3]}
    assert [(v.code, v.message) for v in check_upload(event)] == [
        ("512", "Charged Items #1 is not an object"),
        ("512", "Charged Items #3 is not an object"),
    ]


# -- --validate fix: survivors of the run over the end of rules.py ----------------------


@pytest.mark.parametrize(("gender", "sent"), [("m", "M"), ("M ", "M"), ("F", "F")])
def test_a_one_letter_gender_is_sent_as_clevertap_writes_it(gender: str, sent: str) -> None:
    record = {"type": "profile", "identity": "u1", "profileData": {"Gender": gender}}
    fixed, _, left = fix_upload(record)
    assert left == []
    assert fixed["profileData"] == {"Gender": sent}


def test_a_fix_says_what_was_sent_or_left_out() -> None:
    record = {
        "type": "profile",
        "identity": "u1",
        "profileData": {"Phone": "+44 20 7946 0001", "Email": "ada@"},
    }
    _, fixes, _ = fix_upload(record)
    assert sorted((fix.field, fix.code, fix.message) for fix in fixes) == [
        ("Email", "515", "Email 'ada@' left out (must be an email address); the rest was sent"),
        ("Phone", "516", "Phone '+44 20 7946 0001' sent as '+442079460001'"),
    ]
