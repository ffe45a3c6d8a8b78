"""Preset behaviour that mutation testing (`make mutate MUTATE=classic`) showed no test
checked. Expectations from segment-behaviour.md and clevertap-api.md, written by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ctsync.mapping import dropped_values
from ctsync.presets import MappingOptions
from ctsync.presets.classic import classic_mapper, clevertap_date
from ctsync.records import Invalid, Upload

TS = "2023-05-18T22:58:45Z"


def app_opened(context: dict[str, Any], anonymous_id: object = "a1") -> dict[str, Any]:
    """User u1's track at TS from a device described by `context`."""
    return {
        "type": "track",
        "userId": "u1",
        "anonymousId": anonymous_id,
        "event": "App Opened",
        "timestamp": TS,
        "context": context,
    }


def tokens_in(result: object) -> list[dict[str, Any]]:
    assert isinstance(result, list), result
    return [op.record for op in result if isinstance(op, Upload) and op.record["type"] == "token"]


def token_of(context: dict[str, Any]) -> dict[str, Any] | None:
    tokens = tokens_in(classic_mapper(MappingOptions())(app_opened(context)))
    return tokens[0] if tokens else None


# Every Apple platform delivers push through APNs; Segment's libraries name the platform
# in context.device.type (or, from other sources, context.os.name) in any case.
@pytest.mark.parametrize("platform", ["iPadOS", "watchOS", "tvOS", "macOS", "visionOS"])
def test_every_apple_platform_token_is_an_apns_token(platform: str) -> None:
    assert token_of({"device": {"token": "tok-1", "type": platform}}) == {
        "type": "token",
        "objectId": "a1",
        "tokenData": {"id": "tok-1", "type": "apns"},
    }


@pytest.mark.parametrize(("os_name", "kind"), [("Android", "fcm"), ("iOS", "apns")])
def test_without_a_device_type_the_os_name_says_which_token(os_name: str, kind: str) -> None:
    token = token_of({"device": {"token": "tok-1"}, "os": {"name": os_name}})
    assert token is not None and token["tokenData"] == {"id": "tok-1", "type": kind}


# -- dates as CleverTap date values: "$D_<epoch seconds>" (clevertap-api.md) ----------


@pytest.mark.parametrize(
    ("value", "date"),
    [
        (633830400, "$D_633830400"),  # 1990-02-01 in epoch seconds
        (633830400000, "$D_633830400"),  # the same in milliseconds
        (633830400.75, "$D_633830400"),  # fractions truncated toward the past
        ("1990-02-01", "$D_633830400"),
        ("1990-02-01T00:00:00Z", "$D_633830400"),
    ],
)
def test_dates_become_clevertap_date_values(value: object, date: str) -> None:
    assert clevertap_date(value) == date


@pytest.mark.parametrize("value", [True, False, None, "01/02/1990", "tomorrow", [633830400]])
def test_what_is_not_a_date_is_left_alone(value: object) -> None:
    assert clevertap_date(value) == value


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_number_is_left_alone(value: float) -> None:
    assert clevertap_date(value) == value


def test_a_nan_is_left_alone() -> None:
    result = clevertap_date(math.nan)
    assert isinstance(result, float) and math.isnan(result)


# -- identifiers: userId, else anonymousId as objectId (segment-behaviour.md) --------


def mapped(message: dict[str, Any]) -> object:
    return classic_mapper(MappingOptions())({"timestamp": TS, **message})


def test_an_empty_user_id_falls_back_to_the_anonymous_id() -> None:
    # segment-behaviour.md: a record needs an identity: userId, or the anonymousId as
    # objectId. An empty userId is no userId.
    result = mapped({"type": "identify", "userId": "", "anonymousId": "a1", "traits": {}})
    assert isinstance(result, list)
    (upload,) = result
    assert isinstance(upload, Upload)
    assert upload.record["objectId"] == "a1" and "identity" not in upload.record


NO_USER_ID = "no identity: userId is missing or empty"


# What the report shows for a message that cannot become a record: CleverTap's code
# (clevertap-api.md) and a reason naming the field at fault.
@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        (
            {"type": "identify", "traits": {}},
            "523",
            "no identity: userId or anonymousId is missing or empty",
        ),
        (
            {"type": "identify", "userId": "", "anonymousId": "", "traits": {}},
            "523",
            "no identity: userId or anonymousId is missing or empty",
        ),
        (
            {"type": "identify", "userId": 1.5, "traits": {}},
            "523",
            "identity: userId is a number with a fraction, an exponent or beyond 64 bits (1.5); "
            "it cannot be taken exactly",
        ),
        ({"type": "track", "userId": "u1"}, "509", "track has no event name"),
        ({"type": "track", "userId": "u1", "event": " "}, "509", "track has no event name"),
        # alias: the userId becomes the Identity, the previousId the objectId (526)
        ({"type": "alias", "previousId": "a1"}, "523", NO_USER_ID),
        ({"type": "alias", "userId": "", "previousId": "a1"}, "523", NO_USER_ID),
        (
            {"type": "alias", "userId": "u1"},
            "526",
            "no identity: previousId is missing or empty",
        ),
        (
            {"type": "alias", "userId": "u1", "previousId": 2.5},
            "526",
            "identity: previousId is a number with a fraction, an exponent or beyond 64 bits "
            "(2.5); it cannot be taken exactly",
        ),
    ],
)
def test_a_message_that_cannot_be_sent_says_which_field_and_why(
    message: dict[str, Any], code: str, reason: str
) -> None:
    result = mapped(message)
    assert isinstance(result, Invalid)
    assert (result.code, result.message) == (code, reason)


