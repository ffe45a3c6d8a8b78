"""CleverTap's per-record checks for `POST /1/upload`, and what an accepted record becomes.

`check_upload` walks the request's `d` once. Each record is either rejected with
CleverTap's code (answered in the HTTP 200 body's `unprocessed` list) or turned into rows
for the store. The checks and their order:

| code | when |
|---|---|
| 524 | the record is not an object, or `type` is not profile/event/token |
| 523 | no identifier, or more than one of identity/objectId/FBID/GPID, or identity
|     | empty or 120+ characters, or FBID/GPID empty |
| 526 | objectId (the only identifier) empty or not a string |
| 525 | `ts` present but not an integer of Unix epoch *seconds* (below 10^10) |
| 509 | event without a non-empty string `evtName` |
| 513 | event named like a restricted system event (case- and space-insensitive) |
| 512 | `evtData` present but not an object; `profileData` present but not an object |
| 514-520 | profileData Gender (M/F), Email, Phone (`+<digits>`), Employed (Y/N),
|     | Education (School/College/Graduate), Married (Y/N), Age (a number) |
| 530 | token record without a non-empty string objectId |
| 531 | token record without a `tokenData` object |
| 532 | tokenData.id missing, empty or not a string |
| 533 | tokenData.type missing or not a string |
| 534 | tokenData.type not fcm/apns/gcm |
| 535 | more than 100 token records in one request (the 101st and later) |

CleverTap only documents "530-535: token record invalid"; the split above is ours.
A record without `ts` is stored with the upload time, as CleverTap does.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, TypeAlias

import orjson

from ._config import MAX_TOKENS_PER_UPLOAD


class RecordType(StrEnum):
    """The `type` of an upload record."""

    PROFILE = "profile"
    EVENT = "event"
    TOKEN = "token"


class IdentifierKind(StrEnum):
    """Which key identifies a profile (a record carries exactly one)."""

    IDENTITY = "identity"
    OBJECT_ID = "objectId"
    FBID = "FBID"
    GPID = "GPID"


class Code(IntEnum):
    """CleverTap's per-record rejection codes that the sandbox raises."""

    EVENT_NAME_MISSING = 509
    INVALID_STRUCTURE = 512
    RESTRICTED_EVENT = 513
    GENDER_INVALID = 514
    EMAIL_INVALID = 515
    PHONE_INVALID = 516
    EMPLOYED_INVALID = 517
    EDUCATION_INVALID = 518
    MARRIED_INVALID = 519
    AGE_INVALID = 520
    IDENTITY_INVALID = 523
    TYPE_INVALID = 524
    TS_INVALID = 525
    OBJECT_ID_INVALID = 526
    TOKEN_OBJECT_ID_INVALID = 530
    TOKEN_DATA_MISSING = 531
    TOKEN_ID_INVALID = 532
    TOKEN_TYPE_MISSING = 533
    TOKEN_TYPE_INVALID = 534
    TOO_MANY_TOKENS = 535


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was skipped. `error` is the text before "Skipped record number"."""

    code: Code
    error: str


# The texts end with their own separator because CleverTap's do not agree: the recorded
# 514 answer runs "...needs to be M/F.Skipped record number : 1", without a space.
_GENDER = Rejection(Code.GENDER_INVALID, "Profile data is incorrect. Gender needs to be M/F.")
_EMAIL = Rejection(Code.EMAIL_INVALID, "Email is invalid. ")
_PHONE = Rejection(Code.PHONE_INVALID, "Phone number is invalid. ")
_EMPLOYED = Rejection(Code.EMPLOYED_INVALID, "Employment status is invalid (Y/N). ")
_EDUCATION = Rejection(Code.EDUCATION_INVALID, "Education status is invalid. ")
_MARRIED = Rejection(Code.MARRIED_INVALID, "Marital status is invalid (Y/N). ")
_AGE = Rejection(Code.AGE_INVALID, "Age is invalid. ")
_NOT_OBJECT = Rejection(Code.TYPE_INVALID, "Record is not an object. ")
_TYPE = Rejection(Code.TYPE_INVALID, "Data is neither event nor profile. ")
_NO_IDENTITY = Rejection(Code.IDENTITY_INVALID, "Identity not set. ")
_TWO_IDS = Rejection(Code.IDENTITY_INVALID, "More than one identifier set. ")
_LONG_IDENTITY = Rejection(Code.IDENTITY_INVALID, "Identity must be under 120 characters. ")
_OBJECT_ID = Rejection(Code.OBJECT_ID_INVALID, "objectId is invalid. ")
_TS = Rejection(Code.TS_INVALID, "Timestamp is not in Unix epoch (seconds) format. ")
_EVT_NAME = Rejection(Code.EVENT_NAME_MISSING, "Event name is mandatory. ")
_RESTRICTED = Rejection(Code.RESTRICTED_EVENT, "Raised a restricted system event. ")
_EVT_DATA = Rejection(Code.INVALID_STRUCTURE, "Invalid event structure. ")
_PROFILE_DATA = Rejection(Code.INVALID_STRUCTURE, "Invalid profile structure. ")
_TOKEN_OBJECT_ID = Rejection(Code.TOKEN_OBJECT_ID_INVALID, "objectId is mandatory for tokens. ")
_TOKEN_DATA = Rejection(Code.TOKEN_DATA_MISSING, "tokenData is missing. ")
_TOKEN_ID = Rejection(Code.TOKEN_ID_INVALID, "Token id is invalid. ")
_TOKEN_TYPE_MISSING = Rejection(Code.TOKEN_TYPE_MISSING, "Token type is missing. ")
_TOKEN_TYPE = Rejection(Code.TOKEN_TYPE_INVALID, "Token type must be fcm, apns or gcm. ")
_TOO_MANY_TOKENS = Rejection(
    Code.TOO_MANY_TOKENS, f"At most {MAX_TOKENS_PER_UPLOAD} token records per request. "
)

RESTRICTED_EVENT_NAMES = (
    "Notification Sent",
    "Notification Viewed",
    "Notification Clicked",
    "App Launched",
    "App Uninstalled",
    "UTM Visited",
    "Stayed",
)
# CleverTap compares event names without case and spaces.
_RESTRICTED_KEYS = frozenset(name.replace(" ", "").lower() for name in RESTRICTED_EVENT_NAMES)
_TOKEN_TYPES = frozenset({"fcm", "apns", "gcm"})
# Tuples, not sets: a value may be unhashable (a list) and must still be compared.
_YES_NO = ("Y", "N")
_EDUCATION_VALUES = ("School", "College", "Graduate")
_EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE_PATTERN = re.compile(r"\+[0-9]+")
_MAX_IDENTITY_CHARS = 120
_MAX_TS = 10**10  # epoch seconds below this; a 13-digit number is milliseconds
_NO_DATA: dict[str, Any] = {}

# Rows are plain tuples, not dataclasses: they are built once per record (the hot path)
# and go straight into orjson or `executemany`.
EventRow: TypeAlias = tuple[str, str, str, int, dict[str, Any]]
"""(identifier kind, identifier, evtName, ts, evtData)"""
TokenRow: TypeAlias = tuple[str, str, str]
"""(objectId, token id, token type)"""
ProfileWrite: TypeAlias = tuple[str, str, int, dict[str, Any]]
"""(identifier kind, identifier, ts, profileData)"""


@dataclass(slots=True)
class CheckedUpload:
    """One request's records, sorted into rows to store and CleverTap's rejections."""

    events: list[EventRow] = field(default_factory=list)
    tokens: list[TokenRow] = field(default_factory=list)
    profiles: list[ProfileWrite] = field(default_factory=list)
    unprocessed: list[dict[str, Any]] = field(default_factory=list)
    rejected_codes: list[Code] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return len(self.events) + len(self.tokens) + len(self.profiles)


def check_upload(records: list[Any], *, now: int | None = None) -> CheckedUpload:
    """Check every record of a request's `d`, in order."""
    upload_ts = int(time.time()) if now is None else now
    checked = CheckedUpload()
    events, tokens, profiles = checked.events, checked.tokens, checked.profiles
    token_count = 0
    for position, record in enumerate(records, start=1):
        rejection: Rejection | None
        if type(record) is not dict:
            rejection = _NOT_OBJECT
        else:
            kind = record.get("type")
            if kind == "event":
                rejection = _check_event(record, events, upload_ts)
            elif kind == "profile":
                rejection = _check_profile(record, profiles, upload_ts)
            elif kind == "token":
                token_count += 1
                if token_count > MAX_TOKENS_PER_UPLOAD:
                    rejection = _TOO_MANY_TOKENS
                else:
                    rejection = _check_token(record, tokens)
            else:
                rejection = _TYPE
        if rejection is not None:
            checked.rejected_codes.append(rejection.code)
            checked.unprocessed.append(
                {
                    "status": "fail",
                    "code": int(rejection.code),
                    "error": f"{rejection.error}Skipped record number : {position}",
                    "record": orjson.dumps(record).decode(),
                }
            )
    return checked


