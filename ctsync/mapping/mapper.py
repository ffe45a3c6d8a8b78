"""The mapper of a mapping file: every enabled subscription whose trigger matches fires.

Operations come out in subscription order. A message no subscription fires for is a
`Skip`. If one fired subscription cannot build its record (no identity, a bad `ts`), the
whole message is `Invalid` with that reason, as in the presets: a message's outcome is
one value in the report.

Actions and the records they build:

| action | fields | operation |
|---|---|---|
| userUpload | identity or objectId, ts, profileData | profile record |
| userDelete | identity or guid | `Delete` |
| eventUpload | identity or objectId, ts, evtName, evtData | event record |
| tokenUpload | objectId, id, type | `TokenUpload` record (sent once per objectId and token) |

When both identity and objectId are mapped, identity is used if the message has one and
objectId otherwise. `ts` missing or null means now. Dates in profileData and evtData
follow Convert Timestamps (the subscription's `convert_timestamps`, else the run's;
date-times finer than milliseconds left as text are counted in `dates_left_as_text`);
nested event properties follow `--nested`, and what is left out is counted in the
mapper's `dropped` counter. profileData is sent as mapped: CleverTap's reserved keys
and operation objects (`{"$incr": 1}`) reach it as written. Its `DOB` is CleverTap's date
(`$D_`), read as the classic preset reads one (`timestamps.clevertap_date`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ctsync.mapping.directives import MISSING, Compiled
from ctsync.mapping.file import Action, MappingFile, Subscription
from ctsync.mapping.properties import PropertyShaper
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
    TokenUpload,
    Upload,
    skip_reason,
)
from ctsync.timestamps import FineDates, clevertap_date, convert_object

Build = Callable[[Message], Operation | Invalid]
"""One subscription's action: an operation, or why it cannot be built."""


def _absent(value: Any) -> bool:
    return value is MISSING or value is None or value == ""


def _resolver(fields: dict[str, Compiled], key: str) -> Callable[[Message], Any]:
    compiled = fields.get(key)
    return compiled.resolve if compiled is not None else (lambda message: MISSING)


def _object_id(value: Any, label: str, code: str = "526") -> str | Invalid:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return Invalid(code, f"no CleverTap ID: {label} is missing or not a string")
    return value


