"""What the presets and mapping files share: their options, a record's identity and its
time. A leaf module (it imports only `records`, `rules` limits and `timestamps`), so that
`ctsync.presets` and `ctsync.mapping` both depend on it and not on each other."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from ctsync.records import (
    Counters,
    Invalid,
    Mapper,
    MapResult,
    Message,
    SentTokens,
    Skip,
    Upload,
    counting,
)
from ctsync.rules import MAX_IDENTITY_LENGTH
from ctsync.timestamps import DatesAs, event_time

Clock = Callable[[], float]
"""Seconds since the epoch, now: `wall_clock`, or a fixed clock in tests."""


def wall_clock() -> float:
    """The system's clock (`time.time`, looked up at each call)."""
    return time.time()


class Nested(StrEnum):
    """What to do with nested objects and arrays in event properties."""

    DROP = "drop"
    STRINGIFY = "stringify"
    FLATTEN = "flatten"


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingOptions:
    """Settings every mapper honours."""

    convert_timestamps: bool = True
    dates_as: DatesAs = DatesAs.UNIX
    nested: Nested = Nested.FLATTEN
    max_event_properties: int = 256
    # Also convert date-times finer than milliseconds (floored to seconds); Segment's rule
    # leaves them as text, and so does ctsync unless asked (`--convert-microseconds`).
    convert_microseconds: bool = False
    # Classic preset: an identify with userId and anonymousId goes to the anonymous
    # profile (objectId) with Identity set, linking it to the user (`--link-anonymous`).
    link_anonymous: bool = False
    # Re-driving dead letters: send events and tokens, leave out profile writes, which
    # could put an older value over one a later identify set (`--events-only`).
    events_only: bool = False
    # "Now", for a message without a timestamp: the one clock every mapper reads.
    clock: Clock = field(default=wall_clock, compare=False, repr=False)


def is_blank(value: Any) -> bool:
    """An empty id, or one of spaces only: no id (one profile for every such message)."""
    return type(value) is str and (value == "" or value.isspace())


def identity_of(value: Any, field: str) -> str | Invalid:
    """A CleverTap identity from a Segment id field, or why it cannot be one."""
    if type(value) is str and 0 < len(value) <= MAX_IDENTITY_LENGTH and not value.isspace():
        return value  # the common case, decided by one type check
    if isinstance(value, bool):  # JSON's spelling: the report quotes the message
        return Invalid("523", f"no identity: {field} is {str(value).lower()}, not a string")
    if value is None or is_blank(value):
        return Invalid("523", f"no identity: {field} is missing or empty")
    if type(value) is int:
        # Sent as its decimal string, exactly. orjson reads integers beyond 64 bits as
        # floats, which would merge distinct users into one rounded identity.
        if not -(2**63) <= value < 2**64:
            return Invalid("523", f"identity: {field} is an integer beyond 64 bits")
        value = str(value)
    elif type(value) is float:
        return Invalid(
            "523",
            f"identity: {field} is a number with a fraction, an exponent or beyond 64 bits "
            f"({value!r}); it cannot be taken exactly",
        )
    if not isinstance(value, str):
        return Invalid("523", f"no identity: {field} is not a string")
    if len(value) > MAX_IDENTITY_LENGTH:
        return Invalid("523", f"identity is {len(value)} characters; CleverTap needs under 120")
    return value


def record_time(value: Any, clock: Clock = wall_clock) -> int | Invalid:
    """`ts` for a message's timestamp (`value`): epoch seconds, or now by `clock` when
    there is none (None: the message has no timestamp)."""
    if value is None:
        return int(clock())
    ts = event_time(value)
    if ts is None:
        return Invalid("525", f"timestamp {_json(value)} is not a date-time")
    return ts


EVENTS_ONLY_DROPPED = "profile:--events-only"
"""The `dropped_values` key of profile writes `--events-only` left out of a message that
also had an event to send."""


class EventsOnly:
    """A mapper that sends what `inner` makes except profile writes (`--events-only`).
    A message left with nothing to send is a Skip, `events-only:<type>`; the counters
    and tokens of `inner` are this mapper's."""

    def __init__(self, inner: Mapper) -> None:
        self._inner = inner
        counted = counting(inner)
        self.counters: Counters = counted.counters
        self.tokens: SentTokens = counted.tokens
        self.dropped: Counter[str] = self.counters.dropped

    def __call__(self, message: Message) -> MapResult:
        result = self._inner(message)
        if not isinstance(result, list):
            return result
        kept = [op for op in result if not _profile_write(op)]
        if len(kept) == len(result):
            return result
        if not kept:
            kind = message.get("type")
            return Skip(f"events-only:{kind if isinstance(kind, str) and kind else 'unknown'}")
        self.dropped[EVENTS_ONLY_DROPPED] += len(result) - len(kept)
        return kept


def _profile_write(operation: object) -> bool:
    return isinstance(operation, Upload) and operation.record.get("type") == "profile"


def _json(value: Any) -> str:
    """A message's value as JSON spells it (`true`, `null`, `"x"`), for a reason."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # (orjson refuses what JSON cannot hold: never read from JSON)
        return repr(value)
