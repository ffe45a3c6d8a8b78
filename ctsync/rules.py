"""CleverTap's data rules, checked locally before a record is sent.

`check_upload` answers, for one record of `POST /1/upload`, the violations CleverTap would
report, each with the code the server would answer (see CleverTap's api-errors page):

| code | rule |
|---|---|
| 509 | an event has no `evtName` |
| 512 | invalid structure: a key over 120 characters or with a forbidden character, a string
        over 512 bytes, an event name with a forbidden character, a nested event value, more
        than 50 `Items` on `Charged`, more than 256 custom profile properties |
| 513 | the event name is one of CleverTap's reserved system events |
| 514 / 515 / 516 | Gender not M/F, Email malformed, Phone not `+<country><number>` |
| 517 / 518 / 519 / 520 | Employed, Education, Married, Age invalid |
| dob-not-a-date | DOB is not CleverTap's date `"$D_<epoch seconds>"` (ctsync's own code: CleverTap
        documents none) |
| 522 | more event properties than the account allows |
| 523 | no identifier, more than one, or an identity that is empty or not under 120 chars |
| 524 | `type` is not profile, event or token |
| 525 | `ts` is not integer epoch seconds |
| 526 | `objectId` empty or not a string |
| 530-535 | token record: objectId, tokenData, id, type |

CleverTap documents no code for key, size and count problems on profiles; ctsync reports
them as 512 (invalid structure) like their event counterparts.

The check runs on every record: the rules are module-level data, patterns are compiled
once, and a valid record allocates nothing but the empty result list.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ctsync.records import CleverTapRecord
from ctsync.timestamps import clevertap_date


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the CleverTap code the server would answer, and why."""

    code: str
    message: str


MAX_KEY_LENGTH: Final = 120
MAX_IDENTITY_LENGTH: Final = 119  # "under 120 characters"
MAX_STRING_BYTES: Final = 512
MAX_CUSTOM_PROFILE_PROPERTIES: Final = 256
DEFAULT_MAX_EVENT_PROPERTIES: Final = 256
MAX_CHARGED_ITEMS: Final = 50

IDENTIFIERS: Final = ("identity", "objectId", "FBID", "GPID")
TOKEN_TYPES: Final = frozenset({"fcm", "apns", "gcm"})

_FORBIDDEN_KEY: Final = re.compile(r"""[%><!|&.:;$'"\\#]""")
_FORBIDDEN_EVENT_NAME: Final = re.compile(r"""[%><!|&.:;$'"\\]""")

# Profile keys CleverTap gives meaning to beyond the standard ones: subscription flags
# (booleans) and subscription categories (`{"email": ["Marketing"]}`). They must reach
# CleverTap as written: never renamed, snake_cased or flattened.
SUBSCRIPTION_FLAGS: Final = (
    "MSG-email",
    "MSG-push",
    "MSG-sms",
    "MSG-whatsapp",
    "MSG-dndPhone",
    "MSG-dndEmail",
)
SUBSCRIPTION_CATEGORIES: Final = ("category-unsubscribe", "category-resubscribe")
RESERVED_PROFILE_KEYS: Final = frozenset(SUBSCRIPTION_FLAGS + SUBSCRIPTION_CATEGORIES)

# A profile property whose value is one of these objects, `{"$incr": 1}`, is an operation
# on the property CleverTap holds, not a value: it is sent as that object.
PROFILE_OPERATIONS: Final = frozenset({"$add", "$remove", "$incr", "$decr", "$delete", "$set"})


def profile_operation(value: Any) -> str | None:
    """The operator of a value that is one operation object (`{"$add": [...]}`), else None."""
    if type(value) is dict and len(value) == 1:
        (operator,) = value
        if operator in PROFILE_OPERATIONS:
            return str(operator)
    return None


STANDARD_PROFILE_KEYS: Final = RESERVED_PROFILE_KEYS | frozenset(
    {
        "Name",
        "Email",
        "Phone",
        "Gender",
        "DOB",
        "Photo",
        "Employed",
        "Education",
        "Married",
        "Age",
        "Identity",
    }
)

# Event names compare case- and space-insensitively, so they are stored normalised.
RESERVED_EVENT_NAMES: Final = frozenset(
    name.replace(" ", "").lower()
    for name in (
        "App Installed",
        "App Launched",
        "App Uninstalled",
        "Notification Sent",
        "Notification Viewed",
        "Notification Clicked",
        "Push Impressions",
        "UTM Visited",
        "Stayed",
        "Session Concluded",
        "Geocluster Entered",
        "Geocluster Exited",
    )
)

