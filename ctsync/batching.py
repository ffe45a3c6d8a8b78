"""Packing operations into CleverTap requests without reordering what matters.

Uploads go up to `batch_size` records per request (at most 100 of them tokens);
deletions up to 100 per request, by identity or by CleverTap ID (never both in one).

Order: requests run concurrently, so two operations on the same profile could land in
either order. Only deletion makes that visible (a delete is final; an upload after it
creates a new profile), so an upload and a delete of the same identity are ordered:
the later one's batch *depends on* the earlier one's batch and is not sent until that
batch is acknowledged. The bookkeeping is one dict lookup per operation, and a batch
that depends on nothing is sent at once: cheap when no identity repeats.

An upload that has to wait for a deletion goes to a separate *parked* batch, with
the later uploads of the same profile, so the main stream of uploads never waits for
deletions: without it, uploads and deletions of recurring users chain every upload
batch behind the last deletion batch, and the run goes at one round trip at a time.
Sealing a batch seals the open batches it depends on first, so a batch never waits for
one that has not been sent, and a blocking batch still fills up: a deletion batch is
not cut short because an upload waits for it.

A batch depends on older batches, or on main upload batches, which never depend on
anything: dependencies never form a cycle. `add` and `flush` return batches in the
order to send them, each after the batches it depends on.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Any, TypeAlias

from ctsync.ledger import Tracked
from ctsync.records import Delete, Operation
from ctsync.settings import MAX_DELETE_BATCH, MAX_TOKENS_PER_UPLOAD, MAX_UPLOAD_BATCH

ProfileKey: TypeAlias = str | tuple[str, str]
"""An identity as is, or ("guid", objectId) for a CleverTap ID."""


class BatchKind(StrEnum):
    UPLOAD = "upload"
    DELETE_IDENTITY = "identity"
    DELETE_GUID = "guid"


class Parked(StrEnum):
    UPLOAD = "parked upload"


PARKED = Parked.UPLOAD
_Slot: TypeAlias = BatchKind | Parked
"""Which open batch an operation joins: one per kind, and one for parked uploads."""


class Batch:
    """One request's worth of operations and the records they came from."""

    __slots__ = (
        "_spans",
        "breaks",
        "deps",
        "done",
        "keys",
        "kind",
        "owners",
        "payloads",
        "sealed",
        "sent",
        "seq",
        "slot",
        "tokens",
    )

    def __init__(self, kind: BatchKind, seq: int, slot: _Slot | None = None) -> None:
        self.kind = kind
        self.seq = seq
        self.slot: _Slot = slot or kind
        self.payloads: list[Any] = []  # upload records, or identity/guid strings
        self.owners: list[Tracked] = []
        self.keys: list[ProfileKey] = []
        self.deps: list[Batch] = []
        self.tokens = 0
        self.sealed = False
        self.sent = False  # handed to the sender: CleverTap may have it
        self.done = asyncio.Event()
        # Indexes into `owners` where an operation for another batch came in between:
        # lines of other batches may lie there, so a span of lines must not cross them.
        self.breaks: list[int] = []
        self._spans: dict[str, list[tuple[int, int]]] | None = None

    def __len__(self) -> int:
        return len(self.payloads)

    def spans(self) -> dict[str, list[tuple[int, int]]]:
        """Per input file, the runs of lines (first, last) this batch holds.

        A run covers operations that went to this batch one after another, with the
        skipped and invalid records between them (re-reading those is harmless); it
        never spans a line that went to another batch, which may already be answered.
        """
        if self._spans is not None:
            return self._spans
        spans: dict[str, list[tuple[int, int]]] = {}
        breaks = set(self.breaks)
        source: str | None = None
        first = last = 0
        for index, owner in enumerate(self.owners):
            name, line = owner.origin.source, owner.origin.line
            if name != source or index in breaks:
                if source is not None:
                    spans.setdefault(source, []).append((first, last))
                source, first, last = name, line, line
            else:
                first, last = min(first, line), max(last, line)
        if source is not None:
            spans.setdefault(source, []).append((first, last))
        if self.sealed:  # owners no longer change
            self._spans = spans
        return spans

    def __repr__(self) -> str:
        return f"<Batch {self.kind} #{self.seq} n={len(self)} deps={[d.seq for d in self.deps]}>"


def profile_key(operation: Operation) -> ProfileKey | None:
    """The profile an operation touches, for ordering; None when it names none."""
    if isinstance(operation, Delete):
        return operation.value if operation.key == "identity" else ("guid", operation.value)
    record = operation.record
    identity = record.get("identity")
    if identity is not None:
        return str(identity)
    object_id = record.get("objectId")
    return ("guid", str(object_id)) if object_id is not None else None