def _identifier(record: dict[str, Any]) -> tuple[str, str] | Rejection:
    """The record's one identifier as (kind, value), or why it has none."""
    found: tuple[str, Any] | None = None
    for kind in ("identity", "objectId", "FBID", "GPID"):
        if kind in record:
            if found is not None:
                return _TWO_IDS
            found = (kind, record[kind])
    if found is None:
        return _NO_IDENTITY
    kind, value = found
    if kind == "identity":
        # CleverTap takes numeric identities too; they are stored as text.
        if type(value) is int:
            value = str(value)
        if type(value) is not str or not value:
            return _NO_IDENTITY
        if len(value) >= _MAX_IDENTITY_CHARS:
            return _LONG_IDENTITY
        return kind, value
    if type(value) is not str or not value:
        return _OBJECT_ID if kind == "objectId" else _NO_IDENTITY
    return kind, value


def _timestamp(record: dict[str, Any], upload_ts: int) -> int | Rejection:
    ts = record.get("ts", upload_ts)
    if type(ts) is not int or not 0 <= ts < _MAX_TS:
        return _TS
    return ts


def _check_event(
    record: dict[str, Any], events: list[EventRow], upload_ts: int
) -> Rejection | None:
    # Fast path for the common shape (a short string identity and nothing else), then
    # the full rules; this function runs for most records of a benchmark.
    identity = record.get("identity")
    if (
        type(identity) is str
        and 0 < len(identity) < _MAX_IDENTITY_CHARS
        and "objectId" not in record
        and "FBID" not in record
        and "GPID" not in record
    ):
        kind, value = "identity", identity
    else:
        identifier = _identifier(record)
        if isinstance(identifier, Rejection):
            return identifier
        kind, value = identifier
    ts = record.get("ts", upload_ts)
    if type(ts) is not int or not 0 <= ts < _MAX_TS:
        return _TS
    name = record.get("evtName")
    if type(name) is not str or not name:
        return _EVT_NAME
    if name.replace(" ", "").lower() in _RESTRICTED_KEYS:
        return _RESTRICTED
    data = record.get("evtData", _NO_DATA)
    if type(data) is not dict:
        return _EVT_DATA
    events.append((kind, value, name, ts, data))
    return None


