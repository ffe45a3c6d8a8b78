"""The subscription trigger language: operators, literals, precedence and syntax errors."""

from __future__ import annotations

from typing import Any

import pytest

from ctsync.mapping import TriggerSyntaxError, compile_trigger

ORDER = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u1",
    "properties": {"revenue": 25, "coupon": None, "tags": ["sale", "new"], "paid": True},
    "context": {"device": {"type": "ios"}},
}


def fires(trigger: str, message: dict[str, Any] = ORDER) -> bool:
    return compile_trigger(trigger)(message)


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        ('type = "track"', True),
        ('type = "identify"', False),
        ('event != "Order Completed"', False),
        ('event != "Signed Up"', True),
        ("properties.revenue = 25", True),
        ("properties.revenue = 25.0", True),
        ('properties.revenue = "25"', False),
        ("properties.revenue > 20", True),
        ("properties.revenue >= 25", True),
        ("properties.revenue < 25", False),
        ("properties.revenue <= 25", True),
        ("properties.revenue > -1.5", True),
        ('event > "A"', True),
        ('properties.revenue > "1"', False),
        ("properties.paid = true", True),
        ("properties.paid = 1", False),
        ("properties.coupon = null", True),
        ("properties.missing = null", True),
        ("properties.missing != null", False),
        ('context.device.type = "ios"', True),
        ("userId exists", True),
        ("anonymousId exists", False),
        ("properties.coupon exists", False),
        ("properties.revenue exists", True),
        ('contains(event, "Order")', True),
        ('contains(event, "order")', False),
        ('contains(properties.tags, "sale")', True),
        ('contains(properties.missing, "x")', False),
        ('match(event, "Order*")', True),
        ('match(event, "*Completed")', True),
        ('match(event, "Order ?ompleted")', True),
        ('match(event, "order*")', False),
        ('match(properties.revenue, "2*")', False),
    ],
)
def test_operators(trigger: str, expected: bool) -> None:
    assert fires(trigger) is expected


def test_string_escapes() -> None:
    assert fires(r'event = "say \"hi\""', {"event": 'say "hi"'})
    assert fires(r'event = "back\\slash"', {"event": "back\\slash"})


def test_not_binds_tighter_than_and_and_than_or() -> None:
    # `not a and b` is `(not a) and b`; `a or b and c` is `a or (b and c)`.
    identify = {"type": "identify"}
    assert fires('not type = "track" and type = "identify"', identify)
    assert fires('not (type = "track" and type = "identify")', {"type": "track"})
    # With both comparisons false, `(not a) and b` is false but `not (a and b)` is true.
    assert not fires('not type = "track" and type = "identify"', {"type": "page"})
    assert fires('type = "identify" or type = "track" and event = "Nope"', identify)
    assert not fires('(type = "identify" or type = "track") and event = "Nope"', identify)
    assert fires('type = "track" and event = "Nope" or userId exists', {"userId": "u"})


def test_and_or_not_chains() -> None:
    assert fires('type = "track" and event = "Order Completed" and properties.revenue > 10')
    assert fires('type = "page" or type = "screen" or type = "track"')
    assert fires('not not type = "track"')
    assert not fires('not (type = "track" or type = "page")')


def test_whitespace_is_free() -> None:
    assert fires('type="track"and(event!="x")')
    assert fires("  properties.revenue>=25  ")


@pytest.mark.parametrize(
    ("trigger", "column", "reason"),
    [
        ("", 1, "empty trigger"),
        ('type = "track', 8, "unterminated string"),
        ("type = 'track'", 8, "double quotes"),
        ('type == "track"', 7, "expected a string"),
        ('type "track"', 6, "expected an operator"),
        ('type = "track" and', 19, "expected a field"),
        ('type = "track" event = "x"', 16, "expected 'and', 'or' or the end"),
        ('(type = "track"', 16, "expected ')'"),
        ('foo = "x"', 1, "unknown field 'foo'"),
        ('type = "a" and bogus.x = 1', 16, "unknown field"),
        ("properties = 1", 1, "name a field inside properties"),
        ('contains(event "x")', 16, "expected ','"),
        ("match(event, 5)", 14, "expected a string"),
        ('type = "a" & event = "b"', 12, "unexpected character '&'"),
        ("properties.paid > true", 17, "compares numbers or strings"),
        ('event = "a\\q"', 11, "unknown escape"),
        ("and = 1", 1, "expected a field"),
    ],
)
def test_syntax_errors_give_the_column(trigger: str, column: int, reason: str) -> None:
    with pytest.raises(TriggerSyntaxError) as raised:
        compile_trigger(trigger)
    assert raised.value.column == column
    assert reason in str(raised.value)
    assert str(raised.value).startswith(f"column {column}:")
