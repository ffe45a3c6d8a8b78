"""Shaping properties for CleverTap: snake_case keys, and nested values by `--nested`.

CleverTap takes scalars as event property values (nested objects and arrays are a
per-account beta), and `.` is forbidden in keys, so nested values are

- `flatten` (the default): `{"address": {"city": "X"}}` -> `{"address_city": "X"}`,
  `{"tags": ["a", "b"]}` -> `{"tags_0": "a", "tags_1": "b"}`;
- `stringify`: replaced by their JSON text;
- `drop`: left out.

Profile properties CleverTap gives meaning to are never reshaped: its reserved keys
(`MSG-email`, `category-unsubscribe`, ...) and any property whose value is one operation
object (`{"$add": ["a"]}`, `{"$incr": 1}`) keep their key and value exactly as written,
as CleverTap's API requires (never renamed, snake_cased or flattened).

Every value left out is counted in a `Counter` keyed by property name: nested values under
`drop`, and under `flatten` a flattened key that collides with a key already present.
Mappers that shape properties count them in their `counters.dropped`
(`ctsync.records.Counters`); `dropped_values(mapper)` reads it for the run summary, and
`dates_left_as_text(mapper)` the date-times finer than milliseconds a mapper left
unconverted (both empty for a bare function).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final

import orjson

from ctsync.options import Nested
from ctsync.records import Mapper, counting
from ctsync.rules import RESERVED_PROFILE_KEYS, profile_operation

_SEPARATORS = re.compile(r"[\W_]+")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@lru_cache(maxsize=8192)
def snake_case(key: str) -> str:
    """`key` lower-cased and snake_cased, as Segment's classic destination sends it.

    `"Industry Of Traits"` -> `industry_of_traits`, `favoriteColor` -> `favorite_color`,
    `HTMLTitle` -> `html_title`. A key with no letter or digit is returned as is.
    """
    words: list[str] = []
    for chunk in _SEPARATORS.split(key):
        if chunk:
            words.extend(_CAMEL_BOUNDARY.split(chunk))
    return "_".join(words).lower() if words else key


def to_json_text(value: Any) -> str:
    """Compact JSON text of a value (for `--nested stringify`)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # integers over 64 bits, say
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _keep_key(key: str) -> str:
    return key


def _is_scalar_list(value: list[Any]) -> bool:
    return all(not isinstance(item, dict | list) for item in value)


class PropertyShaper:
    """Applies the nested policy (and optionally snake_case) to property objects.

    `dropped` counts, per property name, the values left out.
    """

    __slots__ = ("_rename", "dropped", "nested")

    def __init__(self, nested: Nested, *, snake_case_keys: bool = False) -> None:
        self.nested = nested
        self.dropped: Counter[str] = Counter()
        self._rename: Callable[[str], str] = snake_case if snake_case_keys else _keep_key

    def event_data(self, data: dict[str, Any], *, charged: bool = False) -> dict[str, Any]:
        """Event properties: every value a scalar, by the nested policy.

        For `Charged` (`charged=True`) an `Items` array stays an array, each item flat.
        """
        items = data.get("Items") if charged else None
        if not isinstance(items, list):
            return self._shape(data, profile=False)
        rest = {key: value for key, value in data.items() if key != "Items"}
        shaped = self._shape(rest, profile=False)
        shaped["Items"] = [
            self._shape(item, profile=False) if isinstance(item, dict) else item for item in items
        ]
        return shaped

    def profile_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """Profile properties: arrays of scalars kept (multi-value), CleverTap's reserved
        keys and operation objects kept as written, the rest by policy."""
        return self._shape(data, profile=True)

    def rename(self, key: str) -> str:
        """A key as this shaper writes it."""
        return self._rename(key)

    def _shape(self, data: dict[str, Any], *, profile: bool) -> dict[str, Any]:
        """`data` by the nested policy. A `profile` keeps arrays of scalars (multi-values),
        reserved keys and operation objects; event properties keep none of them."""
        rename = self._rename
        out: dict[str, Any] = {}
        nested: list[tuple[str, Any]] = []
        for raw_key, value in data.items():
            if profile and (
                raw_key in RESERVED_PROFILE_KEYS
                or (type(value) is dict and profile_operation(value) is not None)
            ):
                # Key and value as written, whatever the renaming (clevertap-api.md).
                if raw_key in out:
                    self.dropped[raw_key] += 1
                else:
                    out[raw_key] = value
                continue
            key = rename(raw_key) if isinstance(raw_key, str) else raw_key
            if isinstance(value, dict) or (
                isinstance(value, list) and not (profile and _is_scalar_list(value))
            ):
                nested.append((key, value))
                continue
            if key in out:
                self.dropped[key] += 1
            else:
                out[key] = value
        # Nested values come after the scalars so a flattened key never hides a real one.
        for key, value in nested:
            if self.nested is Nested.FLATTEN:
                self._flatten_into(out, key, value)
            elif self.nested is Nested.STRINGIFY:
                if key in out:
                    self.dropped[key] += 1
                else:
                    out[key] = to_json_text(value)
            else:
                self.dropped[key] += 1
        return out

    def _flatten_into(self, out: dict[str, Any], prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self._flatten_into(out, f"{prefix}_{self._rename(str(key))}", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._flatten_into(out, f"{prefix}_{index}", item)
        elif prefix in out:
            self.dropped[prefix] += 1
        else:
            out[prefix] = value


def dates_left_as_text(mapper: Mapper) -> Counter[str]:
    """Date-times finer than milliseconds a mapper left as text so far, per property name
    (empty if it converts no dates). Read it once the run is over."""
    return counting(mapper).counters.dates_left_as_text


# Why a device token was not sent, by its `dropped` reason (see `presets.classic`).
_TOKEN_NOTES: Final = {
    "token:no-objectId": "their messages have no anonymousId, and CleverTap takes tokens "
    "only by objectId",
    "token:unknown-device-type": "the device type is neither android nor an Apple platform",
    "token:not-a-string": "context.device.token is not a string",
}


def mapping_notes(dropped: Counter[str], fine_dates: Counter[str]) -> list[str]:
    """The summary's notes on what mapping left out or unconverted, once per run: device
    tokens that could not be sent, and date-times left as text."""
    notes: list[str] = []
    for reason, why in _TOKEN_NOTES.items():
        count = dropped.get(reason, 0)
        if count:
            were = "device token was" if count == 1 else "device tokens were"
            notes.append(f"{count:,} {were} not sent: {why} (dropped_values: {reason})")
    if fine_dates:
        names = ", ".join(f"{name}: {count:,}" for name, count in fine_dates.most_common(5))
        more = f" and {len(fine_dates) - 5} more" if len(fine_dates) > 5 else ""
        notes.append(
            f"{fine_dates.total():,} date-times finer than milliseconds were left as text "
            f"({names}{more}): Segment's Convert Timestamps rule converts only up to "
            "milliseconds; --convert-microseconds converts them too (floored to seconds)"
        )
    return notes


def dropped_values(mapper: Mapper) -> Counter[str]:
    """What a mapper has left out so far, per property name (empty if it drops nothing).

    Read it once the run is over: `sum(dropped_values(mapper).values())` is the total.
    """
    return counting(mapper).counters.dropped
