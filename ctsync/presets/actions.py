"""The presets of Segment's CleverTap (Actions) destination, with its faults fixed.

| trigger                 | action      |
| `type = "identify"`     | User Upload |
| `event = "Delete User"` | User Delete |

Segment's User Upload reads Person Attributes from `$.properties`, which identify
messages do not have; ctsync reads `$.traits`. Segment sends `ts` as the raw ISO string,
which CleverTap rejects (525); ctsync sends integer epoch seconds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ctsync.options import MappingOptions, identity_of, record_time
from ctsync.records import (
    Counters,
    Delete,
    Invalid,
    MapResult,
    Message,
    Operation,
    SentTokens,
    Skip,
    Upload,
    skip_reason,
)
from ctsync.timestamps import FineDates, convert_object

__all__ = ["ActionsMapper", "actions_mapper"]

MAX_CACHED_SKIPS = 4096  # distinct (type, event) pairs; event names are open-ended


class ActionsMapper:
    """The mapper for `--preset actions`. `dates_left_as_text` counts the date-times
    finer than milliseconds Convert Timestamps left as text."""

    def __init__(self, options: MappingOptions) -> None:
        self._options = options
        self._fine = FineDates(convert=options.convert_microseconds)
        self._skips: dict[tuple[Any, Any], Skip] = {}
        self.counters = Counters(dates_left_as_text=self._fine.left_as_text)
        self.tokens = SentTokens()  # asked by no one: the preset sends no device token

    @property
    def dates_left_as_text(self) -> Counter[str]:
        return self.counters.dates_left_as_text

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
        ts = record_time(message.get("timestamp"), self._options.clock)
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


def actions_mapper(options: MappingOptions) -> ActionsMapper:
    """The mapper for `--preset actions`."""
    return ActionsMapper(options)
