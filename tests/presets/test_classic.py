"""`--preset classic`: Segment's classic CleverTap destination (seed 004).

Expected records are written by hand from the destination's documentation and
clevertap-api.md. Epochs: 2023-05-18T22:58:45Z is 1684450725 and 2006-01-02T18:04:07Z is
1136225047 (segment-behaviour.md); 1990-02-01 is 7336 days after 1970-01-01, 633830400.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctsync.mapping import dropped_values
from ctsync.prepare import Ready, ValidateMode, op_of, prepare, rules_validator
from ctsync.presets import MappingOptions, Nested
from ctsync.presets.classic import classic_mapper
from ctsync.records import Invalid, Operation, Skip, Upload
from ctsync.rules import check_upload
from ctsync.timestamps import DatesAs
from tests.helpers import RESERVED_TRAITS, examples

TS = "2023-05-18T22:58:45Z"
EPOCH = 1684450725


def records(result: list[Operation] | Skip | Invalid) -> list[dict[str, Any]]:
    assert isinstance(result, list), result
    assert all(isinstance(op, Upload) for op in result)
    return [op.record for op in result if isinstance(op, Upload)]


def event_record(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """The CleverTap event `classic` sends for user u1's message at TS (clevertap-api.md)."""
    return {"type": "event", "identity": "u1", "ts": EPOCH, "evtName": name, "evtData": data}


def identify(traits: dict[str, Any]) -> dict[str, Any]:
    """Segment's identify of user u1 at TS with `traits`."""
    return {"type": "identify", "userId": "u1", "timestamp": TS, "traits": traits}


def test_identify_golden() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "a1",
        "timestamp": TS,
        "traits": {
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "phone": "+441234567890",
            "gender": "female",
            "avatar": "https://example.com/ada.png",
            "birthday": "1990-02-01",
            "Industry Of Traits": "Computing",
            "favoriteColor": "green",
            "createdAt": "2006-01-02T18:04:07Z",
            "order_completed_last_30days": True,
        },
    }
    assert records(classic_mapper(MappingOptions())(message)) == [
        {
            "type": "profile",
            "identity": "u1",
            "ts": EPOCH,
            "profileData": {
                "Name": "Ada Lovelace",
                "Email": "ada@example.com",
                "Phone": "+441234567890",
                "Gender": "F",
                "Photo": "https://example.com/ada.png",
                "DOB": "$D_633830400",
                "industry_of_traits": "Computing",
                "favorite_color": "green",
                "created_at": 1136225047,
                "order_completed_last_30days": True,
            },
        }
    ]


def test_identify_without_user_id_uses_anonymous_id_as_object_id() -> None:
    message = {"type": "identify", "anonymousId": "a1", "timestamp": TS, "traits": {"plan": "pro"}}
    assert records(classic_mapper(MappingOptions())(message)) == [
        {"type": "profile", "objectId": "a1", "ts": EPOCH, "profileData": {"plan": "pro"}}
    ]


def test_message_without_any_id_is_invalid_523() -> None:
    result = classic_mapper(MappingOptions())({"type": "identify", "traits": {}})
    assert isinstance(result, Invalid)
    assert result.code == "523"


@pytest.mark.parametrize(
    ("given", "sent"), [("male", "M"), ("FEMALE", "F"), ("m", "M"), ("F", "F"), ("other", "other")]
)
def test_gender_is_normalised_to_m_or_f(given: str, sent: str) -> None:
    message = identify({"gender": given})
    assert records(classic_mapper(MappingOptions())(message))[0]["profileData"] == {"Gender": sent}


def test_dob_is_a_clevertap_date_whatever_dates_as_says() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": TS,
        "traits": {"birthday": "2006-01-02T18:04:07Z", "lastSeen": "2006-01-02T18:04:07Z"},
    }
    unix = classic_mapper(MappingOptions(dates_as=DatesAs.UNIX))(message)
    assert records(unix)[0]["profileData"] == {"DOB": "$D_1136225047", "last_seen": 1136225047}
    typed = classic_mapper(MappingOptions(dates_as=DatesAs.CLEVERTAP))(message)
    assert records(typed)[0]["profileData"] == {
        "DOB": "$D_1136225047",
        "last_seen": "$D_1136225047",
    }


def test_convert_timestamps_off_leaves_dates_alone() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": TS,
        "traits": {"birthday": "1990-02-01", "lastSeen": "2006-01-02T18:04:07Z"},
    }
    result = classic_mapper(MappingOptions(convert_timestamps=False))(message)
    assert records(result)[0]["profileData"] == {
        "DOB": "$D_633830400",  # CleverTap's date of birth is a date, whatever the rule says
        "last_seen": "2006-01-02T18:04:07Z",
    }


def test_track_golden() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Product Viewed",
        "timestamp": TS,
        "properties": {"productId": "p1", "Price In Euro": 9.5, "viewedAt": "2006-01-02T18:04:07Z"},
    }
    assert records(classic_mapper(MappingOptions())(message)) == [
        event_record(
            "Product Viewed", {"product_id": "p1", "price_in_euro": 9.5, "viewed_at": 1136225047}
        )
    ]


def test_track_without_event_name_is_invalid_509() -> None:
    result = classic_mapper(MappingOptions())({"type": "track", "userId": "u1", "timestamp": TS})
    assert isinstance(result, Invalid)
    assert result.code == "509"