def _check_profile(
    record: dict[str, Any], profiles: list[ProfileWrite], upload_ts: int
) -> Rejection | None:
    identifier = _identifier(record)
    if isinstance(identifier, Rejection):
        return identifier
    ts = _timestamp(record, upload_ts)
    if isinstance(ts, Rejection):
        return ts
    data = record.get("profileData", _NO_DATA)
    if type(data) is not dict:
        return _PROFILE_DATA
    rejection = _check_profile_data(data) if data else None
    if rejection is not None:
        return rejection
    kind, value = identifier
    profiles.append((kind, value, ts, data))
    return None


def _check_profile_data(data: dict[str, Any]) -> Rejection | None:
    """CleverTap's checks of the standard profile properties that are present."""
    if "Gender" in data and data["Gender"] not in ("M", "F"):
        return _GENDER
    if "Email" in data:
        email = data["Email"]
        if type(email) is not str or not _EMAIL_PATTERN.fullmatch(email):
            return _EMAIL
    if "Phone" in data:
        phone = data["Phone"]
        if type(phone) is not str or not _PHONE_PATTERN.fullmatch(phone):
            return _PHONE
    if "Employed" in data and data["Employed"] not in _YES_NO:
        return _EMPLOYED
    if "Education" in data and data["Education"] not in _EDUCATION_VALUES:
        return _EDUCATION
    if "Married" in data and data["Married"] not in _YES_NO:
        return _MARRIED
    if "Age" in data and type(data["Age"]) not in (int, float):
        return _AGE
    return None


def _check_token(record: dict[str, Any], tokens: list[TokenRow]) -> Rejection | None:
    object_id = record.get("objectId")
    if type(object_id) is not str or not object_id:
        return _TOKEN_OBJECT_ID
    data = record.get("tokenData")
    if type(data) is not dict:
        return _TOKEN_DATA
    token_id = data.get("id")
    if type(token_id) is not str or not token_id:
        return _TOKEN_ID
    token_type = data.get("type")
    if type(token_type) is not str:
        return _TOKEN_TYPE_MISSING
    if token_type not in _TOKEN_TYPES:
        return _TOKEN_TYPE
    tokens.append((object_id, token_id, token_type))
    return None
