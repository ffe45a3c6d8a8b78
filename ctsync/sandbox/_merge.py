"""How a profile upload changes a stored profile, as CleverTap applies it.

Top-level keys are merged one by one and the later upload wins. A value that is a
one-key object naming an operator is applied to the stored value instead of replacing it:
`$incr`/`$decr` (numbers), `$add`/`$remove` (multi-value lists) and `$delete`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_OPERATORS = frozenset({"$incr", "$decr", "$add", "$remove", "$delete"})


def merge_profile(stored: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Apply `update` (a record's profileData) to `stored` in place."""
    for key, value in update.items():
        if type(value) is dict and len(value) == 1:
            operator, argument = next(iter(value.items()))
            if operator in _OPERATORS:
                _apply(stored, key, operator, argument)
                continue
        stored[key] = value


def _apply(stored: dict[str, Any], key: str, operator: str, argument: Any) -> None:
    current = stored.get(key)
    if operator == "$delete":
        stored.pop(key, None)
    elif operator in ("$incr", "$decr"):
        step = argument if isinstance(argument, int | float) else 0
        base = current if isinstance(current, int | float) else 0
        stored[key] = base + step if operator == "$incr" else base - step
    else:
        values = current if isinstance(current, list) else [] if current is None else [current]
        items = argument if isinstance(argument, list) else [argument]
        if operator == "$add":
            stored[key] = values + [item for item in items if item not in values]
        else:
            stored[key] = [item for item in values if item not in items]