_PHONE: Final = re.compile(r"\+[1-9]\d{5,14}")
_CLEVERTAP_DATE: Final = re.compile(r"\$D_-?\d{1,12}")
DOB_NOT_A_DATE: Final = "dob-not-a-date"
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    choices = frozenset(allowed)
    return lambda value: isinstance(value, str) and value in choices


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_categories(value: Any) -> bool:
    """A subscription category object: `{"email": ["Marketing"], "push": ["Offers"]}`,
    each channel naming an array of category names (strings of at most 512 bytes)."""
    return type(value) is dict and all(
        type(names) is list
        and all(type(name) is str and len(name.encode()) <= MAX_STRING_BYTES for name in names)
        for names in value.values()
    )


# Standard profile keys with a value rule: key -> (code, test, what the value must be).
STANDARD_VALUE_RULES: Final[dict[str, tuple[str, Callable[[Any], bool], str]]] = {
    "Gender": ("514", _one_of("M", "F"), "M or F"),
    "Email": ("515", _matches(_EMAIL), "an email address"),
    "Phone": ("516", _matches(_PHONE), "+ then country code and number, digits only"),
    "Employed": ("517", _one_of("Y", "N"), "Y or N"),
    "Education": ("518", _one_of("School", "College", "Graduate"), "School, College or Graduate"),
    "Married": ("519", _one_of("Y", "N"), "Y or N"),
    "Age": ("520", _is_number, "a number"),
    # A plain number or text would be stored as one, not as the date of birth.
    "DOB": (
        DOB_NOT_A_DATE,
        _matches(_CLEVERTAP_DATE),
        'a date, "$D_<epoch seconds>" (--preset classic and --validate fix read ISO dates, '
        "epoch seconds or milliseconds, 01-Mar-1990, 1990/03/01, and 13/03/1990 where day "
        "and month cannot be mixed up)",
    ),
}
# CleverTap's reserved keys, checked as it checks them; never fixable (a subscription
# left out would be a subscription silently not changed).
RESERVED_VALUE_RULES: Final[dict[str, tuple[str, Callable[[Any], bool], str]]] = {
    **{flag: ("512", _is_bool, "true or false") for flag in SUBSCRIPTION_FLAGS},
    **{
        category: (
            "512",
            _is_categories,
            'an object of arrays of category names, like {"email": ["Marketing"]}',
        )
        for category in SUBSCRIPTION_CATEGORIES
    },
}


def check_upload(
    record: CleverTapRecord, *, max_event_properties: int = DEFAULT_MAX_EVENT_PROPERTIES
) -> list[Violation]:
    """The violations of CleverTap's data rules in one upload record (empty when valid)."""
    found: list[Violation] = []
    kind = record.get("type")
    if kind == "profile":
        _check_identifier(record, found)
        _check_ts(record, found)
        _check_profile_data(record.get("profileData"), found)
    elif kind == "event":
        _check_identifier(record, found)
        _check_ts(record, found)
        _check_event(record, max_event_properties, found)
    elif kind == "token":
        _check_token(record, found)
    else:
        found.append(Violation("524", f"type {kind!r} is not profile, event or token"))
    return found


def _check_identifier(record: CleverTapRecord, found: list[Violation]) -> None:
    identity = record.get("identity")
    if (
        type(identity) is str
        and 0 < len(identity) <= MAX_IDENTITY_LENGTH
        and not identity.isspace()
        and "objectId" not in record
        and "FBID" not in record
        and "GPID" not in record
    ):
        return  # the common case: one good identity
    present = [key for key in IDENTIFIERS if key in record]
    if not present:
        found.append(Violation("523", "no identifier: one of identity, objectId, FBID, GPID"))
        return
    if len(present) > 1:
        found.append(
            Violation("523", f"{' and '.join(present)}: a record carries exactly one identifier")
        )
    identity = record.get("identity")
    if "identity" in record and (
        not isinstance(identity, str) or not identity or len(identity) > MAX_IDENTITY_LENGTH
    ):
        found.append(Violation("523", "identity must be a string of 1 to 119 characters"))
    elif isinstance(identity, str) and identity.isspace():
        # ("  " would be one profile for every message whose userId is blank)
        found.append(Violation("523", "identity is blank: nothing but spaces"))
    object_id = record.get("objectId")
    if "objectId" in record and (not isinstance(object_id, str) or not object_id):
        found.append(Violation("526", "objectId must be a non-empty string"))


def _check_ts(record: CleverTapRecord, found: list[Violation]) -> None:
    if "ts" not in record:
        return
    ts = record["ts"]
    if not isinstance(ts, int) or isinstance(ts, bool):
        found.append(Violation("525", f"ts {ts!r} is not integer Unix epoch seconds"))


# Keys repeat from record to record: one that passed `_check_key` is remembered, so the
# pattern is not searched again. Bounded, so odd inputs cannot grow it without limit.
_GOOD_KEYS: set[str] = set()
_GOOD_KEYS_LIMIT: Final = 4096


