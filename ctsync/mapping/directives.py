"""Segment's mapping directives, compiled once into closures over a message.

| directive | meaning |
|---|---|
| `{"@path": "$.traits.email"}` | the value at a JSONPath (`$`, `.key`, `['key']`, `[0]`) |
| `{"@template": "{{traits.first}} {{traits.last}}"}` | text with `{{path}}` substitutions |
| `{"@if": {"exists": v, "then": a, "else": b}}` | `a` when `v` is present and not null, else `b` |
| `{"@if": {"blank": v, "then": a, "else": b}}` | `a` when `v` is missing, null or `""`, else `b` |
| `{"@literal": value}` | `value` as written; directives inside it are not read |
| `{...}`, `[...]`, scalars | objects and arrays built from their compiled parts |

A value that is not there is `MISSING`, distinct from JSON null: an object leaves such
keys out (so `{"email": {"@path": "$.traits.email"}}` gives `{}` when there is no email),
an array leaves such elements out, and a template renders it as an empty string.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ctsync.errors import DirectiveError as DirectiveError
from ctsync.records import Message


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
"""A mapped value that is not there (a path that leads nowhere, an `@if` with no else, a
template none of whose fields is there)."""

Resolve = Callable[[Message], Any]
DIRECTIVES: Final = ("@path", "@template", "@if", "@literal")


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled mapping value: `resolve(message)` and a label naming its source."""

    resolve: Resolve
    label: str


_PATH_PART = re.compile(r"""\.([^.\[\]]+)|\[(\d+)\]|\[(?:'([^']*)'|"([^"]*)")\]""")


def parse_path(path: str) -> tuple[str | int, ...]:
    """The keys and indices of a JSONPath such as `$.traits.email` or `$.products[0].sku`.

    The leading `$.` may be left out (`traits.email`), as in templates.
    """
    text = path.strip()
    if text == "$":
        return ()
    if text.startswith("$"):
        text = text[1:]
    elif not text.startswith((".", "[")):
        text = "." + text
    parts: list[str | int] = []
    position = 0
    while position < len(text):
        found = _PATH_PART.match(text, position)
        if found is None:
            raise ValueError(f"invalid path {path!r} at character {position + 1}")
        key, index, single, double = found.groups()
        if index is not None:
            parts.append(int(index))
        else:
            parts.append(next(part for part in (key, single, double) if part is not None))
        position = found.end()
    return tuple(parts)


def path_getter(parts: tuple[str | int, ...]) -> Resolve:
    """A getter for parsed path parts; `MISSING` where the path leads nowhere."""
    if not parts:
        return lambda message: message
    if len(parts) == 1 and isinstance(parts[0], str):
        key: str = parts[0]
        return lambda message: message.get(key, MISSING)
    if len(parts) == 2 and isinstance(parts[0], str) and isinstance(parts[1], str):
        outer, inner = str(parts[0]), str(parts[1])

        def get_two(message: Message) -> Any:
            value = message.get(outer)
            return value.get(inner, MISSING) if isinstance(value, dict) else MISSING

        return get_two

    def get(message: Message) -> Any:
        value: Any = message
        for part in parts:
            if isinstance(part, int):
                if not isinstance(value, list) or part >= len(value):
                    return MISSING
                value = value[part]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                return MISSING
        return value

    return get


def _text_of(value: Any) -> str:
    if value is MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


_NOTHING: Final = (MISSING, None)  # a template field that is not there