def test_order_completed_golden() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "timestamp": TS,
        "properties": {
            "order_id": "o-50314b8e",
            "total": 27.5,
            "revenue": 25.0,
            "currency": "USD",
            "coupon": "hasbros",
            "products": [
                {"product_id": "507f1f77", "sku": "45790-32", "price": 19, "quantity": 1},
                {"productId": "505bd76785", "name": "UNO Card Game", "price": 3},
            ],
        },
    }
    assert records(classic_mapper(MappingOptions())(message)) == [
        event_record(
            "Charged",
            {
                "Charged ID": "o-50314b8e",
                "Amount": 27.5,  # total: what the customer paid (Segment's e-commerce spec)
                "Currency": "USD",
                # The source properties stay beside (CleverTap's iOS integration keeps
                # order_id and total; Android keeps every property but products).
                "order_id": "o-50314b8e",
                "total": 27.5,
                "currency": "USD",
                "revenue": 25.0,
                "coupon": "hasbros",
                "Items": [
                    {"product_id": "507f1f77", "sku": "45790-32", "price": 19, "quantity": 1},
                    {"product_id": "505bd76785", "name": "UNO Card Game", "price": 3},
                ],
            },
        )
    ]


def test_order_completed_amount_falls_back_to_revenue() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "timestamp": TS,
        "properties": {"order_id": "o1", "revenue": 25},
    }
    record = records(classic_mapper(MappingOptions())(message))[0]
    assert record["evtData"] == {"Charged ID": "o1", "Amount": 25, "order_id": "o1", "revenue": 25}


def test_order_completed_keeps_all_items_for_the_rules_to_judge() -> None:
    products = [{"sku": f"s{i}"} for i in range(60)]
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "timestamp": TS,
        "properties": {"products": products},
    }
    record = records(classic_mapper(MappingOptions())(message))[0]
    assert len(record["evtData"]["Items"]) == 60


def test_page_golden() -> None:
    message = {
        "type": "page",
        "anonymousId": "a1",
        "name": "Pricing",
        "timestamp": TS,
        "properties": {
            "url": "https://example.com/pricing",
            "path": "/pricing",
            "title": "Pricing",
        },
    }
    assert records(classic_mapper(MappingOptions())(message)) == [
        {
            "type": "event",
            "objectId": "a1",
            "ts": EPOCH,
            "evtName": "Web Page Viewed",
            "evtData": {
                "name": "Pricing",
                "url": "https://example.com/pricing",
                "path": "/pricing",
                "title": "Pricing",
            },
        }
    ]


def test_screen_golden() -> None:
    message = {
        "type": "screen",
        "userId": "u1",
        "name": "Home",
        "timestamp": TS,
        "properties": {"loadTime": 1.2},
    }
    assert records(classic_mapper(MappingOptions())(message)) == [
        event_record("App Screen Viewed", {"name": "Home", "load_time": 1.2})
    ]


def test_alias_golden() -> None:
    message = {"type": "alias", "userId": "u1", "previousId": "a1", "timestamp": TS}
    assert records(classic_mapper(MappingOptions())(message)) == [
        {"type": "profile", "objectId": "a1", "ts": EPOCH, "profileData": {"Identity": "u1"}}
    ]


def test_alias_without_previous_id_is_invalid() -> None:
    result = classic_mapper(MappingOptions())({"type": "alias", "userId": "u1", "timestamp": TS})
    assert isinstance(result, Invalid)
    assert result.code == "526"


def alias_with_token(**ids: str) -> dict[str, Any]:
    """An alias from an iOS device with its push token, with the ids given."""
    return {
        "type": "alias",
        "userId": "u1",
        "timestamp": TS,
        "context": {"device": {"token": "tok-1", "type": "ios"}},
        **ids,
    }


def test_an_alias_carries_its_token_to_the_profile_of_its_previous_id() -> None:
    # The alias goes to objectId = previousId (the anonymous profile); CleverTap takes
    # tokens by objectId only (clevertap-api.md), so the token goes to that profile too.
    mapper = classic_mapper(MappingOptions())
    assert records(mapper(alias_with_token(previousId="a1"))) == [
        {"type": "profile", "objectId": "a1", "ts": EPOCH, "profileData": {"Identity": "u1"}},
        {"type": "token", "objectId": "a1", "tokenData": {"id": "tok-1", "type": "apns"}},
    ]
    assert dropped_values(mapper) == {}


@pytest.mark.parametrize(
    ("ids", "token_object_id"),
    [
        ({"previousId": "a1", "anonymousId": "a1"}, "a1"),
        ({"previousId": "a1", "anonymousId": ""}, "a1"),
        # The device's own anonymous id, when it has one, is where its token belongs.
        ({"previousId": "old-user", "anonymousId": "a2"}, "a2"),
    ],
)
def test_an_alias_token_goes_to_the_anonymous_id(ids: dict[str, str], token_object_id: str) -> None:
    result = records(classic_mapper(MappingOptions())(alias_with_token(**ids)))
    assert result[0]["objectId"] == ids["previousId"]
    assert result[1] == {
        "type": "token",
        "objectId": token_object_id,
        "tokenData": {"id": "tok-1", "type": "apns"},
    }


def test_only_an_alias_takes_its_token_id_from_previous_id() -> None:
    mapper = classic_mapper(MappingOptions())
    track = {**alias_with_token(previousId="a1"), "type": "track", "event": "E"}
    assert [r["type"] for r in records(mapper(track))] == ["event"]
    assert dropped_values(mapper) == {"token:no-objectId": 1}


def test_group_is_skipped() -> None:
    result = classic_mapper(MappingOptions())({"type": "group", "userId": "u1", "groupId": "g"})
    assert result == Skip("group")


