"""The presets of Segment's CleverTap (Actions) destination, with its faults fixed.

| trigger                 | action      |
| `type = "identify"`     | User Upload |
| `event = "Delete User"` | User Delete |

Segment's User Upload reads Person Attributes from `$.properties`, which identify
messages do not have; ctsync reads `$.traits`. Segment sends `ts` as the raw ISO string,
which CleverTap rejects (525); ctsync sends integer epoch seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ctsync.presets import MappingOptions
from ctsync.records import (
    Delete,
    Invalid,
    Mapper,
    MapResult,
    Message,
    Operation,
    Skip,
    Upload,
    skip_reason,
)
from ctsync.timestamps import FineDates, convert_object, event_time

MAX_IDENTITY_LENGTH = 119  # CleverTap: "under 120 characters"
MAX_CACHED_SKIPS = 4096  # distinct (type, event) pairs; event names are open-ended


def identity_of(value: Any, field: str) -> str | Invalid:
    """A CleverTap identity from a Segment id field, or why it cannot be one."""
    if type(value) is str and 0 < len(value) <= MAX_IDENTITY_LENGTH:
        return value  # the common case, decided by one type check
    if isinstance(value, bool) or value is None or value == "":
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


def record_time(message: Message) -> int | Invalid:
    """`ts` for a message: its timestamp in epoch seconds, or now when it has none."""
    raw = message.get("timestamp")
    if raw is None:
        return int(time.time())
    ts = event_time(raw)
    if ts is None:
        return Invalid("525", f"timestamp {raw!r} is not a date-time")
    return ts


class ActionsMapper:
    """The mapper for `--preset actions`. `dates_left_as_text` counts the date-times
    finer than milliseconds Convert Timestamps left as text."""

    def __init__(self, options: MappingOptions) -> None:
        self._options = options
        self._fine = FineDates(convert=options.convert_microseconds)
        self._skips: dict[tuple[Any, Any], Skip] = {}

    @property
    def dates_left_as_text(self) -> Counter[str]:
        return self._fine.left_as_text

    def __call__(self, message: Message) -> MapResult:
        ops: list[Operation] = []
        if message.get("type") == "identify":
            op = self._user_upload(message)
            if isinstance(op, Invalid):
                return op
            ops.append(op)
        if message.get("event") == "Delete User":
            delete = self._user_delete(message)
            if isinstance(delete, Invalid):
                return delete
            ops.append(delete)
        return ops or self._skip(message)

    def _user_upload(self, message: Message) -> Upload | Invalid:
        identity = identity_of(message.get("userId"), "userId")
        if isinstance(identity, Invalid):
            return identity
        ts = record_time(message)
        if isinstance(ts, Invalid):
            return ts
        traits = message.get("traits")
        profile = traits if isinstance(traits, dict) else {}
        options = self._options
        if options.convert_timestamps:
            profile = convert_object(profile, options.dates_as, fine=self._fine)
        return Upload({"type": "profile", "identity": identity, "ts": ts, "profileData": profile})

    def _user_delete(self, message: Message) -> Delete | Invalid:
        identity = identity_of(message.get("userId"), "userId")
        if isinstance(identity, Invalid):
            return identity
        return Delete("identity", identity)

    def _skip(self, message: Message) -> Skip:
        # One Skip per (type, event), reused: half of an export is skipped, and building
        # the reason and a frozen dataclass for each costs more than the lookup.
        key = (message.get("type"), message.get("event"))
        try:
            found = self._skips.get(key)
        except TypeError:  # an unhashable type or event (a list): no caching
            return Skip(skip_reason(message))
        if found is None:
            found = Skip(skip_reason(message))
            if len(self._skips) < MAX_CACHED_SKIPS:
                self._skips[key] = found
        return found


def actions_mapper(options: MappingOptions) -> Mapper:
    """The mapper for `--preset actions` (an `ActionsMapper`)."""
    return ActionsMapper(options)
