"""The CleverTap (Actions) presets, as Segment defines them and with its faults fixed."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from ctsync.mapping import dates_left_as_text
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.records import Delete, Invalid, Skip, Upload
from ctsync.timestamps import DatesAs
from tests.helpers import RESERVED_TRAITS

actions = build_preset(Preset.ACTIONS, MappingOptions())


def test_identify_becomes_a_profile_from_traits_not_properties() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": "2023-05-18T22:58:45+00:00",
        "traits": {"email": "a@example.com", "createdAt": "2006-01-02T18:04:07Z"},
        "properties": {"ignored": True},
    }
    assert actions(message) == [
        Upload(
            {
                "type": "profile",
                "identity": "u1",
                "ts": 1684450725,
                "profileData": {"email": "a@example.com", "createdAt": 1136225047},
            }
        )
    ]


def test_ts_is_now_when_the_message_has_no_timestamp() -> None:
    before = int(time.time())
    (upload,) = actions({"type": "identify", "userId": "u1"})  # type: ignore[misc]
    assert isinstance(upload, Upload)
    assert before <= upload.record["ts"] <= int(time.time())
    assert upload.record["profileData"] == {}


def test_a_timestamp_that_is_not_a_time_is_invalid_525() -> None:
    result = actions({"type": "identify", "userId": "u1", "timestamp": "last tuesday"})
    assert isinstance(result, Invalid) and result.code == "525"


def test_convert_timestamps_off_and_dates_as_clevertap() -> None:
    message = {
        "type": "identify",
        "userId": "u",
        "timestamp": "2019-02-01",
        "traits": {"d": "2019-02-01"},
    }
    off = build_preset(Preset.ACTIONS, MappingOptions(convert_timestamps=False))(message)
    assert isinstance(off, list) and isinstance(off[0], Upload)
    assert off[0].record["profileData"] == {"d": "2019-02-01"}
    assert off[0].record["ts"] == 1548979200, "ts is always epoch seconds"
    typed = build_preset(Preset.ACTIONS, MappingOptions(dates_as=DatesAs.CLEVERTAP))(message)
    assert isinstance(typed, list) and isinstance(typed[0], Upload)
    assert typed[0].record["profileData"] == {"d": "$D_1548979200"}


def test_delete_user_deletes_the_user_id() -> None:
    assert actions({"type": "track", "event": "Delete User", "userId": "u9"}) == [
        Delete("identity", "u9")
    ]


def test_numeric_user_ids_become_strings() -> None:
    assert actions({"type": "track", "event": "Delete User", "userId": 42}) == [
        Delete("identity", "42")
    ]


def test_identity_rules() -> None:
    missing = actions({"type": "identify", "anonymousId": "anon"})
    assert isinstance(missing, Invalid) and missing.code == "523"
    empty = actions({"type": "track", "event": "Delete User", "userId": ""})
    assert isinstance(empty, Invalid) and empty.code == "523"
    long = actions({"type": "identify", "userId": "x" * 120})
    assert isinstance(long, Invalid) and "120" in long.message
    assert isinstance(actions({"type": "identify", "userId": "x" * 119}), list)


def test_everything_else_is_skipped_by_type_and_event() -> None:
    assert actions({"type": "track", "event": "Order Completed"}) == Skip("track:Order Completed")
    assert actions({"type": "page", "name": "Home"}) == Skip("page")
    assert actions({"event": "x"}) == Skip("unknown:x")


_KINDS = ["track", "page", "screen", "group", "alias", "", None, 7]
_EVENTS = ["Order Completed", "Signed Up", "", None, ["a list"]]


@given(st.lists(st.tuples(st.sampled_from(_KINDS), st.sampled_from(_EVENTS)), max_size=30))
def test_one_mapper_names_every_skipped_message_by_its_own_type_and_event(
    pairs: list[tuple[object, object]],
) -> None:
    """The mapper reuses one Skip per (type, event) it has seen: each message must still
    be counted under its own type and event, however the messages before it differ."""
    mapper = build_preset(Preset.ACTIONS, MappingOptions())
    for kind, event in pairs:
        message: dict[str, object] = {"type": kind, "event": event}
        name = kind if isinstance(kind, str) and kind else "unknown"
        expected = f"{name}:{event}" if isinstance(event, str) and event else name
        assert mapper(message) == Skip(expected)


def test_reserved_keys_and_operations_reach_clevertap_as_written() -> None:
    traits = {
        **RESERVED_TRAITS,
        "tags": {"$add": ["a"]},
        "wishlist": {"$remove": ["shoes"]},
        "visits": {"$incr": 1},
        "credits": {"$decr": 2},
        "legacy": {"$delete": 1},
    }
    message = {"type": "identify", "userId": "u1", "timestamp": "2019-02-01", "traits": traits}
    for options in (MappingOptions(), MappingOptions(dates_as=DatesAs.CLEVERTAP)):
        result = build_preset(Preset.ACTIONS, options)(message)
        assert result == [
            Upload({"type": "profile", "identity": "u1", "ts": 1548979200, "profileData": traits})
        ]


def test_date_times_finer_than_milliseconds_are_counted_or_converted() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "timestamp": "2019-02-01",
        "traits": {"createdAt": "2023-01-02T00:00:00.123456+00:00"},
    }
    counting = build_preset(Preset.ACTIONS, MappingOptions())
    (upload,) = counting(message)  # type: ignore[misc]
    assert isinstance(upload, Upload)
    assert upload.record["profileData"] == {"createdAt": "2023-01-02T00:00:00.123456+00:00"}
    assert dates_left_as_text(counting) == {"createdAt": 1}
    converting = build_preset(Preset.ACTIONS, MappingOptions(convert_microseconds=True))
    (upload,) = converting(message)  # type: ignore[misc]
    assert isinstance(upload, Upload)
    assert upload.record["profileData"] == {"createdAt": 1672617600}
    assert dates_left_as_text(converting) == {}
    off = build_preset(Preset.ACTIONS, MappingOptions(convert_timestamps=False))
    off(message)
    assert dates_left_as_text(off) == {}, "nothing is converted, so nothing is left as text"
