"""Mapping files: Segment-style subscriptions (trigger + action + mapping) in JSON.

    {
      "description": "what this file is for",
      "subscriptions": [
        {
          "name": "Identify to profile",
          "enabled": true,
          "trigger": "type = \\"identify\\"",
          "action": "userUpload",
          "convert_timestamps": true,
          "mapping": {
            "identity": {"@path": "$.userId"},
            "ts": {"@path": "$.timestamp"},
            "profileData": {"@path": "$.traits"}
          }
        }
      ]
    }

Everything is checked and compiled at load: a bad trigger, directive, action or field is
a `MappingError` naming the file, the subscription and (for triggers) the column, before
any message is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import orjson

from ctsync.errors import DirectiveError, TriggerSyntaxError
from ctsync.errors import MappingError as MappingError
from ctsync.mapping.directives import Compiled, compile_value
from ctsync.mapping.triggers import Predicate, compile_trigger
from ctsync.records import Message
from ctsync.sources import BOM, UTF8_BOM

MAX_SUBSCRIPTIONS: Final = 50  # Segment's limit of mappings per destination instance


class Action(StrEnum):
    """What a subscription does, in Segment's CleverTap (Actions) terms."""

    USER_UPLOAD = "userUpload"
    USER_DELETE = "userDelete"
    EVENT_UPLOAD = "eventUpload"
    TOKEN_UPLOAD = "tokenUpload"


# Per action: the mapping fields it reads, and the groups of which one field is required.
ACTION_FIELDS: Final[dict[Action, frozenset[str]]] = {
    Action.USER_UPLOAD: frozenset({"identity", "objectId", "ts", "profileData"}),
    Action.USER_DELETE: frozenset({"identity", "guid"}),
    Action.EVENT_UPLOAD: frozenset({"identity", "objectId", "ts", "evtName", "evtData"}),
    Action.TOKEN_UPLOAD: frozenset({"objectId", "id", "type"}),
}
REQUIRED_FIELDS: Final[dict[Action, tuple[tuple[str, ...], ...]]] = {
    Action.USER_UPLOAD: (("identity", "objectId"),),
    Action.USER_DELETE: (("identity", "guid"),),
    Action.EVENT_UPLOAD: (("identity", "objectId"), ("evtName",)),
    Action.TOKEN_UPLOAD: (("objectId",), ("id",), ("type",)),
}
SUBSCRIPTION_KEYS: Final = frozenset(
    {"name", "enabled", "trigger", "action", "mapping", "convert_timestamps"}
)
FILE_KEYS: Final = frozenset({"description", "subscriptions"})


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription, compiled: `matches(message)` and the action's mapped `fields`."""

    name: str
    enabled: bool
    trigger: str
    action: Action
    mapping: dict[str, Any]
    convert_timestamps: bool | None = None
    matches: Predicate = field(repr=False, compare=False, default=lambda message: False)
    fields: dict[str, Compiled] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True, slots=True)
class MappingFile:
    """A loaded mapping file: where it came from and its subscriptions, in order."""

    source: str
    description: str
    subscriptions: tuple[Subscription, ...]

    def firing(self, message: Message) -> list[Subscription]:
        """The enabled subscriptions whose trigger matches `message`, in file order."""
        return [sub for sub in self.subscriptions if sub.enabled and sub.matches(message)]


def load_mapping(path_or_text: str | Path) -> MappingFile:
    """Read, check and compile a mapping file (a path, or the JSON text itself).

    A `str` that starts with `{` is taken as JSON text, anything else as a path.
    Raises `MappingError`.
    """
    source, document = read_mapping_document(path_or_text)
    return parse_mapping(document, source)


