"""The pure record stage: one input record in, what to do with it out.

    decode (the reader) -> match triggers -> map -> convert -> validate -> encode

`prepare` touches no file, socket, clock or counter, so it can run anywhere (a later
step runs it in worker processes). Its output is a value: `Skipped`, `Invalid`, or
`Ready` with one `Encoded` operation per CleverTap operation, each already encoded to the
bytes that go into a request body, with the profile it touches (for ordering) and
whether sending it twice is harmless (for unclear answers). The run's process reads an
encoded operation as an `Op` (`op_of`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Final, NamedTuple, TypeAlias

import orjson

from ctsync.records import (
    TOKEN_ALREADY_SENT,
    CleverTapRecord,
    Delete,
    Invalid,
    Mapper,
    Message,
    Operation,
    SentTokens,
    Skip,
    TokenUpload,
    Upload,
    counting,
    skip_reason,
)
from ctsync.rules import Fix, check_upload, fix_upload


class Fixed(NamedTuple):
    """A record to send in place of the one checked (`--validate fix`), and the fixes
    that made it."""

    record: CleverTapRecord
    fixes: tuple[Fix, ...]


Validator = Callable[[CleverTapRecord], Invalid | Fixed | None]
"""CleverTap's data rules for one upload record: None when it may be sent; with
`--validate fix`, a `Fixed` record to send instead (see `ctsync.rules.fix_upload`)."""

ProfileKey: TypeAlias = str | tuple[str, str]
"""The profile an operation touches: an identity as is, or ("guid", objectId)."""

NON_IDEMPOTENT_OPERATORS = frozenset({"$incr", "$decr", "$add"})


class ValidateMode(StrEnum):
    STRICT = "strict"  # a record that breaks a rule is invalid and not sent
    FIX = "fix"  # fixable fields (Phone, Gender, Email, ...) left out, the rest sent
    WARN = "warn"  # sent anyway; the breach is counted as a warning
    OFF = "off"


class OpKind(StrEnum):
    """Which request an operation goes in."""

    UPLOAD = "upload"  # POST /1/upload
    DELETE_IDENTITY = "identity"  # POST /1/delete/profiles.json {"identity": [...]}
    DELETE_GUID = "guid"  # POST /1/delete/profiles.json {"guid": [...]}


class Op(NamedTuple):
    """One CleverTap operation, encoded.

    `body` is the JSON of one upload record, or of one identity / CleverTap ID string
    for a deletion. `safe` says CleverTap ends the same whether it gets this operation
    once or twice (profile upserts without $incr/$decr/$add, tokens, deletions): only
    safe operations are re-sent when an answer leaves it unknown whether they were
    stored. `number` is the operation's place among its record's operations, part of its
    position in the input.

    A named tuple, not a frozen dataclass: one is built for each operation of a run, and
    a frozen dataclass's `__init__` costs four times as much.
    """

    kind: OpKind
    key: ProfileKey | None
    body: bytes
    safe: bool
    token: bool
    number: int
    device: ProfileKey | None = None  # the objectId's profile it writes (`device_written`)


Encoded: TypeAlias = tuple[
    int, ProfileKey | None, bytes, bool, bool, int, int | None, ProfileKey | None
]
"""An operation as the record stage encodes it: (kind code, profile key, body, safe,
token, number, the key's `profile_hash`, the device whose profile it writes), the
fields of an `Op` with its kind as its place in `KINDS`. A plain tuple, built straight
from the record: one crosses a process boundary for each operation of a run
(`ctsync.run.wire`), and the stage hashes the key so the run's process does not."""

KINDS: Final = (OpKind.UPLOAD, OpKind.DELETE_IDENTITY, OpKind.DELETE_GUID)
"""Operation kinds by their code in an `Encoded` operation."""
UPLOAD_CODE: Final = 0  # `KINDS.index(OpKind.UPLOAD)`


class Ready(NamedTuple):
    """A record to send: its operations, the data rules it broke under `--validate
    warn`, and the fields `--validate fix` left out or rewrote."""

    ops: list[Encoded]
    warnings: list[str]
    fixes: list[Fix]


Skipped: TypeAlias = Skip
"""A message no trigger matched: the mapper's own `Skip`, passed on as is (mappers reuse
one per reason, and half of an export is skipped)."""


Prepared: TypeAlias = Ready | Skipped | Invalid


def prepare(
    message: Message,
    mapper: Mapper,
    validator: Validator | None = None,
    mode: ValidateMode = ValidateMode.STRICT,
    tokens: SentTokens | None = None,
) -> Prepared:
    """Map, validate and encode one decoded Segment message. `tokens`: the run's device
    tokens sent (default: the mapper's own, `counting(mapper).tokens`); a token record
    whose token went out already is left out, and the message's other operations keep
    their numbers (`unsent`)."""
    result = mapper(message)
    if isinstance(result, Skip | Invalid):  # a skip is passed on as the mapper made it
        return result
    if not result:
        return Skip(skip_reason(message))
    warnings: list[str] = []
    fixes: list[Fix] = []
    if validator is not None and mode is not ValidateMode.OFF:
        # Every record the mapper made, its device tokens sent already too: whether a
        # message is valid must not depend on the tokens sent (a resumed run lacks those
        # of the records it does not read again). Tokens are never fixed, and a token's
        # breach under `warn` counts whether or not it goes.
        for operation in result:
            if isinstance(operation, Upload):
                broken = validator(operation.record)
                if isinstance(broken, Fixed):  # --validate fix: send it without those fields
                    operation.record = broken.record
                    fixes += broken.fixes
                elif broken is not None:
                    if mode is not ValidateMode.WARN:
                        return broken
                    warnings.append(broken.code)
    numbers: Sequence[int] | None = None
    for operation in result:
        if type(operation) is TokenUpload:
            taken = unsent(result, counting(mapper).tokens if tokens is None else tokens)
            if isinstance(taken, Skip):
                return taken
            result, numbers = taken
            break
    if numbers is None:
        ops = [encode_op(operation, number) for number, operation in enumerate(result)]
    else:
        pairs = zip(numbers, result, strict=True)
        ops = [encode_op(operation, number) for number, operation in pairs]
    return Ready(ops, warnings, fixes)


def unsent(
    operations: list[Operation], tokens: SentTokens
) -> tuple[list[Operation], list[int]] | Skip:
    """A mapper's operations less its token records whose token `tokens` has sent (each
    asked in order: a token sent is then in the set), and each one's number: its place
    in the mapper's output; a `Skip` when nothing is left. An operation's number is part
    of its position in the state file, so it must not depend on the tokens sent: a
    resumed run does not map again the records an earlier run finished, and so lacks
    their tokens."""
    kept: list[Operation] = []
    numbers: list[int] = []
    for number, operation in enumerate(operations):
        if type(operation) is TokenUpload and not tokens.first_time(operation.key):
            continue
        kept.append(operation)
        numbers.append(number)
    return (kept, numbers) if kept else Skip(TOKEN_ALREADY_SENT)


def encode_op(operation: Upload | Delete, number: int = 0) -> Encoded:
    """One operation, encoded, with its ordering key, its hash and its safety; `number`
    is its place among its record's operations. The hot path of every record sent: the
    tuple is built at once, with no `Op` on the way."""
    if isinstance(operation, Delete):
        value = operation.value
        if operation.key == "identity":
            return (1, value, _dumps(value), True, False, number, profile_hash(value), None)
        guid = ("guid", value)
        return (2, guid, _dumps(value), True, False, number, profile_hash(guid), None)
    record = operation.record
    body = _dumps(record)
    record_type = record.get("type")
    if record_type == "profile":
        # The common case, a profile without operations, is decided without walking it.
        safe = not _may_hold_operator(body) or is_idempotent(record)
    else:
        safe = record_type == "token"  # `is_idempotent` of every other type
    key = profile_key(record)
    hashed = None if key is None else profile_hash(key)
    device = device_written(record) if record_type != "event" else None
    return (UPLOAD_CODE, key, body, safe, record_type == "token", number, hashed, device)


def op_of(encoded: Encoded) -> Op:
    """An encoded operation as the run's planner takes it."""
    code, key, body, safe, token, number, _, device = encoded
    return Op(KINDS[code], key, body, safe, token, number, device)


def encode(operation: Upload | Delete, number: int = 0) -> Op:
    """The encoded form of one operation, as the run's planner takes it."""
    return op_of(encode_op(operation, number))


def _may_hold_operator(body: bytes) -> bool:
    """Whether a record's JSON may hold a $incr/$decr/$add operation. Such a key is
    encoded as `"$incr"` (orjson escapes nothing in it), so a body without `"$` is safe:
    one substring search costs a tenth of walking the profile's values. A hit (a price
    like "$19.99", say) goes to `is_idempotent`, which decides. (Searching for the three
    keys themselves measured slower on classic's profiles, whose dates are `"$D_`.)"""
    return b'"$' in body


def _dumps(value: object) -> bytes:
    """orjson's bytes, copied to their exact size. orjson hands back its write buffer
    (about 4 KiB for a 700-byte record), and batches hold thousands of bodies until
    CleverTap answers: the copy took a dry run's peak RSS from 124 to 75 MB."""
    return memoryview(orjson.dumps(value)).tobytes()


def profile_key(record: CleverTapRecord) -> ProfileKey | None:
    """The profile an upload record touches; None when it names none."""
    identity = record.get("identity")
    if identity is not None:
        return str(identity)
    data = record.get("profileData")
    if isinstance(data, dict) and data.get("Identity") is not None:
        # --link-anonymous: the identity's later writes must follow the linking one.
        return str(data["Identity"])
    object_id = record.get("objectId")
    return ("guid", str(object_id)) if object_id is not None else None


def device_written(record: CleverTapRecord) -> ProfileKey | None:
    """The objectId's profile a profile or token record writes (its `profile_key` but
    for a *link*: a profile record that sets `Identity` (`--link-anonymous`, an alias, a
    mapping's link) writes the device's profile and the user's, and is keyed by the
    user). None for a record of an identity. The planner orders a link against the
    device's writes (`Planner.add_encoded`); events carry their own time, and are not
    passed here."""
    object_id = record.get("objectId")
    if object_id is None or record.get("identity") is not None:
        return None
    return ("guid", str(object_id))


def profile_hash(key: ProfileKey) -> int:
    """A stable hash of a profile key (not Python's salted `hash`): the same input plans
    the same requests in every run and every process, so a dry run shows what a real
    run sends."""
    text = key if isinstance(key, str) else "\0".join(key)
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def is_idempotent(record: CleverTapRecord) -> bool:
    """Whether sending `record` twice leaves CleverTap as sending it once."""
    kind = record.get("type")
    if kind == "token":
        return True
    if kind != "profile":
        return False
    data = record.get("profileData")
    if not isinstance(data, dict):
        return True
    # A loop, not any(...): this runs for every profile record, and most values are not
    # objects (the generator cost about a microsecond a record).
    for value in data.values():
        if isinstance(value, dict) and not NON_IDEMPOTENT_OPERATORS.isdisjoint(value):
            return False
    return True


def rules_validator(max_event_properties: int, *, fix: bool = False) -> Validator:
    """CleverTap's data rules as the run's validator: the first code, every reason.
    With `fix` (`--validate fix`), a record whose only problems are fixable fields comes
    back `Fixed`: to be sent without them."""

    def validate(record: CleverTapRecord) -> Invalid | Fixed | None:
        found = check_upload(record, max_event_properties=max_event_properties)
        if not found:
            return None
        if fix:
            fixed, fixes, found = fix_upload(record, max_event_properties=max_event_properties)
            if not found:
                return Fixed(fixed, tuple(fixes))
        return Invalid(found[0].code, "; ".join(v.message for v in found))

    return validate
