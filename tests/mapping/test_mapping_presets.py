"""The presets as mapping files: `actions` is exact, `classic` is the documented subset."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctsync.mapping import build_mapper, parse_mapping, preset_as_mapping
from ctsync.presets import MappingOptions
from ctsync.presets.actions import actions_mapper
from ctsync.records import Mapper, Message, Upload
from ctsync.timestamps import DatesAs
from tests.helpers import examples

NOW = 1_700_000_000.0

OPTIONS = [
    MappingOptions(),
    MappingOptions(convert_timestamps=False),
    MappingOptions(dates_as=DatesAs.CLEVERTAP),
]

VARIED: list[Message] = [
    {"type": "identify", "userId": "u1", "timestamp": "2023-05-18T22:58:45Z", "traits": {}},
    {
        "type": "identify",
        "userId": "u1",
        "timestamp": "2023-05-18T22:58:45.123+02:00",
        "traits": {
            "email": "a@b.co",
            "createdAt": "2006-01-02T18:04:07Z",
            "address": {"since": "2019-02-01", "city": "X"},
            "tags": ["2019-02-01"],
            "phone": "+15551234567",
            "precise": "2025-08-13T02:08:40.1418726Z",
        },
    },
    {"type": "identify", "userId": 42, "timestamp": 1700000000123, "traits": {"a": 1}},
    {"type": "identify", "userId": "", "traits": {"a": 1}},
    {"type": "identify", "anonymousId": "a1", "traits": {"a": 1}},
    {"type": "identify", "userId": True, "traits": {}},
    {"type": "identify", "userId": "x" * 120, "traits": {}},
    {"type": "identify", "userId": {"id": 1}},
    {"type": "identify", "userId": "u1", "traits": ["not", "an", "object"]},
    {"type": "identify", "userId": "u1", "timestamp": "yesterday"},
    {"type": "identify", "userId": "u1", "timestamp": None, "traits": {"n": None}},
    {"type": "identify", "userId": "u1", "timestamp": 1700000000.9},
    {"type": "identify", "userId": "u1", "event": "Delete User", "traits": {"x": 1}},
    {"type": "identify", "event": "Delete User"},
    {"type": "track", "userId": "u1", "event": "Delete User", "timestamp": "2024-01-01"},
    {"type": "track", "event": "Delete User"},
    {"type": "track", "userId": 7.5, "event": "Delete User"},
    {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": 1}},
    {"type": "page", "userId": "u1", "name": "Home"},
    {"type": "group", "userId": "u1", "groupId": "g1"},
    {"userId": "u1"},
    {},
]


def same_results(message: Message, options: MappingOptions) -> None:
    preset = actions_mapper(options)
    as_file = build_mapper(parse_mapping(preset_as_mapping("actions")), options)
    assert as_file(message) == preset(message)


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages without a timestamp are sent at "now": fix it so both mappers agree.
    monkeypatch.setattr(time, "time", lambda: NOW)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("message", VARIED)
def test_actions_mapping_file_equals_actions_preset(
    message: Message, options: MappingOptions
) -> None:
    same_results(message, options)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["2023-05-18T22:58:45Z", "2019-02-01", "2018-03-04T12:08:56 PDT", "+1555"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["identify", "track", "page", "screen", "group", "alias", 3]),
        "event": st.sampled_from(["Delete User", "Order Completed", "delete user", ""]),
        "userId": st.one_of(json_scalars, st.text(min_size=118, max_size=122)),
        "anonymousId": st.text(max_size=8),
        "timestamp": st.one_of(json_scalars, st.integers(min_value=0, max_value=2_000_000_000_000)),
        "traits": json_values,
        "properties": json_values,
    },
)


@settings(max_examples=examples(300))
@given(message=messages, options=st.sampled_from(OPTIONS))
def test_actions_mapping_file_equals_actions_preset_for_any_message(
    message: Message, options: MappingOptions
) -> None:
    same_results(message, options)


def test_classic_mapping_file_covers_the_expressible_behaviours() -> None:
    mapping_file = parse_mapping(preset_as_mapping("classic"))
    assert "snake_casing" in mapping_file.description
    mapper: Mapper = build_mapper(mapping_file, MappingOptions())
    order = {
        "type": "track",
        "userId": "u1",
        "anonymousId": "a1",
        "event": "Order Completed",
        "timestamp": "2023-05-18T22:58:45Z",
        "properties": {
            "order_id": "o1",
            "total": 30,
            "currency": "EUR",
            "products": [{"sku": "s"}],
        },
        "context": {"device": {"token": "tok", "type": "ios"}},
    }
    result = mapper(order)
    assert isinstance(result, list)
    assert [op.record for op in result if isinstance(op, Upload)] == [
        {
            "type": "event",
            "identity": "u1",
            "ts": 1684450725,
            "evtName": "Charged",
            "evtData": {
                "Charged ID": "o1",
                "Amount": 30,
                "Currency": "EUR",
                "Items": [{"sku": "s"}],
            },
        },
        {"type": "token", "objectId": "a1", "tokenData": {"id": "tok", "type": "apns"}},
    ]
    alias = {
        "type": "alias",
        "userId": "u1",
        "previousId": "a0",
        "timestamp": "2023-05-18T22:58:45Z",
    }
    assert mapper(alias) == [
        Upload(
            {
                "type": "profile",
                "objectId": "a0",
                "ts": 1684450725,
                "profileData": {"Identity": "u1"},
            }
        )
    ]


def test_preset_as_mapping_returns_a_fresh_copy_and_rejects_unknown_names() -> None:
    first = preset_as_mapping("actions")
    first["subscriptions"].clear()
    assert len(preset_as_mapping("actions")["subscriptions"]) == 2
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        preset_as_mapping("nope")


# --- the classic mapping file follows the preset where directives reach (issue 10) -------


def classic_file() -> Mapper:
    return build_mapper(parse_mapping(preset_as_mapping("classic")), MappingOptions())


def uploads(result: object) -> list[dict[str, object]]:
    assert isinstance(result, list), result
    return [op.record for op in result if isinstance(op, Upload)]


def test_classic_mapping_file_passes_reserved_keys_and_makes_name() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": "2023-05-18T22:58:45Z",
        "traits": {
            "firstName": "Ada",
            "lastName": "Lovelace",
            "MSG-email": False,
            "MSG-dndPhone": True,
            "category-unsubscribe": {"email": ["Marketing"]},
        },
    }
    assert uploads(classic_file()(message))[0]["profileData"] == {
        "Name": "Ada Lovelace",
        "MSG-email": False,
        "MSG-dndPhone": True,
        "category-unsubscribe": {"email": ["Marketing"]},
    }
    named = {**message, "traits": {"name": "Ada", "firstName": "A", "lastName": "L"}}
    assert uploads(classic_file()(named))[0]["profileData"] == {"Name": "Ada"}
    half = {**message, "traits": {"firstName": "Ada"}}
    assert uploads(classic_file()(half))[0]["profileData"] == {}


@pytest.mark.parametrize("event", ["Order Completed", "order completed", "ORDER COMPLETED"])
def test_classic_mapping_file_charges_order_completed_in_any_case_with_total(event: str) -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": event,
        "timestamp": "2023-05-18T22:58:45Z",
        "properties": {"order_id": "o1", "total": 30, "revenue": 25},
    }
    (record,) = uploads(classic_file()(message))
    assert record["evtName"] == "Charged"
    assert record["evtData"] == {"Charged ID": "o1", "Amount": 30}
    revenue_only = {**message, "properties": {"revenue": 25}}
    assert uploads(classic_file()(revenue_only))[0]["evtData"] == {"Amount": 25}
    other = {**message, "event": "Order Completed Twice"}
    assert uploads(classic_file()(other))[0]["evtName"] == "Order Completed Twice"


@pytest.mark.parametrize(
    ("device_type", "kind"),
    [
        ("android", "fcm"),
        ("ANDROID", "fcm"),
        ("ios", "apns"),
        ("iPadOS", "apns"),
        ("watchOS", "apns"),
        ("tvos", "apns"),
        ("macOS", "apns"),
    ],
)
def test_classic_mapping_file_sends_tokens_of_every_apple_platform(
    device_type: str, kind: str
) -> None:
    message = {
        "type": "screen",
        "anonymousId": "a1",
        "name": "Home",
        "timestamp": "2023-05-18T22:58:45Z",
        "context": {"device": {"token": "tok", "type": device_type}},
    }
    assert uploads(classic_file()(message))[1] == {
        "type": "token",
        "objectId": "a1",
        "tokenData": {"id": "tok", "type": kind},
    }
    web = {**message, "context": {"device": {"token": "tok", "type": "web"}}}
    assert [r["type"] for r in uploads(classic_file()(web))] == ["event"]
