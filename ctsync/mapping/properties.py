"""Shaping properties for CleverTap: snake_case keys, and nested values by `--nested`.

CleverTap takes scalars as event property values (nested objects and arrays are a
per-account beta), and `.` is forbidden in keys, so nested values are

- `flatten` (the default): `{"address": {"city": "X"}}` -> `{"address_city": "X"}`,
  `{"tags": ["a", "b"]}` -> `{"tags_0": "a", "tags_1": "b"}`;
- `stringify`: replaced by their JSON text;
- `drop`: left out.

Every value left out is counted in a `Counter` keyed by property name: nested values under
`drop`, and under `flatten` a flattened key that collides with a key already present.
Mappers that shape properties expose that counter as their `dropped` attribute;
`dropped_values(mapper)` reads it for the run summary.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson

from ctsync.presets import Nested
from ctsync.records import Mapper

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
            return self._shape(data, keep_scalar_lists=False)
        rest = {key: value for key, value in data.items() if key != "Items"}
        shaped = self._shape(rest, keep_scalar_lists=False)
        shaped["Items"] = [
            self._shape(item, keep_scalar_lists=False) if isinstance(item, dict) else item
            for item in items
        ]
        return shaped

    def profile_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """Profile properties: arrays of scalars kept (multi-value), the rest by policy."""
        return self._shape(data, keep_scalar_lists=True)

    def rename(self, key: str) -> str:
        """A key as this shaper writes it."""
        return self._rename(key)

    def _shape(self, data: dict[str, Any], *, keep_scalar_lists: bool) -> dict[str, Any]:
        rename = self._rename
        out: dict[str, Any] = {}
        nested: list[tuple[str, Any]] = []
        for raw_key, value in data.items():
            key = rename(raw_key) if isinstance(raw_key, str) else raw_key
            if isinstance(value, dict) or (
                isinstance(value, list) and not (keep_scalar_lists and _is_scalar_list(value))
            ):
                nested.append((key, value))
            elif key in out:
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


def dropped_values(mapper: Mapper) -> Counter[str]:
    """What a mapper has left out so far, per property name (empty if it drops nothing).

    Read it once the run is over: `sum(dropped_values(mapper).values())` is the total.
    """
    counter = getattr(mapper, "dropped", None)
    return counter if isinstance(counter, Counter) else Counter()
