"""The values that flow through a run.

A Segment *message* (a dict decoded from one input line or array element) is turned by a
*mapper* into zero or more CleverTap *operations*: an `Upload` of one record for
`POST /1/upload`, or a `Delete` of one identity (or CleverTap ID) for
`POST /1/delete/profiles.json`. A message that matches no trigger is a `Skip`; one that
cannot be sent is an `Invalid`. Both are values, not exceptions: the summary and the
per-record report are built from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple, TypeAlias

Message: TypeAlias = dict[str, Any]
"""One decoded Segment message (identify, track, page, screen, group, alias)."""

CleverTapRecord: TypeAlias = dict[str, Any]
"""One element of the `d` array of an upload: a profile, event or token record."""


class Stage(StrEnum):
    """Where a record stopped, as written in the report's `stage` field."""

    PARSE = "parse"
    VALIDATE = "validate"
    API = "api"
    TRANSPORT = "transport"


class Outcome(StrEnum):
    """The final state of one input record; the summary counts each."""

    SKIPPED = "skipped"
    INVALID = "invalid"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


class Origin(NamedTuple):
    """Where a message came from: a path (or `-` for stdin), its 1-based line, and its
    0-based place among the messages of that line (`part`: a `{"batch": [...]}` envelope
    line holds several).

    For a file that is one JSON array or envelope `line` is the 1-based element index.
    A named tuple: one is built for every line read, and a frozen dataclass's `__init__`
    costs twice as much.
    """

    source: str
    line: int
    part: int = 0


@dataclass(slots=True)
class Upload:
    """One CleverTap record to send with `POST /1/upload`."""

    record: CleverTapRecord


DeleteKey: TypeAlias = Literal["identity", "guid"]


@dataclass(frozen=True, slots=True)
class Delete:
    """One profile to delete with `POST /1/delete/profiles.json`.

    `key` is `identity` for a custom identity, `guid` for a CleverTap ID (objectId).
    """

    key: DeleteKey
    value: str


Operation: TypeAlias = Upload | Delete


@dataclass(frozen=True, slots=True)
class Skip:
    """A message no trigger matched. `reason` groups skips in the summary,
    e.g. `track:Order Completed` or `page`."""

    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that cannot be sent. `code` is CleverTap's code where one applies
    (e.g. `523` for a missing identity) or a short slug for ctsync's own checks."""

    code: str
    message: str
    stage: Stage = Stage.VALIDATE


MapResult: TypeAlias = list[Operation] | Skip | Invalid
"""What a mapper returns for one message."""

Mapper: TypeAlias = Callable[[Message], MapResult]
"""Turns one Segment message into CleverTap operations (a preset or a mapping file)."""


def skip_reason(message: Message) -> str:
    """The summary key of a skipped message: its type, and its event name for track."""
    kind = message.get("type")
    kind = kind if isinstance(kind, str) and kind else "unknown"
    event = message.get("event")
    if isinstance(event, str) and event:
        return f"{kind}:{event}"
    return kind