@pytest.mark.parametrize(("device", "kind"), [("android", "fcm"), ("ios", "apns"), ("iOS", "apns")])
def test_device_token_golden(device: str, kind: str) -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "anonymousId": "a1",
        "event": "App Opened",
        "timestamp": TS,
        "context": {"device": {"token": "tok-1", "type": device}},
    }
    assert records(classic_mapper(MappingOptions())(message)) == [
        event_record("App Opened", {}),
        {"type": "token", "objectId": "a1", "tokenData": {"id": "tok-1", "type": kind}},
    ]


def test_device_token_is_sent_once_per_run_and_keeps_its_number() -> None:
    """The mapper makes the token record every time (its output never depends on the
    tokens sent); `prepare` sends it once a run, and the operations keep their numbers."""
    mapper = classic_mapper(MappingOptions())
    message = {
        "type": "screen",
        "anonymousId": "a1",
        "name": "Home",
        "timestamp": TS,
        "context": {"device": {"token": "tok-1", "type": "android"}},
    }
    assert [r["type"] for r in records(mapper(message))] == ["event", "token"]
    first, again = prepare(message, mapper), prepare(message, mapper)
    assert isinstance(first, Ready) and isinstance(again, Ready)
    assert [(orjson.loads(op[2])["type"], op[5]) for op in first.ops] == [
        ("event", 0),
        ("token", 1),
    ]
    assert [(orjson.loads(op[2])["type"], op[5]) for op in again.ops] == [("event", 0)]
    fresh = prepare(message, classic_mapper(MappingOptions()))
    assert isinstance(fresh, Ready) and len(fresh.ops) == 2


def test_no_token_record_without_an_anonymous_id_or_known_device() -> None:
    mapper = classic_mapper(MappingOptions())
    base = {"type": "track", "userId": "u1", "event": "E", "timestamp": TS}
    no_anonymous = {**base, "context": {"device": {"token": "t", "type": "android"}}}
    web = {**base, "anonymousId": "a1", "context": {"device": {"token": "t", "type": "web"}}}
    assert len(records(mapper(no_anonymous))) == 1
    assert len(records(mapper(web))) == 1


NESTED = {
    "type": "track",
    "userId": "u1",
    "event": "Cart Viewed",
    "timestamp": TS,
    "properties": {"cartId": "c1", "shippingAddress": {"zipCode": "10115"}, "tags": ["a", "b"]},
}


def test_nested_properties_are_flattened_by_default() -> None:
    result = classic_mapper(MappingOptions())(NESTED)
    assert records(result)[0]["evtData"] == {
        "cart_id": "c1",
        "shipping_address_zip_code": "10115",
        "tags_0": "a",
        "tags_1": "b",
    }


def test_nested_properties_stringified() -> None:
    result = classic_mapper(MappingOptions(nested=Nested.STRINGIFY))(NESTED)
    assert records(result)[0]["evtData"] == {
        "cart_id": "c1",
        "shipping_address": '{"zipCode":"10115"}',
        "tags": '["a","b"]',
    }


def test_dropped_nested_properties_are_counted() -> None:
    mapper = classic_mapper(MappingOptions(nested=Nested.DROP))
    assert records(mapper(NESTED))[0]["evtData"] == {"cart_id": "c1"}
    mapper(NESTED)
    assert dropped_values(mapper) == {"shipping_address": 2, "tags": 2}


def test_flatten_collisions_are_counted_not_overwritten() -> None:
    mapper = classic_mapper(MappingOptions())
    message = {**NESTED, "properties": {"a_b": 1, "a": {"b": 2}}}
    assert records(mapper(message))[0]["evtData"] == {"a_b": 1}
    assert dropped_values(mapper) == {"a_b": 1}


# --- CleverTap's reserved profile keys and operations (issue 10, point 1) ----------------
# What CleverTap documents (clevertap-api.md) and what RudderStack's CleverTap tests expect:
# `category-unsubscribe: {email: [...]}` and the MSG-* flags reach CleverTap as written.

OPERATION_TRAITS = {
    "tags": {"$add": ["a"]},
    "wishlist": {"$remove": "shoes"},
    "visits": {"$incr": 1},
    "credits": {"$decr": 2.5},
    "legacy_flag": {"$delete": 1},
    "plan": {"$set": "pro"},
}


@pytest.mark.parametrize("nested", list(Nested))
def test_reserved_keys_and_operations_reach_clevertap_as_written(nested: Nested) -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": TS,
        "traits": {**RESERVED_TRAITS, **OPERATION_TRAITS, "favoriteColor": "green"},
    }
    mapper = classic_mapper(MappingOptions(nested=nested))
    profile = records(mapper(message))[0]["profileData"]
    assert profile == {**RESERVED_TRAITS, **OPERATION_TRAITS, "favorite_color": "green"}
    assert dropped_values(mapper) == {}


def test_an_operation_keeps_its_trait_name_exactly_as_written() -> None:
    """clevertap-api.md: "any property whose value is one operator object" reaches
    CleverTap exactly as written, never snake_cased; a plain trait is snake_cased."""
    mapper = classic_mapper(MappingOptions())
    traits = {
        "loginCount": {"$incr": 1},
        "Favorite Tags": {"$add": ["vip", "beta"]},
        "wishList": {"$remove": "shoes"},
        "creditBalance": {"$decr": 2.5},
        "legacyFlag": {"$delete": 1},
        "planName": "pro",
        "visitCount": 3,
    }
    message = identify(traits)
    assert records(mapper(message))[0]["profileData"] == {
        "loginCount": {"$incr": 1},
        "Favorite Tags": {"$add": ["vip", "beta"]},
        "wishList": {"$remove": "shoes"},
        "creditBalance": {"$decr": 2.5},
        "legacyFlag": {"$delete": 1},
        "plan_name": "pro",
        "visit_count": 3,
    }
    # To act on the property a plain trait was sent to, name it as it was sent.
    counted = {**message, "traits": {"visit_count": {"$incr": 1}}}
    assert records(mapper(counted))[0]["profileData"] == {"visit_count": {"$incr": 1}}


