"""Segment's subscription trigger syntax, compiled to a predicate over a message.

Grammar (lowest precedence first; `not` binds tighter than `and`, `and` than `or`):

    expression := conjunction ("or" conjunction)*
    conjunction := negation ("and" negation)*
    negation   := "not" negation | primary
    primary    := "(" expression ")"
                | ("contains" | "match") "(" field "," string ")"
                | field "exists"
                | field ("=" | "!=" | "<" | "<=" | ">" | ">=") literal
    literal    := string | number | "true" | "false" | "null"

Fields: `type`, `event`, `name`, `userId`, `anonymousId`, `previousId`, `groupId`,
`messageId`, and dotted paths under `properties.`, `traits.`, `context.`.

Semantics: a missing field is null. `=` and `!=` compare values of the same JSON type
(`true` never equals `1`); `<`, `<=`, `>`, `>=` hold between two numbers or two strings
and are false otherwise. `contains` is a substring test on strings (membership on
arrays); `match` is a case-sensitive glob (`*`, `?`) on strings. `exists` holds when the
field is present and not null.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ctsync.errors import TriggerSyntaxError as TriggerSyntaxError
from ctsync.records import Message

Predicate = Callable[[Message], bool]
Getter = Callable[[Message], Any]

TOP_LEVEL_FIELDS: Final = frozenset(
    {"type", "event", "name", "userId", "anonymousId", "previousId", "groupId", "messageId"}
)
OBJECT_FIELDS: Final = frozenset({"properties", "traits", "context"})
KEYWORDS: Final = frozenset({"and", "or", "not", "exists", "true", "false", "null"})
FUNCTIONS: Final = frozenset({"contains", "match"})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "word", "string", "number", "op", "(", ")", ",", "end"
    text: str
    value: Any
    column: int


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w.])
  | (?P<word>[A-Za-z_$][\w$-]*(?:\.[\w$-]+)*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>!=|<=|>=|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)
_ESCAPES: Final = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "/": "/"}


def tokenize(text: str) -> list[Token]:
    """The tokens of a trigger, ending with an `end` token."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        found = _TOKEN.match(text, position)
        column = position + 1
        if found is None:
            char = text[position]
            if char == '"':
                raise TriggerSyntaxError("unterminated string", column)
            if char == "'":
                raise TriggerSyntaxError("strings are written in double quotes", column)
            raise TriggerSyntaxError(f"unexpected character {char!r}", column)
        kind = found.lastgroup
        raw = found.group()
        position = found.end()
        if kind == "space":
            continue
        if kind == "number":
            number = float(raw)
            tokens.append(
                Token("number", raw, int(number) if number.is_integer() else number, column)
            )
        elif kind == "string":
            tokens.append(Token("string", raw, _unescape(raw, column), column))
        elif kind == "punct":
            tokens.append(Token(raw, raw, None, column))
        else:
            tokens.append(Token(str(kind), raw, None, column))
    tokens.append(Token("end", "", None, len(text) + 1))
    return tokens


def _unescape(raw: str, column: int) -> str:
    out: list[str] = []
    chars = iter(enumerate(raw[1:-1], start=column + 1))
    for offset, char in chars:
        if char != "\\":
            out.append(char)
            continue
        _, escaped = next(chars)
        if escaped not in _ESCAPES:
            raise TriggerSyntaxError(f"unknown escape \\{escaped} in string", offset)
        out.append(_ESCAPES[escaped])
    return "".join(out)


def field_getter(path: str) -> Getter:
    """A getter for a dotted message field; missing parts read as None."""
    first, *rest = path.split(".")
    if not rest:
        return lambda message: message.get(first)
    keys = (first, *rest)

    def get(message: Message) -> Any:
        value: Any = message
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return get


def _same_type_equal(left: Any, right: Any) -> bool:
    if left is None or right is None:
        return left is right
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and bool(left == right)


