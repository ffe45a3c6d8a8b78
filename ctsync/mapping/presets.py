"""The presets written as mapping files: a starting point to copy and edit.

`actions` is exact: loaded with `load_mapping`, it produces the same records as
`--preset actions` for every message. `classic` is as close as the directive language
allows; its description lists what it cannot express.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Any, Final

from ctsync.rules import SUBSCRIPTION_CATEGORIES, SUBSCRIPTION_FLAGS


class PresetName(StrEnum):
    """The presets `preset_as_mapping` can write out."""

    ACTIONS = "actions"
    CLASSIC = "classic"


def _path(path: str) -> dict[str, str]:
    return {"@path": path}


_IDENTIFIED: Final = {"identity": _path("$.userId"), "objectId": _path("$.anonymousId")}

ACTIONS: Final[dict[str, Any]] = {
    "description": (
        "Segment's CleverTap (Actions) presets with Segment's faults fixed: Person "
        "Attributes from $.traits (Segment reads $.properties) and ts in epoch seconds."
    ),
    "subscriptions": [
        {
            "name": "Event Type is Identify",
            "enabled": True,
            "trigger": 'type = "identify"',
            "action": "userUpload",
            "mapping": {
                "identity": _path("$.userId"),
                "ts": _path("$.timestamp"),
                "profileData": _path("$.traits"),
            },
        },
        {
            "name": "Event Name is Delete User",
            "enabled": True,
            "trigger": 'event = "Delete User"',
            "action": "userDelete",
            "mapping": {"identity": _path("$.userId")},
        },
    ],
}


def _any_case(word: str) -> str:
    """A trigger glob matching `word` in any case: `ios` -> `[iI][oO][sS]`."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def _if_exists(path: str, then: Any, otherwise: Any = None) -> dict[str, Any]:
    branches: dict[str, Any] = {"exists": _path(path), "then": then}
    if otherwise is not None:
        branches["else"] = otherwise
    return {"@if": branches}


def _written_first(key: str, otherwise: Any) -> dict[str, Any]:
    """The trait `key` as CleverTap spells it when it is there (and not null), else
    `otherwise`."""
    return _if_exists(f"$.traits.{key}", _path(f"$.traits.{key}"), otherwise)


# CleverTap's standard keys that Segment's destination reads from no trait of its own:
# sent only when written as CleverTap spells them.
_WRITTEN_ONLY: Final = ("Employed", "Education", "Married", "Age")

_ORDER_COMPLETED: Final = f'match(event, "{_any_case("Order Completed")}")'
_APPLE_PLATFORMS: Final = ("ios", "ipados", "watchos", "tvos", "macos", "visionos")
_HAS_TOKEN: Final = 'type != "group" and context.device.token exists and anonymousId exists'
# CleverTap's reserved profile keys, passed through as written.
_RESERVED_TRAITS: Final = {
    key: _path(f"$.traits['{key}']") for key in SUBSCRIPTION_FLAGS + SUBSCRIPTION_CATEGORIES
}