def test_objects_that_are_not_one_operation_are_still_flattened() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": TS,
        "traits": {
            "two": {"$add": ["a"], "$remove": ["b"]},  # two keys: not an operation
            "fake": {"$push": ["a"]},  # not a CleverTap operator
            "msg-email": True,  # CleverTap's keys are case-sensitive: a custom trait
        },
    }
    profile = records(classic_mapper(MappingOptions())(message))[0]["profileData"]
    assert profile == {
        "two_add_0": "a",
        "two_remove_0": "b",
        "fake_push_0": "a",
        "msg_email": True,
    }


# --- Name from first and last names (Segment's identify spec; RudderStack) -----------------


@pytest.mark.parametrize(
    "traits",
    [
        {"firstName": "Ada", "lastName": "Lovelace"},
        {"first_name": "Ada", "last_name": "Lovelace"},
        {"firstName": " Ada ", "lastName": "Lovelace ", "name": None},
    ],
)
def test_name_is_made_from_first_and_last_names(traits: dict[str, Any]) -> None:
    message = identify(traits)
    profile = records(classic_mapper(MappingOptions())(message))[0]["profileData"]
    assert profile["Name"] == "Ada Lovelace"
    # the parts stay custom properties, as before
    assert {"first_name", "last_name"} <= set(profile)


@pytest.mark.parametrize(
    ("traits", "name"),
    [
        ({"name": "Countess", "firstName": "Ada", "lastName": "Lovelace"}, "Countess"),
        ({"firstName": "Ada"}, None),
        ({"firstName": "Ada", "lastName": ""}, None),
        ({"firstName": "Ada", "lastName": 7}, None),
    ],
)
def test_name_needs_both_parts_and_never_replaces_a_name(
    traits: dict[str, Any], name: str | None
) -> None:
    message = identify(traits)
    profile = records(classic_mapper(MappingOptions())(message))[0]["profileData"]
    assert profile.get("Name") == name


# --- Device tokens (point 3) -----------------------------------------------------------


def token_message(device: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "screen",
        "userId": "u1",
        "anonymousId": "a1",
        "name": "Home",
        "timestamp": TS,
        "context": {"device": device},
        **extra,
    }


@pytest.mark.parametrize(
    ("device_type", "kind"),
    [
        ("android", "fcm"),
        ("Android", "fcm"),
        ("ios", "apns"),
        ("ipados", "apns"),
        ("iPadOS", "apns"),
        ("watchos", "apns"),
        ("watchOS", "apns"),
        ("tvos", "apns"),
        ("TVOS", "apns"),
        ("macos", "apns"),
        ("macOS", "apns"),
    ],
)
def test_every_apple_platform_gets_apns_and_android_fcm(device_type: str, kind: str) -> None:
    mapper = classic_mapper(MappingOptions())
    sent = records(mapper(token_message({"token": "tok-1", "type": device_type})))
    assert sent[1] == {
        "type": "token",
        "objectId": "a1",
        "tokenData": {"id": "tok-1", "type": kind},
    }
    assert dropped_values(mapper) == {}


def test_the_os_name_gives_the_platform_when_the_device_type_is_absent() -> None:
    # RudderStack reads context.os.name; Segment's libraries set context.device.type.
    message = token_message({"token": "tok-1"}, context={"device": {"token": "tok-1"}})
    message["context"]["os"] = {"name": "iOS"}
    assert records(classic_mapper(MappingOptions())(message))[1]["tokenData"]["type"] == "apns"


def test_tokens_that_cannot_be_sent_are_counted_with_their_reason() -> None:
    mapper = classic_mapper(MappingOptions())
    server_side = token_message({"token": "t1", "type": "android"})
    del server_side["anonymousId"]  # a server-side identify: no objectId for the token
    web = token_message({"token": "t2", "type": "web"})
    untyped = token_message({"token": "t3"})
    for message in (server_side, server_side, web, untyped):
        assert [r["type"] for r in records(mapper(message))] == ["event"]
    assert dropped_values(mapper) == {"token:no-objectId": 2, "token:unknown-device-type": 2}


def test_a_message_without_a_token_counts_nothing() -> None:
    mapper = classic_mapper(MappingOptions())
    records(mapper(token_message({"type": "ios"})))
    records(mapper(token_message({"token": "", "type": "ios"})))
    assert dropped_values(mapper) == {}


# --- Order Completed and Amount (point 4) -------------------------------------------------


def order(event: str = "Order Completed", **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "u1",
        "event": event,
        "timestamp": TS,
        "properties": properties,
    }


@pytest.mark.parametrize(
    "event", ["Order Completed", "order completed", "ORDER COMPLETED", "Order completed"]
)
def test_order_completed_is_charged_in_any_case(event: str) -> None:
    record = records(classic_mapper(MappingOptions())(order(event, order_id="o1")))[0]
    assert record["evtName"] == "Charged"
    assert record["evtData"] == {"Charged ID": "o1", "order_id": "o1"}


def test_other_events_are_not_charged() -> None:
    for event in ("Order Completed!", "Order Completed Again", "Completed Order"):
        record = records(classic_mapper(MappingOptions())(order(event)))[0]
        assert record["evtName"] == event