_ORDERINGS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _ordered(left: Any, right: Any) -> bool:
    """Whether `left` and `right` can be ordered: two numbers or two strings."""
    if isinstance(left, str):
        return isinstance(right, str)
    return (
        isinstance(left, int | float)
        and not isinstance(left, bool)
        and isinstance(right, int | float)
        and not isinstance(right, bool)
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def is_word(self, word: str) -> bool:
        token = self.current
        return token.kind == "word" and token.text == word

    def expect(self, kind: str, what: str) -> Token:
        token = self.current
        if token.kind != kind:
            raise TriggerSyntaxError(f"expected {what}, found {_describe(token)}", token.column)
        return self.advance()

    def parse(self) -> Predicate:
        if self.current.kind == "end":
            raise TriggerSyntaxError("empty trigger", 1)
        predicate = self.expression()
        token = self.current
        if token.kind != "end":
            raise TriggerSyntaxError(
                f"expected 'and', 'or' or the end, found {_describe(token)}", token.column
            )
        return predicate

    def expression(self) -> Predicate:
        parts = [self.conjunction()]
        while self.is_word("or"):
            self.advance()
            parts.append(self.conjunction())
        if len(parts) == 1:
            return parts[0]
        alternatives = tuple(parts)
        return lambda message: any(part(message) for part in alternatives)

    def conjunction(self) -> Predicate:
        parts = [self.negation()]
        while self.is_word("and"):
            self.advance()
            parts.append(self.negation())
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            left, right = parts
            return lambda message: left(message) and right(message)
        conditions = tuple(parts)
        return lambda message: all(part(message) for part in conditions)

    def negation(self) -> Predicate:
        if self.is_word("not"):
            self.advance()
            inner = self.negation()
            return lambda message: not inner(message)
        return self.primary()

    def primary(self) -> Predicate:
        token = self.current
        if token.kind == "(":
            self.advance()
            inner = self.expression()
            self.expect(")", "')'")
            return inner
        if token.kind == "word" and token.text in FUNCTIONS:
            return self.function()
        get = self.field()
        if self.is_word("exists"):
            self.advance()
            return lambda message: get(message) is not None
        op = self.current
        if op.kind != "op":
            raise TriggerSyntaxError(
                f"expected an operator (=, !=, <, <=, >, >=) or 'exists', found {_describe(op)}",
                op.column,
            )
        self.advance()
        expected = self.literal()
        if op.text == "=":
            return lambda message: _same_type_equal(get(message), expected)
        if op.text == "!=":
            return lambda message: not _same_type_equal(get(message), expected)
        if not isinstance(expected, int | float | str) or isinstance(expected, bool):
            raise TriggerSyntaxError(
                f"{op.text} compares numbers or strings, not {_literal_text(expected)}", op.column
            )
        compare = _ORDERINGS[op.text]

        def ordered(message: Message) -> bool:
            value = get(message)
            return _ordered(value, expected) and bool(compare(value, expected))

        return ordered

    def function(self) -> Predicate:
        name = self.advance().text
        self.expect("(", f"'(' after {name}")
        get = self.field()
        self.expect(",", "','")
        argument = self.expect("string", "a string").value
        self.expect(")", "')'")
        if name == "contains":

            def contains(message: Message) -> bool:
                value = get(message)
                if isinstance(value, str):
                    return argument in value
                return isinstance(value, list) and argument in value

            return contains
        pattern = re.compile(fnmatch.translate(argument), re.DOTALL)

        def matches(message: Message) -> bool:
            value = get(message)
            return isinstance(value, str) and pattern.match(value) is not None

        return matches

    def field(self) -> Getter:
        token = self.current
        if token.kind != "word" or token.text in KEYWORDS or token.text in FUNCTIONS:
            raise TriggerSyntaxError(f"expected a field, found {_describe(token)}", token.column)
        path = token.text
        root, _, rest = path.partition(".")
        if root in OBJECT_FIELDS:
            if not rest:
                raise TriggerSyntaxError(f"name a field inside {root}, e.g. {root}.x", token.column)
        elif root not in TOP_LEVEL_FIELDS or rest:
            raise TriggerSyntaxError(f"unknown field {path!r}", token.column)
        self.advance()
        return field_getter(path)

    def literal(self) -> Any:
        token = self.current
        if token.kind in ("string", "number"):
            self.advance()
            return token.value
        if token.kind == "word" and token.text in ("true", "false", "null"):
            self.advance()
            return {"true": True, "false": False, "null": None}[token.text]
        raise TriggerSyntaxError(
            f"expected a string, number, true, false or null, found {_describe(token)}",
            token.column,
        )


def _describe(token: Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def _literal_text(value: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(value, repr(value))


def compile_trigger(text: str) -> Predicate:
    """The predicate of a trigger; raises `TriggerSyntaxError` (with a column) if invalid."""
    return _Parser(text).parse()