_TEMPLATE_SLOT = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def compile_value(value: Any, where: str = "") -> Compiled:
    """Compile one mapping value; raises `DirectiveError` naming where it failed."""
    if isinstance(value, dict):
        directives = [key for key in value if isinstance(key, str) and key.startswith("@")]
        if directives:
            if len(value) != 1:
                raise DirectiveError(
                    where, f"a directive object holds one key, found {sorted(value)}"
                )
            return _compile_directive(directives[0], value[directives[0]], where)
        return _compile_object(value, where)
    if isinstance(value, list):
        items = [compile_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
        resolvers = tuple(item.resolve for item in items)

        def build_list(message: Message) -> list[Any]:
            out = []
            for resolve in resolvers:
                item = resolve(message)
                if item is not MISSING:
                    out.append(item)
            return out

        return Compiled(build_list, where or "array")
    constant = value
    return Compiled(lambda message: constant, repr(constant))


def _compile_object(value: dict[str, Any], where: str) -> Compiled:
    fields = tuple(
        (key, compile_value(item, f"{where}.{key}" if where else key).resolve)
        for key, item in value.items()
    )

    def build_object(message: Message) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, resolve in fields:
            item = resolve(message)
            if item is not MISSING:
                out[key] = item
        return out

    return Compiled(build_object, where or "object")


def _compile_directive(name: str, argument: Any, where: str) -> Compiled:
    if name == "@path":
        if not isinstance(argument, str):
            raise DirectiveError(where, '@path takes a string such as "$.traits.email"')
        try:
            parts = parse_path(argument)
        except ValueError as error:
            raise DirectiveError(where, str(error)) from None
        label = ".".join(str(part) for part in parts) or "$"
        return Compiled(path_getter(parts), label)
    if name == "@template":
        if not isinstance(argument, str):
            raise DirectiveError(where, "@template takes a string")
        return _compile_template(argument, where)
    if name == "@if":
        return _compile_if(argument, where)
    if name == "@literal":
        literal = argument
        return Compiled(lambda message: literal, repr(literal))
    known = ", ".join(DIRECTIVES)
    raise DirectiveError(where, f"unknown directive {name!r} (known: {known})")


def _compile_template(template: str, where: str) -> Compiled:
    pieces: list[str | Resolve] = []
    position = 0
    for slot in _TEMPLATE_SLOT.finditer(template):
        if slot.start() > position:
            pieces.append(template[position : slot.start()])
        try:
            pieces.append(path_getter(parse_path(slot.group(1))))
        except ValueError as error:
            raise DirectiveError(where, f"@template: {error}") from None
        position = slot.end()
    if position < len(template):
        pieces.append(template[position:])
    if "{{" in "".join(piece for piece in pieces if isinstance(piece, str)):
        raise DirectiveError(where, "@template: a '{{' is not closed by '}}'")
    parts = tuple(pieces)
    fields = tuple(piece for piece in parts if not isinstance(piece, str))

    def render(message: Message) -> Any:
        if fields and all(field(message) in _NOTHING for field in fields):
            # Every field missing: no value (a Name of " " would overwrite the real one).
            return MISSING
        return "".join(
            piece if isinstance(piece, str) else _text_of(piece(message)) for piece in parts
        )

    return Compiled(render, where or "template")


def _compile_if(argument: Any, where: str) -> Compiled:
    if not isinstance(argument, dict):
        raise DirectiveError(where, "@if takes an object with exists (or blank), then, else")
    conditions = [key for key in ("exists", "blank") if key in argument]
    unknown = sorted(set(argument) - {"exists", "blank", "then", "else"})
    if unknown:
        raise DirectiveError(where, f"@if: unknown key {unknown[0]!r}")
    if len(conditions) != 1:
        raise DirectiveError(where, "@if needs exactly one of exists or blank")
    if "then" not in argument and "else" not in argument:  # (always missing: a slip)
        raise DirectiveError(where, "@if needs then or else (or both)")
    condition = compile_value(argument[conditions[0]], f"{where}.@if.{conditions[0]}").resolve
    then = _branch(argument, "then", where)
    otherwise = _branch(argument, "else", where)
    if conditions[0] == "exists":

        def if_exists(message: Message) -> Any:
            value = condition(message)
            chosen = then if value is not MISSING and value is not None else otherwise
            return chosen(message)

        return Compiled(if_exists, where or "@if")

    def if_blank(message: Message) -> Any:
        value = condition(message)
        chosen = then if value is MISSING or value is None or value == "" else otherwise
        return chosen(message)

    return Compiled(if_blank, where or "@if")


def _nothing(message: Message) -> Any:
    return MISSING


def _branch(argument: dict[str, Any], key: str, where: str) -> Resolve:
    if key not in argument:
        return _nothing
    return compile_value(argument[key], f"{where}.@if.{key}").resolve