CLASSIC: Final[dict[str, Any]] = {
    "description": (
        "Segment's classic CleverTap destination, as far as mapping directives reach. "
        "Not expressible here, so only --preset classic does it: lower snake_casing of "
        "trait and property keys; sending traits other than the six special ones "
        "(name, birthday, avatar, gender, phone, email) and CleverTap's reserved keys "
        "(MSG-*, category-unsubscribe, category-resubscribe), so operation objects such "
        'as {"$incr": 1} on other traits; Name from first_name/last_name (this file '
        "reads firstName/lastName); Gender normalised to M/F; Charged "
        "with every other order property, and Amount from the products when there is no "
        "total or revenue; the page or screen name added to its properties; the device "
        "type from context.os.name when context.device.type is absent; counting tokens "
        "that cannot be sent; --link-anonymous (write it as a userUpload with objectId "
        "$.anonymousId and profileData.Identity $.userId). Token records are sent once "
        "per objectId and token per run, as in the preset."
    ),
    "subscriptions": [
        {
            "name": "Identify to profile",
            "enabled": True,
            "trigger": 'type = "identify"',
            "action": "userUpload",
            "mapping": {
                **_IDENTIFIED,
                "ts": _path("$.timestamp"),
                # A standard key written as CleverTap spells it (`DOB`, `Employed`) says
                # what the user meant: it comes first, as in the preset; else the trait
                # Segment's destination reads (birthday, avatar, ...).
                "profileData": {
                    "Name": _written_first(
                        "Name",
                        _if_exists(
                            "$.traits.name",
                            _path("$.traits.name"),
                            _if_exists(
                                "$.traits.firstName",
                                _if_exists(
                                    "$.traits.lastName",
                                    {"@template": "{{traits.firstName}} {{traits.lastName}}"},
                                ),
                            ),
                        ),
                    ),
                    "DOB": _written_first(
                        "DOB", _if_exists("$.traits.birthday", _path("$.traits.birthday"))
                    ),
                    "Photo": _written_first("Photo", _path("$.traits.avatar")),
                    "Gender": _written_first("Gender", _path("$.traits.gender")),
                    "Phone": _written_first("Phone", _path("$.traits.phone")),
                    "Email": _written_first("Email", _path("$.traits.email")),
                    **{key: _written_first(key, None) for key in _WRITTEN_ONLY},
                    **_RESERVED_TRAITS,
                },
            },
        },
        {
            "name": "Track to event",
            "enabled": True,
            "trigger": f'type = "track" and not {_ORDER_COMPLETED}',
            "action": "eventUpload",
            "mapping": {
                **_IDENTIFIED,
                "ts": _path("$.timestamp"),
                "evtName": _path("$.event"),
                "evtData": _path("$.properties"),
            },
        },
        {
            "name": "Order Completed to Charged",
            "enabled": True,
            "trigger": f'type = "track" and {_ORDER_COMPLETED}',
            "action": "eventUpload",
            "mapping": {
                **_IDENTIFIED,
                "ts": _path("$.timestamp"),
                "evtName": {"@literal": "Charged"},
                "evtData": {
                    "Charged ID": _path("$.properties.order_id"),
                    "Amount": _if_exists(
                        "$.properties.total",
                        _path("$.properties.total"),
                        _path("$.properties.revenue"),
                    ),
                    "Currency": _path("$.properties.currency"),
                    "Items": _path("$.properties.products"),
                },
            },
        },
        {
            "name": "Page to Web Page Viewed",
            "enabled": True,
            "trigger": 'type = "page"',
            "action": "eventUpload",
            "mapping": {
                **_IDENTIFIED,
                "ts": _path("$.timestamp"),
                "evtName": {"@literal": "Web Page Viewed"},
                "evtData": _path("$.properties"),
            },
        },
        {
            "name": "Screen to App Screen Viewed",
            "enabled": True,
            "trigger": 'type = "screen"',
            "action": "eventUpload",
            "mapping": {
                **_IDENTIFIED,
                "ts": _path("$.timestamp"),
                "evtName": {"@literal": "App Screen Viewed"},
                "evtData": _path("$.properties"),
            },
        },
        {
            "name": "Alias to profile Identity",
            "enabled": True,
            "trigger": 'type = "alias" and userId exists',
            "action": "userUpload",
            "mapping": {
                "objectId": _path("$.previousId"),
                "ts": _path("$.timestamp"),
                "profileData": {"Identity": _path("$.userId")},
            },
        },
        {
            "name": "Android push token",
            "enabled": True,
            "trigger": (f'{_HAS_TOKEN} and match(context.device.type, "{_any_case("android")}")'),
            "action": "tokenUpload",
            "mapping": {
                "objectId": _path("$.anonymousId"),
                "id": _path("$.context.device.token"),
                "type": {"@literal": "fcm"},
            },
        },
        {
            "name": "Apple push token (iOS, iPadOS, watchOS, tvOS, macOS, visionOS)",
            "enabled": True,
            "trigger": (
                f"{_HAS_TOKEN} and ("
                + " or ".join(
                    f'match(context.device.type, "{_any_case(name)}")' for name in _APPLE_PLATFORMS
                )
                + ")"
            ),
            "action": "tokenUpload",
            "mapping": {
                "objectId": _path("$.anonymousId"),
                "id": _path("$.context.device.token"),
                "type": {"@literal": "apns"},
            },
        },
    ],
}

_PRESETS: Final = {PresetName.ACTIONS: ACTIONS, PresetName.CLASSIC: CLASSIC}


def preset_as_mapping(name: str) -> dict[str, Any]:
    """A preset as mapping-file JSON (a fresh copy). Raises ValueError for an unknown name."""
    try:
        preset = _PRESETS[PresetName(name)]
    except ValueError:
        known = ", ".join(preset.value for preset in PresetName)
        raise ValueError(f"unknown preset {name!r} (known: {known})") from None
    return copy.deepcopy(preset)
