"""`encode`: what an operation's safety to re-send is, whatever the record holds.

An operation is re-sent after an answer that leaves it unknown whether CleverTap stored
it only when it is safe: CleverTap's docs (clevertap-api.md, profile operations) make
`$incr`, `$decr` and `$add` on a profile property add up when applied twice; a plain
upsert of values, a token and a deletion end the same. Events are never safe (stored
twice, they count twice).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ctsync.prepare import encode
from ctsync.records import Delete, Upload

COUNTING = ("$incr", "$decr", "$add")
OTHER_OPERATORS = ("$remove", "$delete", "$set")


def safe_by_the_docs(record: dict[str, Any]) -> bool:
    """The model: only a counting operation at a profile property's top level counts up."""
    if record["type"] == "token":
        return True
    if record["type"] != "profile":
        return False
    return not any(
        isinstance(value, dict) and any(op in value for op in COUNTING)
        for value in record["profileData"].values()
    )


# Values that look like operators without being one: a price, an operator name as a
# string or a key deeper down, a key with a quote before the dollar sign.
scalars = st.one_of(
    st.integers(-5, 5),
    st.sampled_from(["$19.99", "$incr", '"$add"', "plain", "", "$"]),
    st.text(max_size=6),
)
operation = st.builds(
    lambda op, value: {op: value},
    st.sampled_from(COUNTING + OTHER_OPERATORS),
    st.one_of(st.integers(1, 3), st.lists(st.text(max_size=3), max_size=2)),
)
nested = st.dictionaries(
    st.sampled_from(["city", "$incr", 'a"$add', "zip"]),
    st.one_of(scalars, operation),
    max_size=3,
)
properties = st.dictionaries(
    st.sampled_from(["Name", "visits", "$add", "Price", 'q"$decr', "address", "tags"]),
    st.one_of(scalars, operation, nested),
    max_size=5,
)


@given(properties)
def test_a_profile_is_safe_exactly_when_no_property_counts(data: dict[str, Any]) -> None:
    record = {"type": "profile", "identity": "u1", "ts": 1, "profileData": data}
    assert encode(Upload(record)).safe is safe_by_the_docs(record)


@given(properties)
def test_events_are_never_safe_and_tokens_always(data: dict[str, Any]) -> None:
    event = {"type": "event", "identity": "u1", "ts": 1, "evtName": "x", "evtData": data}
    token = {"type": "token", "identity": "u1", "tokenData": {"id": "t", "type": "fcm"}}
    assert encode(Upload(event)).safe is False
    assert encode(Upload(token)).safe is True


def test_known_cases() -> None:
    def safe(data: dict[str, Any]) -> bool:
        return encode(Upload({"type": "profile", "identity": "u", "profileData": data})).safe

    assert safe({"Price": "$19.99", "Name": "$incr"})  # strings, not operations
    assert safe({"address": {"street": {"$incr": 1}}})  # not at the top level
    assert safe({"tags": {"$remove": ["a"]}, "x": {"$delete": 1}})
    assert not safe({"visits": {"$incr": 1}})
    assert not safe({"Name": "A", "score": {"$decr": 2}})
    assert not safe({"tags": {"$add": ["b"]}})
    assert encode(Delete("identity", "u1")).safe