def test_amount_is_the_total_as_segments_analytics_js_sends_it() -> None:
    # Segment's analytics.js CleverTap integration test: total 30, revenue 25 -> Amount 30.
    message = order(
        order_id="50314b8e9bcf000000000002",
        total=30,
        revenue=25,
        currency="USD",
        products=[
            {"product_id": "507f1f77bcf86cd799439011", "price": 19, "quantity": 1},
            {"product_id": "505bd76785ebb509fc183733", "price": 3, "quantity": 2},
        ],
    )
    data = records(classic_mapper(MappingOptions())(message))[0]["evtData"]
    assert data["Amount"] == 30
    assert data["revenue"] == 25
    assert data["total"] == 30
    assert data["Charged ID"] == data["order_id"] == "50314b8e9bcf000000000002"
    assert data["Currency"] == data["currency"] == "USD"
    assert "products" not in data and len(data["Items"]) == 2


@pytest.mark.parametrize(
    ("products", "amount"),
    [
        ([{"price": 19, "quantity": 1}, {"price": 3, "quantity": 2}], 25),
        ([{"price": 19.99, "quantity": 3}], 59.97),  # decimal, not 59.970000000000006
        ([{"price": 10}, {"price": 2.5, "quantity": 2}], 15.0),  # no quantity: one
    ],
)
def test_amount_is_the_products_sum_without_total_or_revenue(
    products: list[dict[str, Any]], amount: float
) -> None:
    data = records(classic_mapper(MappingOptions())(order(products=products)))[0]["evtData"]
    assert data["Amount"] == amount
    assert type(data["Amount"]) is type(amount)


@pytest.mark.parametrize(
    "products",
    [
        [],
        [{"price": 19, "quantity": 1}, {"quantity": 2}],  # a product without a price
        [{"price": "19", "quantity": 1}],
        [{"price": 19, "quantity": True}],
        ["not a product"],
    ],
)
def test_no_amount_when_the_products_cannot_give_one(products: list[Any]) -> None:
    data = records(classic_mapper(MappingOptions())(order(products=products)))[0]["evtData"]
    assert "Amount" not in data


def test_a_null_total_falls_back_to_revenue() -> None:
    data = records(classic_mapper(MappingOptions())(order(total=None, revenue=25)))[0]["evtData"]
    assert data["Amount"] == 25


# --- --link-anonymous (point 7) -----------------------------------------------------------
# RudderStack's "object ID mapping": an identify with both ids goes to objectId =
# anonymousId with the identity inside profileData.


def test_link_anonymous_sends_the_identify_to_the_anonymous_profile() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "a1",
        "timestamp": TS,
        "traits": {"email": "ada@example.com", "plan": "pro"},
    }
    mapper = classic_mapper(MappingOptions(link_anonymous=True))
    assert records(mapper(message)) == [
        {
            "type": "profile",
            "objectId": "a1",
            "ts": EPOCH,
            "profileData": {"plan": "pro", "Email": "ada@example.com", "Identity": "u1"},
        }
    ]
    # off by default: by identity, as Segment's classic destination sends it
    default = records(classic_mapper(MappingOptions())(message))[0]
    assert default["identity"] == "u1"
    assert "objectId" not in default


@pytest.mark.parametrize(
    ("message", "identifier"),
    [
        ({"type": "identify", "userId": "u1", "traits": {}}, {"identity": "u1"}),
        ({"type": "identify", "anonymousId": "a1", "traits": {}}, {"objectId": "a1"}),
        ({"type": "identify", "userId": "u1", "anonymousId": "", "traits": {}}, {"identity": "u1"}),
    ],
)
def test_link_anonymous_leaves_identifies_with_one_id_alone(
    message: dict[str, Any], identifier: dict[str, str]
) -> None:
    record = records(classic_mapper(MappingOptions(link_anonymous=True))(message))[0]
    assert {k: record[k] for k in ("identity", "objectId") if k in record} == identifier
    assert "Identity" not in record["profileData"]


def test_link_anonymous_does_not_touch_events() -> None:
    message = {"type": "track", "userId": "u1", "anonymousId": "a1", "event": "E", "timestamp": TS}
    record = records(classic_mapper(MappingOptions(link_anonymous=True))(message))[0]
    assert record["identity"] == "u1"


# --- date-times finer than milliseconds (point 6) ----------------------------------------


def test_dates_finer_than_milliseconds_are_counted_by_trait_name() -> None:
    # Segment's Python library writes datetime traits with microseconds.
    mapper = classic_mapper(MappingOptions())
    traits = {
        "createdAt": "2023-01-02T00:00:00.123456+00:00",
        "birthday": "1990-02-01T00:00:00.000001Z",
        "lastSeen": "2006-01-02T18:04:07.451Z",
    }
    message = identify(traits)
    profile = records(mapper(message))[0]["profileData"]
    assert profile == {
        "created_at": "2023-01-02T00:00:00.123456+00:00",
        "DOB": "$D_633830400",  # a date of birth is read at any precision (issue 22)
        "last_seen": 1136225047,
    }
    mapper({**message, "type": "track", "event": "E", "properties": traits})
    assert mapper.dates_left_as_text == {"createdAt": 2, "birthday": 1}


