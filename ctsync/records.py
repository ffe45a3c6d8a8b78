"""The values that flow through a run.

A Segment *message* (a dict decoded from one input line or array element) is turned by a
*mapper* into zero or more CleverTap *operations*: an `Upload` of one record for
`POST /1/upload`, or a `Delete` of one identity (or CleverTap ID) for
`POST /1/delete/profiles.json`. A message that matches no trigger is a `Skip`; one that
cannot be sent is an `Invalid`. Both are values, not exceptions: the summary and the
per-record report are built from them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple, Protocol, TypeAlias, runtime_checkable

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


TokenKey: TypeAlias = tuple[str, str]
"""A device token as a run sends it once: (objectId, token)."""


@dataclass(slots=True)
class TokenUpload(Upload):
    """A device token record, `key` its (objectId, token). Mappers make one for every
    token a message carries; CleverTap takes a token once, so `ctsync.prepare` leaves
    out those the run has sent already (`SentTokens`). A mapper's output, and so every
    operation's number, never depends on which tokens were sent: a run resumed from
    its state file, which does not map again what an earlier run finished, numbers a
    message's operations as that run did."""

    key: TokenKey


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
"""Turns one Segment message into CleverTap operations. Any such function will do (a
test's lambda, `ctsync delete`'s); the mappers ctsync builds are `CountingMapper`s."""


@dataclass(slots=True)
class Counters:
    """What a mapper counts while it maps, per property name (or reason), for the summary:
    values it left out (`dropped`), date-times finer than milliseconds it left as text,
    and messages the time window skipped for want of a usable timestamp (`untimed`).

    The counters are live: the mapper adds to them as it maps. A mapper that wraps
    another (the window, `--events-only`) counts into the counters of the one it wraps.
    """

    dropped: Counter[str] = field(default_factory=Counter)
    dates_left_as_text: Counter[str] = field(default_factory=Counter)
    untimed: Counter[str] = field(default_factory=Counter)

    def take(self) -> dict[str, dict[str, int]]:
        """The counts so far, then cleared: what a worker sends back with each block
        (`add` adds them to the main process's mapper). Empty counters are left out."""
        taken: dict[str, dict[str, int]] = {}
        for name, counter in self._named():
            if counter:
                taken[name] = dict(counter)
                counter.clear()
        return taken

    def add(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Add counts that `take` gave (in another process, say)."""
        for name, counter in self._named():
            if name in counts:
                counter.update(counts[name])

    def _named(self) -> tuple[tuple[str, Counter[str]], ...]:
        return (
            ("dropped", self.dropped),
            ("dates", self.dates_left_as_text),
            ("untimed", self.untimed),
        )


TOKEN_ALREADY_SENT: Final = "token already sent"
"""The skip reason of a message whose only records are device tokens the run sent."""


class SentTokens:
    """The device tokens a run has sent: CleverTap takes a token once, so
    `ctsync.prepare` asks `first_time` of each `TokenUpload` a mapper made. `sent` may
    be shared (the run's one set, `--workers`); `watch` records every answer, so a
    worker can say which it was given."""

    __slots__ = ("_lookups", "sent")

    def __init__(self, sent: set[TokenKey] | None = None) -> None:
        self.sent = set() if sent is None else sent
        self._lookups: list[tuple[TokenKey, bool]] | None = None

    def first_time(self, key: TokenKey) -> bool:
        """Whether `key` was not sent yet this run; it counts as sent from now on."""
        found = key in self.sent
        if self._lookups is not None:
            self._lookups.append((key, found))
        if not found:
            self.sent.add(key)
        return not found

    def watch(self) -> list[tuple[TokenKey, bool]]:
        """From now on, each lookup and whether the token was found, in order: the list
        (the caller reads and clears it)."""
        if self._lookups is None:
            self._lookups = []
        return self._lookups


@runtime_checkable
class CountingMapper(Protocol):
    """A mapper that shows what it counts (`counters`) and the device tokens it asks
    about (`tokens`): the presets, mapping files, and the wrappers around them."""

    @property
    def counters(self) -> Counters: ...

    @property
    def tokens(self) -> SentTokens: ...

    def __call__(self, message: Message, /) -> MapResult: ...


class _Bare:
    """A bare function as a `CountingMapper` that counts nothing and sends no token."""

    __slots__ = ("_function", "counters", "tokens")

    def __init__(self, function: Mapper) -> None:
        self._function = function
        self.counters = Counters()
        self.tokens = SentTokens()

    def __call__(self, message: Message, /) -> MapResult:
        return self._function(message)


def counting(mapper: Mapper) -> CountingMapper:
    """`mapper` itself when it counts, else a wrapper of it that counts nothing."""
    if isinstance(mapper, CountingMapper):
        return mapper
    return _Bare(mapper)


def skip_reason(message: Message) -> str:
    """The summary key of a skipped message: its type, and its event name for track."""
    kind = message.get("type")
    kind = kind if isinstance(kind, str) and kind else "unknown"
    event = message.get("event")
    if isinstance(event, str) and event:
        return f"{kind}:{event}"
    return kind