class _Builder:
    """Builds one subscription's operation from a message."""

    def __init__(
        self,
        subscription: Subscription,
        options: MappingOptions,
        shaper: PropertyShaper,
        fine: FineDates,
    ) -> None:
        self.fields = subscription.fields
        self.convert = (
            options.convert_timestamps
            if subscription.convert_timestamps is None
            else subscription.convert_timestamps
        )
        self.dates_as = options.dates_as
        self.shaper = shaper
        self.fine = fine
        self.clock = options.clock

    def identifier(self, message: Message) -> tuple[str, str] | Invalid:
        """(`identity`|`objectId`, value): identity when the message has one."""
        fields = self.fields
        if "identity" in fields:
            value = fields["identity"].resolve(message)
            if not _absent(value) or "objectId" not in fields:
                identity = identity_of(
                    None if value is MISSING else value, fields["identity"].label
                )
                return identity if isinstance(identity, Invalid) else ("identity", identity)
        value = fields["objectId"].resolve(message)
        if _absent(value) and "identity" in fields:
            labels = f"{fields['identity'].label} or {fields['objectId'].label}"
            return Invalid("523", f"no identity: {labels} is missing or empty")
        object_id = _object_id(value, fields["objectId"].label)
        return object_id if isinstance(object_id, Invalid) else ("objectId", object_id)

    def data(self, message: Message, key: str) -> dict[str, Any]:
        compiled = self.fields.get(key)
        value = compiled.resolve(message) if compiled is not None else MISSING
        if not isinstance(value, dict):
            return {}
        data = convert_object(value, self.dates_as, fine=self.fine) if self.convert else dict(value)
        if key == "profileData" and "DOB" in value:
            # CleverTap's date, read from what people write, whatever Convert Timestamps
            # says (as the classic preset does); one that cannot be read stays as written
            # for the data rules (`dob-not-a-date`).
            data["DOB"] = clevertap_date(value["DOB"])
        return data

    def who_and_when(self, message: Message) -> tuple[str, str, int] | Invalid:
        """The identifier key and value, and `ts`, that every profile and event needs."""
        identifier = self.identifier(message)
        if isinstance(identifier, Invalid):
            return identifier
        value = _resolver(self.fields, "ts")(message)
        ts = record_time(None if value is MISSING else value, self.clock)
        if isinstance(ts, Invalid):
            return ts
        return (*identifier, ts)

    def user_upload(self, message: Message) -> Operation | Invalid:
        head = self.who_and_when(message)
        if isinstance(head, Invalid):
            return head
        key, value, ts = head
        return Upload(
            {
                "type": "profile",
                key: value,
                "ts": ts,
                "profileData": self.data(message, "profileData"),
            }
        )

    def user_delete(self, message: Message) -> Operation | Invalid:
        fields = self.fields
        if "identity" in fields:
            value = fields["identity"].resolve(message)
            if not _absent(value) or "guid" not in fields:
                identity = identity_of(
                    None if value is MISSING else value, fields["identity"].label
                )
                return identity if isinstance(identity, Invalid) else Delete("identity", identity)
        guid = _object_id(fields["guid"].resolve(message), fields["guid"].label, "523")
        return guid if isinstance(guid, Invalid) else Delete("guid", guid)

    def event_upload(self, message: Message) -> Operation | Invalid:
        head = self.who_and_when(message)
        if isinstance(head, Invalid):
            return head
        key, value, ts = head
        name = self.fields["evtName"].resolve(message)
        if not isinstance(name, str) or not name.strip():
            return Invalid("509", f"no event name: {self.fields['evtName'].label} is missing")
        data = self.shaper.event_data(self.data(message, "evtData"), charged=name == "Charged")
        record = {"type": "event", key: value, "ts": ts, "evtName": name, "evtData": data}
        return Upload(record)

    def token_upload(self, message: Message) -> Operation | Invalid:
        fields = self.fields
        object_id = _object_id(fields["objectId"].resolve(message), fields["objectId"].label, "530")
        if isinstance(object_id, Invalid):
            return object_id
        token = fields["id"].resolve(message)
        if _absent(token):
            return Invalid("532", f"no token: {fields['id'].label} is missing")
        token_type = fields["type"].resolve(message)
        if _absent(token_type):
            return Invalid("533", f"no token type: {fields['type'].label} is missing")
        data = {"id": token, "type": token_type}
        record = {"type": "token", "objectId": object_id, "tokenData": data}
        return TokenUpload(record, (object_id, str(token)))

    def for_action(self, action: Action) -> Build:
        builds: dict[Action, Build] = {
            Action.USER_UPLOAD: self.user_upload,
            Action.USER_DELETE: self.user_delete,
            Action.EVENT_UPLOAD: self.event_upload,
            Action.TOKEN_UPLOAD: self.token_upload,
        }
        return builds[action]


class MappingMapper:
    """The mapper of a mapping file. `dropped` counts the values `--nested` left out,
    `dates_left_as_text` the date-times finer than milliseconds left unconverted."""

    def __init__(
        self,
        mapping_file: MappingFile,
        options: MappingOptions,
        *,
        tokens_sent: set[tuple[str, str]] | None = None,
    ) -> None:
        self.mapping_file = mapping_file
        self._shaper = PropertyShaper(options.nested)
        self._fine = FineDates(convert=options.convert_microseconds)
        # The counters themselves (read at the end of a run), not copies.
        self.counters = Counters(
            dropped=self._shaper.dropped, dates_left_as_text=self._fine.left_as_text
        )
        self.dropped: Counter[str] = self.counters.dropped
        self.dates_left_as_text: Counter[str] = self.counters.dates_left_as_text
        # (objectId, token) pairs sent this run (`tokens_sent`, the run's set): asked by
        # `ctsync.prepare` of each token record this mapper makes.
        self.tokens = SentTokens(tokens_sent)
        self._subscriptions = tuple(
            (
                sub.matches,
                _Builder(sub, options, self._shaper, self._fine).for_action(sub.action),
            )
            for sub in mapping_file.subscriptions
            if sub.enabled
        )

    def __call__(self, message: Message) -> MapResult:
        ops: list[Operation] = []
        for matches, build in self._subscriptions:
            if not matches(message):
                continue
            op = build(message)
            if isinstance(op, Invalid):
                return op
            ops.append(op)
        if ops:
            return ops
        return Skip(skip_reason(message))


def build_mapper(mapping_file: MappingFile, options: MappingOptions) -> MappingMapper:
    """The mapper of a loaded mapping file (a `Mapper` with a `dropped` counter)."""
    return MappingMapper(mapping_file, options)