def test_convert_microseconds_floors_them_to_seconds() -> None:
    mapper = classic_mapper(MappingOptions(convert_microseconds=True))
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": TS,
        "traits": {
            "createdAt": "2023-01-02T00:00:00.999999+00:00",
            "birthday": "1990-02-01T00:00:00.000001Z",
        },
    }
    profile = records(mapper(message))[0]["profileData"]
    # 2023-01-02 is 19359 days after 1970-01-01: 1672617600.
    assert profile == {"created_at": 1672617600, "DOB": "$D_633830400"}
    assert mapper.dates_left_as_text == {}


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.floats(allow_nan=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
operations = st.one_of(
    st.builds(lambda v: {"$add": v}, st.lists(st.text(max_size=5), max_size=3)),
    st.builds(lambda v: {"$remove": v}, st.text(max_size=5)),
    st.builds(lambda v: {"$incr": v}, st.integers()),
    st.builds(lambda v: {"$decr": v}, st.floats(allow_nan=False)),
    st.just({"$delete": 1}),
)


@settings(max_examples=examples(200))
@given(
    reserved=st.dictionaries(
        st.sampled_from(sorted(RESERVED_TRAITS)), json_values.filter(lambda v: v is not None)
    ),
    ops=st.dictionaries(st.sampled_from(["tags", "visits", "credits", "plan"]), operations),
    other=st.dictionaries(st.sampled_from(["city", "address", "score"]), json_values),
    nested=st.sampled_from(list(Nested)),
)
def test_reserved_keys_and_operations_survive_any_other_traits(
    reserved: dict[str, Any], ops: dict[str, Any], other: dict[str, Any], nested: Nested
) -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": TS,
        "traits": {**other, **reserved, **ops},
    }
    profile = records(classic_mapper(MappingOptions(nested=nested))(message))[0]["profileData"]
    for key, value in {**reserved, **ops}.items():
        assert profile[key] == value


# --- issue 22: the classic details peers get right ---------------------------------------
# Expectations by hand from CleverTap's Segment integrations for Android and iOS (their
# sources and tests), CleverTap's API docs (clevertap-api.md) and Segment's spec.

# CleverTap's Charged example (upload-events-api), as a Segment track would carry it.
CLEVERTAP_CHARGED: dict[str, Any] = {
    "Amount": 300,
    "Charged ID": "24052014",
    "Currency": "INR",
    "Payment Mode": "Credit Card",
    "Items": [
        {"Category": "Books", "Book name": "The Millionaire next door", "Quantity": 1},
        {"Category": "Books", "Book name": "Achieving inner zen", "Quantity": 4},
    ],
}


@pytest.mark.parametrize("event", ["Charged", "charged", "CHARGED"])
def test_a_track_named_charged_is_clevertaps_purchase_as_written(event: str) -> None:
    record = records(classic_mapper(MappingOptions())(order(event, **CLEVERTAP_CHARGED)))[0]
    assert record == event_record(
        "Charged",
        {
            "Amount": 300,
            "Charged ID": "24052014",
            "Currency": "INR",
            "payment_mode": "Credit Card",  # any other property, as every event's
            "Items": [
                {"Category": "Books", "Book name": "The Millionaire next door", "Quantity": 1},
                {"Category": "Books", "Book name": "Achieving inner zen", "Quantity": 4},
            ],
        },
    )


def test_charged_as_written_passes_the_data_rules() -> None:
    from ctsync.rules import check_upload

    record = records(classic_mapper(MappingOptions())(order("Charged", **CLEVERTAP_CHARGED)))[0]
    assert check_upload(record) == []


def test_charged_fields_are_clevertaps_only_in_clevertaps_spelling() -> None:
    # CleverTap's keys are case-sensitive: `amount` is an ordinary property.
    message = order("Charged", amount=5, currency="EUR", items=[{"sku": "s1"}])
    data = records(classic_mapper(MappingOptions())(message))[0]["evtData"]
    assert data == {"amount": 5, "currency": "EUR", "items_0_sku": "s1"}


def test_charged_items_keep_their_keys_and_follow_the_nested_policy() -> None:
    items = [{"Product Name": "Uno", "Size": {"w": 1}, "Bought At": "2006-01-02T18:04:07Z"}]
    flattened = records(classic_mapper(MappingOptions())(order("Charged", Items=items)))[0]
    assert flattened["evtData"] == {
        "Items": [{"Product Name": "Uno", "Size_w": 1, "Bought At": 1136225047}]
    }
    mapper = classic_mapper(MappingOptions(nested=Nested.DROP))
    dropped = records(mapper(order("Charged", Items=items)))[0]
    assert dropped["evtData"] == {"Items": [{"Product Name": "Uno", "Bought At": 1136225047}]}
    assert dropped_values(mapper) == {"Size": 1}


@pytest.mark.parametrize("items", [{"sku": "s1"}, "s1", 3])
def test_charged_items_that_are_not_a_list_go_for_the_rules_to_refuse(items: Any) -> None:
    from ctsync.rules import check_upload

    record = records(classic_mapper(MappingOptions())(order("Charged", Items=items)))[0]
    assert record["evtData"] == {"Items": items}
    assert [v.code for v in check_upload(record)] == ["512"]


def test_order_completed_keeps_its_mapping_beside_a_literal_charged() -> None:
    # Order Completed is still Segment's spec mapped into Charged, not taken as written.
    message = order(Amount=1, orderId="o1", Total=9, products=[{"Product Name": "Uno"}])
    data = records(classic_mapper(MappingOptions())(message))[0]["evtData"]
    assert data == {
        "Charged ID": "o1",
        "Amount": 9,
        "order_id": "o1",
        "total": 9,
        "amount": 1,
        "Items": [{"product_name": "Uno"}],
    }


@settings(deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["order_id", "orderId", "total", "revenue", "currency", "coupon", "tax"]),
        st.one_of(st.none(), st.integers(-5, 5), st.text("ab", max_size=2)),
    )
)
def test_order_completed_keeps_every_source_property_but_products(props: dict[str, Any]) -> None:
    # By hand from CleverTap's Android integration: every property but products is
    # copied (snake_cased here, as the classic destination sends them); the Charged
    # fields come from order_id, total else revenue, currency.
    data = records(classic_mapper(MappingOptions())(order(**props)))[0]["evtData"]
    expected: dict[str, Any] = {}
    for key, value in props.items():
        expected.setdefault("order_id" if key == "orderId" else key, value)
    # orderId and order_id are one spec field: the first written is the Charged ID.
    ids = [props[k] for k in props if k in ("order_id", "orderId")]
    if ids:
        expected["Charged ID"] = ids[0]
    amount = next((props[k] for k in ("total", "revenue") if props.get(k) is not None), None)
    if amount is not None:
        expected["Amount"] = amount
    if "currency" in props:
        expected["Currency"] = props["currency"]
    assert data == expected


