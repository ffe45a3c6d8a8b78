"""`ctsync delete` as a run: each identity (or CleverTap ID) of its input is one record
whose one operation is a deletion."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ctsync.options import identity_of
from ctsync.reader import InputRecord
from ctsync.records import Delete, DeleteKey, Invalid, Mapper, MapResult, Message, Origin, Skip
from ctsync.state import Progress


def deletion_records(
    identities: Iterable[tuple[Origin, str]],
) -> Iterator[tuple[InputRecord, Progress | None]]:
    """Input records for `ctsync delete`: one per identity, blank lines left out."""
    for origin, value in identities:
        value = value.strip()
        if value:
            yield InputRecord(origin, value.encode(), {"userId": value}, None), None


DUPLICATE_IDENTITY = Skip("duplicate-identity")


def deletion_mapper(key: DeleteKey) -> Mapper:
    """Every deletion record becomes one `Delete`, after the identity checks of uploads;
    an identity (or CleverTap ID) already deleted by this input is skipped as
    `duplicate-identity`, so each profile is deleted and counted once."""
    # One deletion input is a list a person wrote (a GDPR request, an export of ids): the
    # set of its distinct values is the size of what `ctsync delete` is asked to do.
    seen: set[str] = set()

    def mapper(message: Message) -> MapResult:
        identity = identity_of(message.get("userId"), key)
        if isinstance(identity, Invalid):
            return identity
        if identity in seen:
            return DUPLICATE_IDENTITY
        seen.add(identity)
        return [Delete(key, identity)]

    return mapper