def _check_key(key: Any, where: str, found: list[Violation]) -> None:
    if key in _GOOD_KEYS:
        return
    if not isinstance(key, str):
        found.append(Violation("512", f"{where} key {key!r} is not a string"))
    elif len(key) > MAX_KEY_LENGTH:
        found.append(Violation("512", f"{where} key {key[:40]!r}... is over 120 characters"))
    elif _FORBIDDEN_KEY.search(key) is not None:
        found.append(
            Violation("512", f"{where} key {key!r} has a character CleverTap forbids in keys")
        )
    elif len(_GOOD_KEYS) < _GOOD_KEYS_LIMIT:
        _GOOD_KEYS.add(key)


def _check_string(value: str, key: str, found: list[Violation]) -> None:
    # A character is at most 4 UTF-8 bytes: short strings cannot be too long.
    if len(value) > MAX_STRING_BYTES // 4 and len(value.encode()) > MAX_STRING_BYTES:
        found.append(Violation("512", f"value of {key!r} is over 512 bytes"))


def _check_profile_data(data: Any, found: list[Violation]) -> None:
    if not isinstance(data, dict):
        found.append(Violation("512", "profileData is missing or not an object"))
        return
    custom = 0
    for key, value in data.items():
        if key in STANDARD_PROFILE_KEYS:
            rule = STANDARD_VALUE_RULES.get(key) or RESERVED_VALUE_RULES.get(key)
            if rule is not None:
                code, test, expected = rule
                if not test(value):
                    found.append(Violation(code, f"{key} {value!r} is invalid: must be {expected}"))
            continue
        custom += 1
        if key not in _GOOD_KEYS:  # inlined from _check_key: the common case, no call
            _check_key(key, "profile", found)
        if type(value) is str:
            if len(value) > MAX_STRING_BYTES // 4:
                _check_string(value, key, found)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    _check_string(item, key, found)
        elif type(value) is dict:
            operator = profile_operation(value)
            if operator is not None:
                _check_operation(key, operator, value[operator], found)
    if custom > MAX_CUSTOM_PROFILE_PROPERTIES:
        found.append(Violation("512", f"{custom} custom profile properties; CleverTap allows 256"))


def _check_operation(key: str, operator: str, operand: Any, found: list[Violation]) -> None:
    """What CleverTap checks of a profile operation: `$incr`/`$decr` take a number,
    `$add`/`$remove` a string or an array of strings."""
    if operator in ("$incr", "$decr"):
        if not _is_number(operand):
            found.append(Violation("512", f"{key}: {operator} takes a number, not {operand!r}"))
    elif operator in ("$add", "$remove"):
        items = operand if isinstance(operand, list) else [operand]
        if not all(isinstance(item, str) for item in items):
            found.append(
                Violation("512", f"{key}: {operator} takes a string or an array of strings")
            )
            return
        for item in items:
            _check_string(item, key, found)


def _check_event(record: CleverTapRecord, limit: int, found: list[Violation]) -> None:
    name = record.get("evtName")
    if not isinstance(name, str) or not name.strip():
        found.append(Violation("509", "evtName is missing or empty"))
        name = None
    elif _FORBIDDEN_EVENT_NAME.search(name) is not None:
        found.append(Violation("512", f"event name {name!r} has a character CleverTap forbids"))
    elif name.replace(" ", "").lower() in RESERVED_EVENT_NAMES:
        found.append(Violation("513", f"{name!r} is a CleverTap system event; it cannot be raised"))
    data = record.get("evtData")
    if data is None:
        return
    if not isinstance(data, dict):
        found.append(Violation("512", "evtData is not an object"))
        return
    if len(data) > limit:
        found.append(Violation("522", f"{len(data)} event properties; the limit is {limit}"))
    charged = name == "Charged"
    if charged and "Items" in data:  # whatever its value: Items is CleverTap's, a list
        _check_items(data["Items"], found)
    for key, value in data.items():
        if key not in _GOOD_KEYS:
            _check_key(key, "event property", found)
        if type(value) is str:
            if len(value) > MAX_STRING_BYTES // 4:
                _check_string(value, key, found)
        elif isinstance(value, dict | list) and not (charged and key == "Items"):
            found.append(
                Violation("512", f"event property {key!r} is nested; values must be scalars")
            )


