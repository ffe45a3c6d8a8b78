"""Mapping directives: @path, @template, @if, @literal, objects, and unknown directives."""

from __future__ import annotations

from typing import Any

import pytest

from ctsync.mapping import MISSING, DirectiveError, compile_value

MESSAGE = {
    "type": "identify",
    "userId": "u1",
    "traits": {
        "first": "Ada",
        "last": "Lovelace",
        "email": "ada@example.com",
        "age": 36,
        "vip": True,
        "nickname": None,
        "empty": "",
        "first name": "Ada",
        "address": {"city": "London"},
    },
    "properties": {"products": [{"sku": "s1"}, {"sku": "s2"}]},
}


def resolve(value: Any, message: dict[str, Any] = MESSAGE) -> Any:
    return compile_value(value).resolve(message)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.userId", "u1"),
        ("$.traits.email", "ada@example.com"),
        ("$.traits.address.city", "London"),
        ("$.traits['first name']", "Ada"),
        ('$.traits["first name"]', "Ada"),
        ("$.properties.products[1].sku", "s2"),
        ("$.traits.nickname", None),
        ("$.traits.missing", MISSING),
        ("$.traits.email.deeper", MISSING),
        ("$.properties.products[5].sku", MISSING),
        ("$.nothing.at.all", MISSING),
    ],
)
def test_path(path: str, expected: Any) -> None:
    assert resolve({"@path": path}) == expected


def test_path_to_root_is_the_message() -> None:
    assert resolve({"@path": "$"}) is MESSAGE


def test_template_substitutes_and_renders_missing_as_empty() -> None:
    assert resolve({"@template": "{{traits.first}} {{traits.last}}"}) == "Ada Lovelace"
    assert resolve({"@template": "Hi {{ traits.first }}!"}) == "Hi Ada!"
    assert resolve({"@template": "{{traits.first}}|{{traits.nickname}}"}) == "Ada|"
    assert resolve({"@template": "{{traits.missing}} {{traits.first}}"}) == " Ada"
    assert resolve({"@template": "no fields"}) == "no fields"


def test_a_template_none_of_whose_fields_is_there_is_left_out() -> None:
    """The README's example built Name from first_name and last_name: for a profile with
    neither (the samples have `name`) it sent "Name": " ", over the real name (the
    walkthrough found it). Missing and null fields alike."""
    assert resolve({"@template": "{{traits.missing}}|{{traits.nickname}}"}) is MISSING
    compiled = compile_value(
        {"Name": {"@template": "{{traits.gone}} {{traits.nickname}}"}, "Email": "x"}, "profileData"
    )
    assert compiled.resolve(MESSAGE) == {"Email": "x"}
    assert resolve({"@template": "{{traits.age}} {{traits.vip}}"}) == "36 true"
    assert resolve({"@template": "{{$.userId}}"}) == "u1"
    assert resolve({"@template": "{{traits.address}}"}) == '{"city":"London"}'


def test_if_exists_chooses_then_or_else() -> None:
    choose = {
        "@if": {
            "exists": {"@path": "$.traits.email"},
            "then": {"@path": "$.traits.email"},
            "else": {"@literal": "none"},
        }
    }
    assert resolve(choose) == "ada@example.com"
    assert resolve(choose, {"traits": {}}) == "none"
    assert resolve(choose, {"traits": {"email": None}}) == "none"


def test_if_without_else_is_missing() -> None:
    value = {"@if": {"exists": {"@path": "$.traits.missing"}, "then": 1}}
    assert resolve(value) is MISSING
    assert resolve({"x": value}) == {}


def test_if_blank() -> None:
    value = {"@if": {"blank": {"@path": "$.traits.empty"}, "then": "blank", "else": "set"}}
    assert resolve(value) == "blank"
    assert resolve(value, {"traits": {"empty": "x"}}) == "set"
    assert resolve(value, {"traits": {}}) == "blank"


def test_literal_is_not_interpreted() -> None:
    assert resolve({"@literal": {"@path": "$.userId"}}) == {"@path": "$.userId"}
    assert resolve({"@literal": "Charged"}) == "Charged"
    assert resolve({"@literal": None}) is None


def test_objects_and_arrays_are_built_and_missing_values_left_out() -> None:
    value = {
        "Email": {"@path": "$.traits.email"},
        "Phone": {"@path": "$.traits.phone"},
        "Nick": {"@path": "$.traits.nickname"},
        "constant": 3,
        "nested": {"city": {"@path": "$.traits.address.city"}},
        "list": [{"@path": "$.userId"}, {"@path": "$.nope"}, "x"],
    }
    assert resolve(value) == {
        "Email": "ada@example.com",
        "Nick": None,
        "constant": 3,
        "nested": {"city": "London"},
        "list": ["u1", "x"],
    }


def test_built_objects_are_fresh_each_time() -> None:
    compiled = compile_value({"a": {"@path": "$.userId"}})
    first = compiled.resolve(MESSAGE)
    first["b"] = 1
    assert compiled.resolve(MESSAGE) == {"a": "u1"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"@json": {"@path": "$.traits"}}, "unknown directive '@json'"),
        ({"@path": "$.a", "@template": "x"}, "one key"),
        ({"@path": "$.a", "other": 1}, "one key"),
        ({"@path": 5}, "@path takes a string"),
        ({"@path": "$.a[x]"}, "invalid path"),
        ({"@template": ["x"]}, "@template takes a string"),
        ({"@template": "{{traits.first"}, "not closed"),
        ({"@if": {"then": 1}}, "exactly one of exists or blank"),
        ({"@if": {"exists": 1, "than": 2}}, "unknown key 'than'"),
        ({"@if": {"exists": {"@path": "$.traits.email"}}}, "@if needs then or else"),
        ({"@if": "x"}, "@if takes an object"),
    ],
)
def test_invalid_directives_fail_at_compile_time(value: Any, reason: str) -> None:
    with pytest.raises(DirectiveError) as raised:
        compile_value(value, "profileData")
    assert reason in str(raised.value)


def test_unknown_directive_deep_inside_names_its_place() -> None:
    with pytest.raises(DirectiveError) as raised:
        compile_value({"a": {"b": [1, {"@nope": 1}]}}, "evtData")
    assert raised.value.where == "evtData.a.b[1]"