class Planner:
    """Turns a stream of operations into sealed batches, in order.

    `add` and `flush` return the batches that became ready to send; call `complete`
    when a batch has its answer so later operations stop waiting for it.
    """

    def __init__(
        self, *, batch_size: int = MAX_UPLOAD_BATCH, delete_batch_size: int = MAX_DELETE_BATCH
    ):
        self._limits = {
            BatchKind.UPLOAD: batch_size,
            BatchKind.DELETE_IDENTITY: delete_batch_size,
            BatchKind.DELETE_GUID: delete_batch_size,
        }
        self._open: dict[_Slot, Batch] = {}
        self._seq = 0
        self._last_slot: _Slot | None = None
        # The newest unfinished batch that uploads to / deletes each profile, and the
        # newest unfinished parked batch that uploads to it.
        self._uploads: dict[ProfileKey, Batch] = {}
        self._deletes: dict[ProfileKey, Batch] = {}
        self._parked: dict[ProfileKey, Batch] = {}

    def add(self, operation: Operation, owner: Tracked) -> list[Batch]:
        key = profile_key(operation)
        if isinstance(operation, Delete):
            kind = (
                BatchKind.DELETE_IDENTITY if operation.key == "identity" else BatchKind.DELETE_GUID
            )
            slot: _Slot = kind
            payload: Any = operation.value
            mine, theirs = self._deletes, self._uploads
            blocker = theirs.get(key) if key is not None else None
        else:
            kind = slot = BatchKind.UPLOAD
            payload = operation.record
            mine, theirs = self._uploads, self._deletes
            blocker = theirs.get(key) if key is not None else None
            # An upload that must wait for a deletion is parked in a batch of its own, so
            # the uploads of every other profile never wait; later uploads of the same
            # profile follow it there, to keep their order.
            if blocker is not None or (key is not None and key in self._parked):
                slot = PARKED
        ready: list[Batch] = []
        batch = self._open.get(slot)
        if (
            blocker is not None
            and batch is not None
            and batch.seq < blocker.seq
            and blocker.slot is not BatchKind.UPLOAD
        ):
            # A dependency on a newer batch that may wait for others could close a
            # cycle; on a main upload batch, which never waits for anything, it cannot.
            ready += self._seal(batch)
            batch = None
        is_token = kind is BatchKind.UPLOAD and _is_token(payload)
        if is_token and batch is not None and batch.tokens >= MAX_TOKENS_PER_UPLOAD:
            ready += self._seal(batch)
            batch = None
        if batch is None:
            batch = self._start(kind, slot)
        if blocker is not None and blocker not in batch.deps:
            batch.deps.append(blocker)
        if slot is not self._last_slot:
            batch.breaks.append(len(batch.owners))
            self._last_slot = slot
        batch.payloads.append(payload)
        batch.owners.append(owner)
        if key is not None:
            batch.keys.append(key)
            mine[key] = batch
            if slot is PARKED:
                self._parked[key] = batch
        if is_token:
            batch.tokens += 1
        if len(batch.payloads) >= self._limits[kind]:
            ready += self._seal(batch)
        return ready

    def flush(self) -> list[Batch]:
        """Seal every open batch (end of input)."""
        ready: list[Batch] = []
        for batch in sorted(self._open.values(), key=lambda b: b.seq):
            if not batch.sealed:
                ready += self._seal(batch)
        return ready

    def open_batches(self) -> list[Batch]:
        """Batches still being filled (read, not yet sent)."""
        return list(self._open.values())

    def complete(self, batch: Batch) -> None:
        """Forget `batch` in the ordering index and wake the batches waiting on it."""
        indexes = [self._uploads if batch.kind is BatchKind.UPLOAD else self._deletes]
        if batch.slot is PARKED:
            indexes.append(self._parked)
        for index in indexes:
            for key in batch.keys:
                if index.get(key) is batch:
                    del index[key]
        batch.done.set()

    def _start(self, kind: BatchKind, slot: _Slot) -> Batch:
        self._seq += 1
        batch = Batch(kind, self._seq, slot)
        self._open[slot] = batch
        return batch

    def _seal(self, batch: Batch) -> list[Batch]:
        """Seal `batch` and, first, the batches it waits for that are still open; the
        list comes in the order to send: a batch after the batches it depends on."""
        sealed: list[Batch] = []
        for dependency in batch.deps:
            if not dependency.sealed:
                sealed += self._seal(dependency)
        batch.sealed = True
        if self._open.get(batch.slot) is batch:
            del self._open[batch.slot]
        sealed.append(batch)
        return sealed


def _is_token(record: Any) -> bool:
    return isinstance(record, dict) and record.get("type") == "token"
