"""The values a run shares with what sends its requests (the CleverTap client, the dry
run, the tests' fakes) and with the state file: the request, the `Sender` that sends it,
the hook called when it may reach CleverTap, each record's `Verdict`, an operation's
`Position` in its input, and the request bodies as they go on the wire.

Imported by the run without the HTTP client, so a dry run never loads httpx; and by the
client and the state file without the run's accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias

from ctsync.prepare import ProfileKey
from ctsync.records import DeleteKey, Outcome, Stage

Position: TypeAlias = tuple[int, int, int]
"""Where an operation comes from in its source: (line, part within the line, operation)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happened to one operation: accepted, or rejected/failed with a code and why."""

    outcome: Outcome
    code: str = ""
    message: str = ""
    stage: Stage = Stage.API


ACCEPTED = Verdict(Outcome.ACCEPTED)

UNKNOWN = "outcome-unknown"
"""The code of a record whose request may or may not have been stored by CleverTap."""

OnWire = Callable[[], None]
"""Called when a request is about to be written to a connection (CleverTap may get it)."""


class Request(NamedTuple):
    """What a sender (a `model.Sender`) sends: an upload (`delete` is None) or a
    deletion by identity or CleverTap ID, of encoded records, with each record's profile
    key and whether it may be sent again after an unclear answer (see `client.upload`)."""

    delete: DeleteKey | None
    bodies: Sequence[bytes]
    keys: Sequence[ProfileKey | None]
    resend: Sequence[bool]


class Sender(Protocol):
    """Where requests go: CleverTap (`client.CleverTapClient`) or nowhere (the dry run's
    `run.DryRunSender`)."""

    requests: int
    retries: int

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        """One verdict per record of `request`, in order; `on_wire` is called when the
        request may reach CleverTap (see `client.OnWire`)."""


def upload_body(bodies: Sequence[bytes]) -> bytes:
    """`{"d": [...]}` joined from encoded records."""
    return b'{"d":[' + b",".join(bodies) + b"]}"


def delete_body(key: DeleteKey, bodies: Sequence[bytes]) -> bytes:
    """`{"identity": [...]}` (or `guid`) joined from encoded strings."""
    return b'{"' + key.encode() + b'":[' + b",".join(bodies) + b"]}"


__all__ = [
    "ACCEPTED",
    "UNKNOWN",
    "OnWire",
    "Position",
    "Request",
    "Sender",
    "Verdict",
    "delete_body",
    "upload_body",
]