def _check_items(items: Any, found: list[Violation]) -> None:
    if not isinstance(items, list):
        found.append(Violation("512", "Charged Items is not a list"))
        return
    if len(items) > MAX_CHARGED_ITEMS:
        found.append(Violation("512", f"Charged has {len(items)} Items; keep them at 50 or fewer"))
    for position, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            found.append(Violation("512", f"Charged Items #{position} is not an object"))
            continue
        for key, value in item.items():
            _check_key(key, "Items", found)
            if isinstance(value, str):
                _check_string(value, key, found)
            elif isinstance(value, dict | list):
                found.append(
                    Violation("512", f"Charged Items #{position} {key!r} is nested; keep it flat")
                )


def _check_token(record: CleverTapRecord, found: list[Violation]) -> None:
    object_id = record.get("objectId")
    if not isinstance(object_id, str) or not object_id:
        found.append(Violation("530", "a token record needs an objectId (the CleverTap ID)"))
    elif any(key in record for key in IDENTIFIERS if key != "objectId"):
        found.append(Violation("530", "a token record is identified by objectId alone"))
    data = record.get("tokenData")
    if not isinstance(data, dict):
        found.append(Violation("531", "tokenData is missing or not an object"))
        return
    token = data.get("id")
    if token is None or token == "":
        found.append(Violation("532", "tokenData has no id"))
    elif not isinstance(token, str):
        found.append(Violation("535", f"token id {token!r} is not a string"))
    token_type = data.get("type")
    if token_type is None or token_type == "":
        found.append(Violation("533", "tokenData has no type"))
    elif token_type not in TOKEN_TYPES:
        found.append(Violation("534", f"token type {token_type!r} is not fcm, apns or gcm"))


# --- --validate fix -------------------------------------------------------------------

FIXABLE_CODES: Final = frozenset(code for code, _, _ in STANDARD_VALUE_RULES.values())
"""Codes of a standard profile value (514-520, dob-not-a-date): such a property can be
left out and the rest of the profile sent. Identifier, `ts`, event-name and structure
codes never are."""

_PHONE_PUNCTUATION: Final = re.compile(r"[\s\-()\[\]]")
_GENDERS: Final = {"male": "M", "m": "M", "female": "F", "f": "F"}


def normalise_gender(value: Any) -> Any:
    """`male`/`female`/`m`/`f` in any case -> `M`/`F`; anything else unchanged."""
    if isinstance(value, str):
        return _GENDERS.get(value.strip().lower(), value)
    return value


def _compact_phone(value: Any) -> Any:
    """A phone number without spaces, dashes and brackets: `+44 20 7946 0001` -> `+442079460001`."""
    return _PHONE_PUNCTUATION.sub("", value) if isinstance(value, str) else value


# What is tried on a failing standard value before it is left out.
_REPAIRS: Final[dict[str, Callable[[Any], Any]]] = {
    "Phone": _compact_phone,
    "Gender": normalise_gender,
    "DOB": clevertap_date,
}


@dataclass(frozen=True, slots=True)
class Fix:
    """One property `--validate fix` changed so that the rest of a record could be sent:
    left out, or rewritten into the form CleverTap takes. `code` is the violation's."""

    field: str
    code: str
    message: str


def fix_upload(
    record: CleverTapRecord, *, max_event_properties: int = DEFAULT_MAX_EVENT_PROPERTIES
) -> tuple[CleverTapRecord, list[Fix], list[Violation]]:
    """For `--validate fix`: (the record to send, the fixes made, the violations left).

    A record whose only violations are fixable (a standard profile value, codes 514-520)
    comes back as a copy without the offending properties, one `Fix` each: a Phone is
    first tried without spaces, dashes and brackets, a Gender as M/F from `male`,
    `female`, `m`, `f`, a DOB as a date read from what people write (`01-Mar-1990`),
    and kept in that form when it is then valid. A record with any
    other violation comes back unchanged, with every violation (the unfixable ones
    first) and no fix. A valid
    record comes back as it is. The record given is never changed.
    """
    found = check_upload(record, max_event_properties=max_event_properties)
    if not found:
        return record, [], found
    unfixable = [violation for violation in found if violation.code not in FIXABLE_CODES]
    if unfixable:  # what stops the record comes first: its code is the one reported
        return record, [], unfixable + [v for v in found if v.code in FIXABLE_CODES]
    data = dict(record["profileData"])  # fixable codes come only from profileData
    fixes: list[Fix] = []
    for key, (code, test, expected) in STANDARD_VALUE_RULES.items():
        if key not in data or test(data[key]):
            continue
        value = data[key]
        repair = _REPAIRS.get(key)
        repaired = repair(value) if repair is not None else value
        if test(repaired):  # the repair made it valid
            data[key] = repaired
            fixes.append(Fix(key, code, f"{key} {value!r} sent as {repaired!r}"))
        else:
            del data[key]
            fixes.append(
                Fix(key, code, f"{key} {value!r} left out (must be {expected}); the rest was sent")
            )
    return {**record, "profileData": data}, fixes, []