def read_mapping_document(path_or_text: str | Path) -> tuple[str, Any]:
    """A mapping file's name and decoded JSON, unchecked (`load_mapping` without
    `parse_mapping`: what a worker process rebuilds a mapper from). A byte-order mark
    before the JSON is passed over, as in exports (Windows editors write one). Raises
    `MappingError`."""
    if isinstance(path_or_text, str) and path_or_text.lstrip(BOM).lstrip().startswith("{"):
        source, text = "<mapping>", path_or_text.lstrip(BOM).encode()
    else:
        source = str(path_or_text)
        try:
            text = Path(path_or_text).read_bytes()
        except OSError as error:
            raise MappingError(source, f"cannot read: {error.strerror or error}") from None
    try:
        return source, orjson.loads(text.removeprefix(UTF8_BOM))
    except orjson.JSONDecodeError as error:
        raise MappingError(source, f"not valid JSON: {error}") from None


def parse_mapping(document: Any, source: str = "<mapping>") -> MappingFile:
    """Check and compile a decoded mapping file. Raises `MappingError`."""
    if not isinstance(document, dict):
        raise MappingError(source, "a mapping file is a JSON object with 'subscriptions'")
    unknown = sorted(set(document) - FILE_KEYS)
    if unknown:
        raise MappingError(
            source, f"unknown key {unknown[0]!r} (expected description, subscriptions)"
        )
    raw_subscriptions = document.get("subscriptions")
    if not isinstance(raw_subscriptions, list) or not raw_subscriptions:
        raise MappingError(source, "'subscriptions' must be a non-empty array")
    if len(raw_subscriptions) > MAX_SUBSCRIPTIONS:
        raise MappingError(
            source,
            f"{len(raw_subscriptions)} subscriptions; at most {MAX_SUBSCRIPTIONS} are allowed",
        )
    description = document.get("description", "")
    if not isinstance(description, str):
        raise MappingError(source, "'description' must be a string")
    subscriptions: list[Subscription] = []
    names: set[str] = set()
    for position, raw in enumerate(raw_subscriptions, start=1):
        subscription = _subscription(raw, position, source)
        if subscription.name in names:
            raise MappingError(
                source, "two subscriptions have this name", subscription=subscription.name
            )
        names.add(subscription.name)
        subscriptions.append(subscription)
    return MappingFile(source, description, tuple(subscriptions))


def _subscription(raw: Any, position: int, source: str) -> Subscription:
    if not isinstance(raw, dict):
        raise MappingError(source, f"subscription #{position} is not an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MappingError(source, f"subscription #{position} has no name")

    def fail(reason: str, column: int | None = None) -> MappingError:
        return MappingError(source, reason, subscription=name, column=column)

    unknown = sorted(set(raw) - SUBSCRIPTION_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (expected {', '.join(sorted(SUBSCRIPTION_KEYS))})")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("'enabled' must be true or false")
    convert = raw.get("convert_timestamps")
    if convert is not None and not isinstance(convert, bool):
        raise fail("'convert_timestamps' must be true or false")
    trigger = raw.get("trigger")
    if not isinstance(trigger, str):
        raise fail("'trigger' must be a string such as type = \"identify\"")
    try:
        matches = compile_trigger(trigger)
    except TriggerSyntaxError as error:
        raise fail(error.reason, error.column) from None
    try:
        action = Action(str(raw.get("action")))
    except ValueError:
        choices = ", ".join(action.value for action in Action)
        raise fail(f"action {raw.get('action')!r} is not one of {choices}") from None
    mapping = raw.get("mapping")
    if not isinstance(mapping, dict):
        raise fail("'mapping' must be an object of action fields")
    allowed = ACTION_FIELDS[action]
    extra = sorted(set(mapping) - allowed)
    if extra:
        raise fail(
            f"{action.value} has no field {extra[0]!r} (fields: {', '.join(sorted(allowed))})"
        )
    for group in REQUIRED_FIELDS[action]:
        if not any(key in mapping for key in group):
            raise fail(f"{action.value} needs {' or '.join(group)} in its mapping")
    try:
        fields = {key: compile_value(value, key) for key, value in mapping.items()}
    except DirectiveError as error:
        raise fail(f"mapping.{error}") from None
    return Subscription(
        name=name,
        enabled=enabled,
        trigger=trigger,
        action=action,
        mapping=mapping,
        convert_timestamps=convert,
        matches=matches,
        fields=fields,
    )
