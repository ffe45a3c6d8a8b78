"""What crosses the line between a run and whatever sends its requests (the CleverTap
client, the dry run, the tests' fakes): the request, the hook called when it may reach
CleverTap, and the request bodies as they go on the wire.

Imported by the run without the HTTP client, so a dry run never loads httpx.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ctsync.prepare import ProfileKey
from ctsync.records import DeleteKey

UNKNOWN = "outcome-unknown"
"""The code of a record whose request may or may not have been stored by CleverTap."""

OnWire = Callable[[], None]
"""Called when a request is about to be written to a connection (CleverTap may get it)."""


class Request(NamedTuple):
    """What a sender (the pipeline's `Sender`) sends: an upload (`delete` is None) or a
    deletion by identity or CleverTap ID, of encoded records, with each record's profile
    key and whether it may be sent again after an unclear answer (see `client.upload`)."""

    delete: DeleteKey | None
    bodies: Sequence[bytes]
    keys: Sequence[ProfileKey | None]
    resend: Sequence[bool]


def upload_body(bodies: Sequence[bytes]) -> bytes:
    """`{"d": [...]}` joined from encoded records."""
    return b'{"d":[' + b",".join(bodies) + b"]}"


def delete_body(key: DeleteKey, bodies: Sequence[bytes]) -> bytes:
    """`{"identity": [...]}` (or `guid`) joined from encoded strings."""
    return b'{"' + key.encode() + b'":[' + b",".join(bodies) + b"]}"


__all__ = ["UNKNOWN", "OnWire", "Request", "delete_body", "upload_body"]
