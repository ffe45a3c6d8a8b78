"""Mapping files: loading and its errors, limits, and the records each action builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from ctsync.mapping import (
    Action,
    MappingError,
    build_mapper,
    dates_left_as_text,
    dropped_values,
    load_mapping,
    parse_mapping,
    preset_as_mapping,
)
from ctsync.prepare import Ready, prepare
from ctsync.presets import MappingOptions, Nested
from ctsync.records import Delete, Invalid, Skip, TokenUpload, Upload
from ctsync.rules import check_upload
from ctsync.timestamps import DatesAs
from tests.helpers import TOKEN_SUBSCRIPTION

TS = "2023-05-18T22:58:45Z"
EPOCH = 1684450725  # segment-behaviour.md


def subscription(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "Identify",
        "enabled": True,
        "trigger": 'type = "identify"',
        "action": "userUpload",
        "mapping": {
            "identity": {"@path": "$.userId"},
            "ts": {"@path": "$.timestamp"},
            "profileData": {"@path": "$.traits"},
        },
    }
    base.update(fields)
    return base


def mapping_text(*subscriptions: dict[str, Any]) -> str:
    return json.dumps({"subscriptions": list(subscriptions)})


def mapper_of(*subscriptions: dict[str, Any], **options: Any) -> Any:
    return build_mapper(load_mapping(mapping_text(*subscriptions)), MappingOptions(**options))


# --- loading ----------------------------------------------------------------------------


def test_load_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"description": "d", "subscriptions": [subscription()]}))
    loaded = load_mapping(path)
    assert loaded.source == str(path)
    assert loaded.description == "d"
    assert [(s.name, s.action) for s in loaded.subscriptions] == [("Identify", Action.USER_UPLOAD)]
    assert load_mapping(str(path)).subscriptions[0].name == "Identify"


def test_trigger_syntax_error_names_file_subscription_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    bad = subscription(name="Orders", trigger='type = "track" and event = ')
    path.write_text(json.dumps({"subscriptions": [subscription(), bad]}))
    with pytest.raises(MappingError) as raised:
        load_mapping(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: subscription 'Orders': trigger column 28:")
    assert raised.value.column == 28
    assert raised.value.subscription == "Orders"


def test_mapping_error_is_a_value_error() -> None:
    assert issubclass(MappingError, ValueError)


def test_unknown_directive_is_a_load_error() -> None:
    bad = subscription(mapping={"identity": {"@path": "$.userId"}, "profileData": {"@nope": 1}})
    with pytest.raises(MappingError, match=r"'Identify': mapping\.profileData: unknown directive"):
        load_mapping(mapping_text(bad))


def test_at_most_50_subscriptions() -> None:
    fifty = [subscription(name=f"s{i}") for i in range(50)]
    assert len(load_mapping(mapping_text(*fifty)).subscriptions) == 50
    with pytest.raises(MappingError, match="51 subscriptions; at most 50"):
        load_mapping(mapping_text(*fifty, subscription(name="s50")))


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([], "a JSON object"),
        ({"subscriptions": []}, "non-empty array"),
        ({"subscriptions": [subscription()], "extra": 1}, "unknown key 'extra'"),
        ({"subscriptions": [subscription(), subscription()]}, "two subscriptions have this name"),
        ({"subscriptions": [subscription(name="")]}, "subscription #1 has no name"),
        ({"subscriptions": [subscription(action="profileUpload")]}, "is not one of userUpload"),
        ({"subscriptions": [subscription(enabled="yes")]}, "'enabled' must be true or false"),
        ({"subscriptions": [subscription(trigger=5)]}, "'trigger' must be a string"),
        ({"subscriptions": [subscription(mapping=[])]}, "'mapping' must be an object"),
        ({"subscriptions": [subscription(filter="x")]}, "unknown key 'filter'"),
        (
            {"subscriptions": [subscription(mapping={"identity": 1, "profiledata": {}})]},
            "userUpload has no field 'profiledata'",
        ),
        (
            {"subscriptions": [subscription(mapping={"profileData": {}})]},
            "userUpload needs identity or objectId",
        ),
        (
            {"subscriptions": [subscription(action="eventUpload", mapping={"identity": 1})]},
            "eventUpload needs evtName",
        ),
        (
            {"subscriptions": [subscription(action="tokenUpload", mapping={"objectId": 1})]},
            "tokenUpload needs id",
        ),
    ],
)
def test_invalid_files(document: Any, reason: str) -> None:
    with pytest.raises(MappingError, match=reason):
        parse_mapping(document, "m.json")


def test_a_mapping_file_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    """Windows editors save JSON with a byte-order mark; exports with one are read, and so
    is a mapping file (it was refused: "BOM is not supported"), as a path or as text."""
    text = json.dumps(preset_as_mapping("classic"))
    plain, marked = tmp_path / "plain.json", tmp_path / "marked.json"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    expected = load_mapping(plain).subscriptions
    assert load_mapping(marked).subscriptions == expected
    assert load_mapping("\ufeff" + text).subscriptions == expected  # (stdin, decoded)


def test_invalid_json_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="not valid JSON"):
        load_mapping('{"subscriptions": [')
    with pytest.raises(MappingError, match="cannot read"):
        load_mapping(tmp_path / "absent.json")


# --- the mapper -------------------------------------------------------------------------


def test_every_matching_subscription_fires_in_file_order() -> None:
    mapper = mapper_of(
        subscription(name="profile"),
        subscription(
            name="delete",
            trigger="traits.deleted = true",
            action="userDelete",
            mapping={"identity": {"@path": "$.userId"}},
        ),
        subscription(name="disabled", enabled=False),
    )
    message = {"type": "identify", "userId": "u1", "timestamp": TS, "traits": {"deleted": True}}
    assert mapper(message) == [
        Upload(
            {"type": "profile", "identity": "u1", "ts": EPOCH, "profileData": {"deleted": True}}
        ),
        Delete("identity", "u1"),
    ]


def test_no_subscription_fires_is_a_skip() -> None:
    assert mapper_of(subscription())({"type": "track", "event": "E"}) == Skip("track:E")


def test_missing_identity_is_invalid_523() -> None:
    result = mapper_of(subscription())({"type": "identify", "traits": {}})
    assert result == Invalid("523", "no identity: userId is missing or empty")


def test_bad_timestamp_is_invalid_525() -> None:
    result = mapper_of(subscription())({"type": "identify", "userId": "u", "timestamp": "soon"})
    assert isinstance(result, Invalid)
    assert result.code == "525"


def test_identity_falls_back_to_object_id() -> None:
    mapping = {
        "identity": {"@path": "$.userId"},
        "objectId": {"@path": "$.anonymousId"},
        "ts": {"@path": "$.timestamp"},
        "evtName": {"@path": "$.event"},
        "evtData": {"@path": "$.properties"},
    }
    mapper = mapper_of(
        subscription(trigger='type = "track"', action="eventUpload", mapping=mapping)
    )
    anonymous = {"type": "track", "anonymousId": "a1", "event": "E", "timestamp": TS}
    assert mapper(anonymous) == [
        Upload({"type": "event", "objectId": "a1", "ts": EPOCH, "evtName": "E", "evtData": {}})
    ]
    known = {**anonymous, "userId": "u1"}
    assert mapper(known) == [
        Upload({"type": "event", "identity": "u1", "ts": EPOCH, "evtName": "E", "evtData": {}})
    ]
    result = mapper({"type": "track", "event": "E"})
    assert isinstance(result, Invalid)
    assert result.code == "523"


def test_event_without_a_name_is_invalid_509() -> None:
    mapping = {"identity": {"@path": "$.userId"}, "evtName": {"@path": "$.event"}}
    mapper = mapper_of(
        subscription(trigger='type = "track"', action="eventUpload", mapping=mapping)
    )
    result = mapper({"type": "track", "userId": "u1"})
    assert isinstance(result, Invalid)
    assert result.code == "509"


def test_event_properties_follow_nested_option_and_count_drops() -> None:
    mapping = {
        "identity": {"@path": "$.userId"},
        "ts": {"@path": "$.timestamp"},
        "evtName": {"@literal": "Charged"},
        "evtData": {
            "Amount": {"@path": "$.properties.revenue"},
            "Items": {"@path": "$.properties.products"},
            "shipping": {"@path": "$.properties.shipping"},
        },
    }
    message = {
        "type": "track",
        "userId": "u1",
        "timestamp": TS,
        "properties": {
            "revenue": 10,
            "products": [{"sku": "s1", "dims": {"w": 2}}],
            "shipping": {"method": "post"},
        },
    }
    flat = mapper_of(subscription(trigger='type = "track"', action="eventUpload", mapping=mapping))
    assert flat(message) == [
        Upload(
            {
                "type": "event",
                "identity": "u1",
                "ts": EPOCH,
                "evtName": "Charged",
                "evtData": {
                    "Amount": 10,
                    "shipping_method": "post",
                    "Items": [{"sku": "s1", "dims_w": 2}],
                },
            }
        )
    ]
    drop = mapper_of(
        subscription(trigger='type = "track"', action="eventUpload", mapping=mapping),
        nested=Nested.DROP,
    )
    result = drop(message)
    assert isinstance(result, list) and isinstance(result[0], Upload)
    assert result[0].record["evtData"] == {"Amount": 10, "Items": [{"sku": "s1"}]}
    assert dropped_values(drop) == {"shipping": 1, "dims": 1}


def test_convert_timestamps_per_subscription() -> None:
    traits = {"since": "2006-01-02T18:04:07Z"}
    message = {"type": "identify", "userId": "u1", "timestamp": TS, "traits": traits}

    def profile_of(mapper: Any) -> Any:
        return mapper(message)[0].record["profileData"]

    assert profile_of(mapper_of(subscription())) == {"since": 1136225047}
    assert profile_of(mapper_of(subscription(), dates_as=DatesAs.CLEVERTAP)) == {
        "since": "$D_1136225047"
    }
    off = subscription(convert_timestamps=False)
    assert profile_of(mapper_of(off)) == traits
    on = subscription(convert_timestamps=True)
    assert profile_of(mapper_of(on, convert_timestamps=False)) == {"since": 1136225047}


def test_user_delete_by_guid() -> None:
    mapper = mapper_of(
        subscription(
            trigger='event = "Delete User"',
            action="userDelete",
            mapping={"guid": {"@path": "$.anonymousId"}},
        )
    )
    assert mapper({"event": "Delete User", "anonymousId": "a1"}) == [Delete("guid", "a1")]


TOKEN = TOKEN_SUBSCRIPTION


def test_token_upload_is_sent_once_per_object_id_and_token() -> None:
    mapper = mapper_of(TOKEN)
    message = {"type": "track", "anonymousId": "a1", "context": {"device": {"token": "t1"}}}
    expected = {"type": "token", "objectId": "a1", "tokenData": {"id": "t1", "type": "fcm"}}
    assert mapper(message) == [TokenUpload(expected, ("a1", "t1"))]
    assert mapper(message) == [TokenUpload(expected, ("a1", "t1"))]  # made every time
    sent = prepare(message, mapper)
    assert isinstance(sent, Ready) and [orjson.loads(op[2]) for op in sent.ops] == [expected]
    assert prepare(message, mapper) == Skip("token already sent")  # sent once a run
    other = {**message, "anonymousId": "a2"}
    again = prepare(other, mapper)
    assert isinstance(again, Ready)
    assert [orjson.loads(op[2]) for op in again.ops] == [{**expected, "objectId": "a2"}]


def test_a_token_sent_already_leaves_the_numbers_of_the_others_as_they_were() -> None:
    """A message's operations are numbered by their place in the mapper's output, the
    token records left out included: a resumed run, which lacks the tokens of the
    records it does not read again, numbers them as the first run did."""
    event = subscription(
        name="event",
        trigger='type = "track"',
        action="eventUpload",
        mapping={"identity": {"@path": "$.userId"}, "evtName": {"@path": "$.event"}},
    )
    message = {
        "type": "track",
        "userId": "u1",
        "anonymousId": "a1",
        "event": "E",
        "timestamp": "2024-05-01T00:00:00Z",
        "context": {"device": {"token": "t1"}},
    }
    mapper = mapper_of(TOKEN, event, {**TOKEN, "name": "token again"})
    first = prepare(message, mapper)
    assert isinstance(first, Ready)
    assert [(orjson.loads(op[2])["type"], op[5]) for op in first.ops] == [
        ("token", 0),
        ("event", 1),
    ]
    again = prepare(message, mapper)
    assert isinstance(again, Ready)
    assert [(orjson.loads(op[2])["type"], op[5]) for op in again.ops] == [("event", 1)]


def test_token_without_object_id_is_invalid_530() -> None:
    result = mapper_of(TOKEN)({"type": "track", "context": {"device": {"token": "t1"}}})
    assert isinstance(result, Invalid)
    assert result.code == "530"


def test_firing_lists_the_matching_enabled_subscriptions() -> None:
    loaded = load_mapping(
        mapping_text(subscription(), TOKEN, subscription(name="off", enabled=False))
    )
    message = {"type": "identify", "context": {"device": {"token": "t"}}}
    assert [sub.name for sub in loaded.firing(message)] == ["Identify", "token"]


# --- CleverTap's reserved keys and operations in a mapping file's output (issue 10) -----


def test_reserved_keys_and_operations_pass_through_a_mapping_file() -> None:
    mapping_file = parse_mapping(
        {
            "subscriptions": [
                subscription(
                    name="Profiles",
                    mapping={
                        "identity": {"@path": "$.userId"},
                        "ts": {"@path": "$.timestamp"},
                        "profileData": {
                            "MSG-email": {"@path": "$.traits['MSG-email']"},
                            "category-unsubscribe": {"@path": "$.traits['category-unsubscribe']"},
                            "tags": {"$add": {"@path": "$.traits.newTags"}},
                            "visits": {"$incr": {"@literal": 1}},
                            "seen": {"@path": "$.traits.seen"},
                        },
                    },
                ),
                subscription(name="All traits"),
            ]
        }
    )
    mapper = build_mapper(mapping_file, MappingOptions())
    traits = {
        "MSG-email": False,
        "category-unsubscribe": {"email": ["Marketing"]},
        "newTags": ["a", "b"],
        "wishlist": {"$remove": ["shoes"]},
        "seen": "2023-01-02T00:00:00.123456+00:00",
    }
    message = {"type": "identify", "userId": "u1", "timestamp": "2019-02-01", "traits": traits}
    result = mapper(message)
    assert isinstance(result, list)
    built = [op.record["profileData"] for op in result if isinstance(op, Upload)]
    assert built == [
        {
            "MSG-email": False,
            "category-unsubscribe": {"email": ["Marketing"]},
            "tags": {"$add": ["a", "b"]},
            "visits": {"$incr": 1},
            "seen": "2023-01-02T00:00:00.123456+00:00",
        },
        traits,
    ]
    assert all(check_upload(op.record) == [] for op in result if isinstance(op, Upload))
    assert dates_left_as_text(mapper) == {"seen": 2}