# -- profiles -------------------------------------------------------------------------


def test_an_unset_special_trait_leaves_the_traits_after_it_alone() -> None:
    # A null special trait is not sent (null would fail CleverTap's checks); the traits
    # after it are still mapped: special ones renamed, the rest snake_cased.
    traits = {"email": None, "name": "Ann Lee", "phone": None, "planType": "pro"}
    result = mapped({"type": "identify", "userId": "u1", "traits": traits})
    assert isinstance(result, list)
    (upload,) = result
    assert isinstance(upload, Upload)
    assert upload.record["profileData"] == {"Name": "Ann Lee", "plan_type": "pro"}


# -- Charged (README, presets table) --------------------------------------------------
# Amount = total, else revenue, else the products' sum; total, revenue, order_id and
# currency stay properties beside the Charged fields, as written (null included: like
# every other property); products that are not a list are left out and counted in
# `dropped_values` under "products".


O1 = {"order_id": "o1"}  # kept beside its Charged ID
C1 = {"Charged ID": "o1", **O1}


@pytest.mark.parametrize(
    ("properties", "data", "dropped"),
    [
        ({"total": 30, "revenue": 25}, {"Amount": 30, "total": 30, "revenue": 25}, {}),
        ({"total": None, "revenue": 25}, {"Amount": 25, "total": None, "revenue": 25}, {}),
        (
            {"total": None, "revenue": None, "products": [{"price": 3, "quantity": 2}]},
            {"Amount": 6, "total": None, "revenue": None, "Items": [{"price": 3, "quantity": 2}]},
            {},
        ),
        ({"order_id": "o1", "products": {"sku": "s1"}}, C1, {"products": 2}),
        ({"order_id": "o1", "products": "s1"}, C1, {"products": 2}),
        ({"order_id": "o1", "products": None}, C1, {}),
        ({"order_id": "o1"}, C1, {}),
    ],
)
def test_charged_keeps_the_unused_amount_field_and_counts_products_left_out(
    properties: dict[str, Any], data: dict[str, Any], dropped: dict[str, int]
) -> None:
    mapper = classic_mapper(MappingOptions())
    message = {"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": TS}
    for _ in range(2):  # the counter adds up over a run
        result = mapper({**message, "properties": properties})
        assert isinstance(result, list)
        (upload,) = result
        assert isinstance(upload, Upload)
        assert upload.record["evtName"] == "Charged"
        assert upload.record["evtData"] == data
    assert dropped_values(mapper) == dropped


# -- device tokens (README, presets table) --------------------------------------------
# A token record needs a token (a non-empty string) and an objectId (the anonymousId, a
# non-empty string); without the objectId it is counted as "token:no-objectId", and a
# token that is not text as "token:not-a-string".


@pytest.mark.parametrize(
    ("token", "anonymous_id", "dropped"),
    [
        ("", "a1", {}),  # an empty token is no token
        (None, "a1", {}),
        ("tok-1", "", {"token:no-objectId": 1}),
        ("tok-1", None, {"token:no-objectId": 1}),
        # README: "every token that cannot be sent is counted"; a token is text
        (12345, "a1", {"token:not-a-string": 1}),
        ({"id": "tok-1"}, "a1", {"token:not-a-string": 1}),
    ],
)
def test_no_token_record_without_a_token_and_an_object_id(
    token: object, anonymous_id: object, dropped: dict[str, int]
) -> None:
    mapper = classic_mapper(MappingOptions())
    context = {"device": {"token": token, "type": "android"}}
    result = mapper(app_opened(context, anonymous_id))
    assert tokens_in(result) == []
    assert dropped_values(mapper) == dropped


def test_a_token_lands_on_the_profile_its_message_names() -> None:
    # An integer anonymousId is the objectId "42" of the anonymous user's own records
    # (as userId is sent as its decimal string); its token must go to that profile.
    message = {**app_opened({"device": {"token": "tok-1", "type": "android"}}, 42)}
    del message["userId"]
    mapper = classic_mapper(MappingOptions())
    result = mapper(message)
    assert isinstance(result, list)
    records = [op.record for op in result if isinstance(op, Upload)]
    assert [(r["type"], r["objectId"]) for r in records] == [("event", "42"), ("token", "42")]
    assert dropped_values(mapper) == {}
    # one that cannot be an id (a fraction) is no objectId, and is counted
    fraction = mapper(app_opened({"device": {"token": "tok-1", "type": "android"}}, 4.5))
    assert tokens_in(fraction) == []
    assert dropped_values(mapper) == {"token:no-objectId": 1}


def test_a_token_is_sent_once_per_profile_and_device_token_in_a_run() -> None:
    # classic.py's docstring: "a token record, once per device token and profile per run".
    mapper = classic_mapper(MappingOptions())
    sent: list[tuple[str, str]] = []
    for anonymous_id, token in [
        ("a1", "t1"),
        ("a1", "t2"),
        ("a2", "t1"),
        ("a1", "t1"),
        ("a2", "t1"),
    ]:
        context = {"device": {"token": token, "type": "ios"}}
        sent += [
            (record["objectId"], record["tokenData"]["id"])
            for record in tokens_in(mapper(app_opened(context, anonymous_id)))
        ]
    assert sent == [("a1", "t1"), ("a1", "t2"), ("a2", "t1")]