# DOB from the formats people write. 1990-03-01 is 7364 days after 1970-01-01 (20 years
# with 5 leap days, then 31 + 28): 636249600; 1990-03-13 is 12 days later, 637286400.
@pytest.mark.parametrize(
    ("written", "dob"),
    [
        ("1990-03-01", "$D_636249600"),
        ("1990-03-01T00:00:00Z", "$D_636249600"),
        ("1990-03-01T00:00:00.123456Z", "$D_636249600"),  # any precision, floored
        ("1990-03-01T05:30:00+05:30", "$D_636249600"),  # the same instant
        ("1990-03-01T08:00:00", "$D_636278400"),  # no offset: UTC
        (636249600, "$D_636249600"),  # epoch seconds
        (636249600000, "$D_636249600"),  # epoch milliseconds
        (636249600.9, "$D_636249600"),
        (31536000000, "$D_31536000"),  # 1971-01-01 in milliseconds (not the year 2969)
        (-631152000, "$D_-631152000"),  # 1950-01-01: 7305 days before 1970
        (-631152000000, "$D_-631152000"),
        ("01-Mar-1990", "$D_636249600"),
        ("1-mar-1990", "$D_636249600"),
        ("01 March 1990", "$D_636249600"),
        ("01/MAR/1990", "$D_636249600"),
        ("1990/03/01", "$D_636249600"),
        ("1990/3/1", "$D_636249600"),
        ("13/03/1990", "$D_637286400"),  # day first: 13 cannot be a month
        ("03/13/1990", "$D_637286400"),  # month first: 13 cannot be a month
        ("13-03-1990", "$D_637286400"),
        ("13.03.1990", "$D_637286400"),
        ("01/01/1990", "$D_631152000"),  # both readings are the same day
        (" 1990-03-01 ", "$D_636249600"),
    ],
)
@pytest.mark.parametrize("trait", ["birthday", "DOB"])
def test_dob_is_read_from_the_formats_people_use(trait: str, written: Any, dob: str) -> None:
    profile = records(classic_mapper(MappingOptions())(identify({trait: written})))[0]
    assert profile["profileData"] == {"DOB": dob}


@pytest.mark.parametrize(
    "written",
    [
        "03/01/1990",  # the 3rd of January or the 1st of March: not guessed
        "31/02/1990",
        "1990-02-30",
        "01-Foo-1990",
        "1990",
        "19900301",  # digits: an epoch written as text is not taken either
        "636249600",
        "March 1st",
        "",
        True,
        [1990, 3, 1],
        {"year": 1990},
        10**30,
    ],
)
def test_a_dob_that_cannot_be_read_goes_as_written_for_the_rules(written: Any) -> None:
    profile = records(classic_mapper(MappingOptions())(identify({"birthday": written})))[0]
    assert profile["profileData"] == {"DOB": written}


@settings(deadline=None)
@given(
    st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)),
    st.sampled_from(["iso", "dmy-name", "ymd-slash", "dmy", "mdy", "seconds", "millis"]),
)
def test_any_date_in_any_format_is_that_day(day: date, form: str) -> None:
    # By hand: midnight UTC of that day, counted in whole days from 1970-01-01.
    epoch = (day - date(1970, 1, 1)).days * 86400
    month_names = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
    ]  # fmt: skip
    written: Any = {
        "iso": day.isoformat(),
        "dmy-name": f"{day.day:02d}-{month_names[day.month - 1]}-{day.year}",
        "ymd-slash": f"{day.year}/{day.month:02d}/{day.day:02d}",
        "dmy": f"{day.day:02d}/{day.month:02d}/{day.year}",
        "mdy": f"{day.month:02d}/{day.day:02d}/{day.year}",
        "seconds": epoch,
        "millis": epoch * 1000,
    }[form]
    profile = records(classic_mapper(MappingOptions())(identify({"birthday": written})))[0]
    ambiguous = form in ("dmy", "mdy") and day.day <= 12 and day.day != day.month
    if ambiguous:
        assert profile["profileData"] == {"DOB": written}
    elif form == "millis" and abs(epoch) * 1000 < 10**10:
        # Within 115 days of 1970-01-01, milliseconds read as seconds (README).
        assert profile["profileData"] == {"DOB": f"$D_{epoch * 1000}"}
    else:
        assert profile["profileData"] == {"DOB": f"$D_{epoch}"}


# The DOB modes, end to end through prepare (ctsync/prepare.py) with the data rules.
BAD_DOB = identify({"name": "Ada", "birthday": "03/01/1990"})


def test_strict_refuses_a_dob_that_cannot_be_read() -> None:
    result = prepare(BAD_DOB, classic_mapper(MappingOptions()), rules_validator(256))
    assert isinstance(result, Invalid)
    assert result.code == "dob-not-a-date"
    assert "'03/01/1990'" in result.message


def test_fix_sends_the_profile_without_the_dob_and_says_so() -> None:
    validator = rules_validator(256, fix=True)
    result = prepare(BAD_DOB, classic_mapper(MappingOptions()), validator, ValidateMode.FIX)
    assert isinstance(result, Ready)
    (op,) = map(op_of, result.ops)
    assert orjson.loads(op.body)["profileData"] == {"Name": "Ada"}
    assert [(fix.field, fix.code) for fix in result.fixes] == [("DOB", "dob-not-a-date")]


