"""Preset behaviour that mutation testing (`make mutate MUTATE=classic`) showed no test
checked. Expectations from segment-behaviour.md and clevertap-api.md, written by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ctsync.presets import MappingOptions
from ctsync.presets.classic import classic_mapper, clevertap_date
from ctsync.records import Invalid, Upload

TS = "2023-05-18T22:58:45Z"


def token_of(context: dict[str, Any]) -> dict[str, Any] | None:
    message = {
        "type": "track",
        "userId": "u1",
        "anonymousId": "a1",
        "event": "App Opened",
        "timestamp": TS,
        "context": context,
    }
    result = classic_mapper(MappingOptions())(message)
    assert isinstance(result, list)
    tokens = [op.record for op in result if isinstance(op, Upload) and op.record["type"] == "token"]
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


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ({}, "no identity: userId or anonymousId is missing or empty"),
        (
            {"userId": "", "anonymousId": ""},
            "no identity: userId or anonymousId is missing or empty",
        ),
        (
            {"userId": 1.5},
            "identity: userId is a number with a fraction, an exponent or beyond 64 bits (1.5); "
            "it cannot be taken exactly",
        ),
    ],
)
def test_a_message_without_a_usable_identity_says_which_field(
    ids: dict[str, Any], message: str
) -> None:
    result = mapped({"type": "identify", "traits": {}, **ids})
    assert isinstance(result, Invalid)
    assert (result.code, result.message) == ("523", message)