def test_warn_sends_the_dob_as_text_and_counts_a_warning() -> None:
    validator = rules_validator(256)
    result = prepare(BAD_DOB, classic_mapper(MappingOptions()), validator, ValidateMode.WARN)
    assert isinstance(result, Ready)
    (op,) = map(op_of, result.ops)
    assert orjson.loads(op.body)["profileData"] == {"Name": "Ada", "DOB": "03/01/1990"}
    assert result.warnings == ["dob-not-a-date"]


# CleverTap's standard profile keys written as CleverTap spells them (clevertap-api.md,
# "Standard profile keys"); RudderStack sends Employed, Education, Married the same way.
STANDARD_AS_CLEVERTAP_WRITES_THEM: dict[str, Any] = {
    "Name": "Ada Lovelace",
    "Email": "ada@example.com",
    "Phone": "+441234567890",
    "Gender": "F",
    "DOB": "$D_636249600",
    "Photo": "https://example.com/ada.png",
    "Employed": "Y",
    "Education": "Graduate",
    "Married": "N",
    "Age": 36,
    "Identity": "u1",
    "MSG-email": False,
    "MSG-push": True,
    "MSG-sms": False,
    "MSG-whatsapp": True,
}


def test_clevertaps_standard_keys_pass_through_as_written() -> None:
    profile = records(classic_mapper(MappingOptions())(identify(STANDARD_AS_CLEVERTAP_WRITES_THEM)))
    assert profile[0]["profileData"] == STANDARD_AS_CLEVERTAP_WRITES_THEM
    assert check_upload(profile[0]) == []


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        ("Employed", "yes", "517"),
        ("Education", "PhD", "518"),
        ("Married", "true", "519"),
        ("Age", "36", "520"),
        ("Gender", "female", "514"),  # written as CleverTap's key: sent as written
        ("Email", "ada@", "515"),
        ("Phone", "0123", "516"),
        ("DOB", "someday", "dob-not-a-date"),
    ],
)
def test_standard_keys_are_validated_as_clevertap_validates_them(
    key: str, value: Any, code: str
) -> None:
    mapper = classic_mapper(MappingOptions())
    (profile,) = records(mapper(identify({key: value})))
    assert profile["profileData"] == {key: value}
    result = prepare(identify({key: value}), mapper, rules_validator(256))
    assert isinstance(result, Invalid) and result.code == code


def test_other_spellings_are_custom_properties_as_before() -> None:
    traits = {"employed": "Y", "EDUCATION": "College", "married": "N", "age": 3}
    profile = records(classic_mapper(MappingOptions())(identify(traits)))[0]
    assert profile["profileData"] == {
        "employed": "Y",
        "education": "College",
        "married": "N",
        "age": 3,
    }


def test_the_key_written_as_clevertaps_wins_over_the_segment_trait() -> None:
    traits = {"Email": "ada@example.com", "email": "old@example.com", "Name": "Ada", "name": "A"}
    profile = records(classic_mapper(MappingOptions())(identify(traits)))[0]
    assert profile["profileData"] == {"Email": "ada@example.com", "Name": "Ada"}


def test_a_null_standard_key_is_left_out() -> None:
    profile = records(classic_mapper(MappingOptions())(identify({"Employed": None, "plan": 1})))
    assert profile[0]["profileData"] == {"plan": 1}


# == Classic behaviour mutation testing showed unchecked =================================
# What `make mutate MUTATE=classic` showed no test above checked. Expectations from
# segment-behaviour.md and clevertap-api.md, written by hand.


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


# -- identifiers: userId, else anonymousId as objectId (segment-behaviour.md) --------


def mapped(message: dict[str, Any]) -> object:
    return classic_mapper(MappingOptions())({"timestamp": TS, **message})


@pytest.mark.parametrize("user_id", ["", "  ", "\t"])
def test_an_empty_user_id_falls_back_to_the_anonymous_id(user_id: str) -> None:
    # segment-behaviour.md: a record needs an identity: userId, or the anonymousId as
    # objectId. An empty userId is no userId, and so is a blank one (a review found it
    # invalid once blank identities were: the anonymousId was not tried).
    result = mapped({"type": "identify", "userId": user_id, "anonymousId": "a1", "traits": {}})
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
        (  # blank is empty: one profile for every such message otherwise
            {"type": "identify", "userId": "  ", "anonymousId": "\t", "traits": {}},
            "523",
            "no identity: userId or anonymousId is missing or empty",
        ),
        ({"type": "alias", "userId": " ", "previousId": "a1"}, "523", NO_USER_ID),
        (
            {"type": "identify", "userId": 1.5, "traits": {}},
            "523",
            "identity: userId is a number with a fraction, an exponent or beyond 64 bits (1.5); "
            "it cannot be taken exactly",
        ),
        (  # not "missing or empty" (a walkthrough)
            {"type": "identify", "userId": True, "traits": {}},
            "523",
            "no identity: userId is true, not a string",
        ),
        (  # JSON's spelling, not Python's `True`
            {"type": "identify", "userId": "u1", "timestamp": True, "traits": {}},
            "525",
            "timestamp true is not a date-time",
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
        prepared = prepare(app_opened(context, anonymous_id), mapper)
        assert isinstance(prepared, Ready)
        sent += [
            (record["objectId"], record["tokenData"]["id"])
            for record in (orjson.loads(op[2]) for op in prepared.ops)
            if record["type"] == "token"
        ]
    assert sent == [("a1", "t1"), ("a1", "t2"), ("a2", "t1")]
