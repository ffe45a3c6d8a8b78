"""Verdicts into the books: each operation's answer settles its record in the ledger;
a record whose other operations are still out is *held* (its verdicts so far, which the
state file keeps); a record refused or failed for good lets its messageId go."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import cast

from ctsync.batching import Batch
from ctsync.dedupe import Group, MessageIds, forgotten
from ctsync.ledger import Ledger, Tracked
from ctsync.model import ACCEPTED, Position, Verdict

Held = dict[Tracked, list[tuple[str, Position, Verdict]]]
"""Records with some verdicts and operations still out: by record, each verdict's source
and position (the state file keeps them pending, with their verdicts)."""


class Accounts:
    """The ledger, the held records and the messageIds of one run."""

    def __init__(self, ledger: Ledger, ids: MessageIds | None) -> None:
        self.ledger = ledger
        self.ids = ids
        self.held: Held = {}
        # Each source's dedupe group (its state key), set by the intake when it first
        # takes a result of the source: a record forgotten is forgotten in its group.
        self.groups: dict[str, Group] = {}

    def answer(self, batch: Batch, verdicts: Sequence[Verdict]) -> None:
        """A batch's final answer: one verdict per operation, in order."""
        settle = self.settle
        if batch.bulk:  # some operations have no record object (`Planner.add_bulk`)
            if verdicts.count(ACCEPTED) == len(verdicts):
                # Each of them its record's only operation: the record is accepted. The
                # others (a record object each) one by one, passing over the None.
                self.ledger.summary.accepted += batch.bulk
                pairs = zip(batch.owners, batch.positions, strict=True)
                for owner, (source, position) in compress(pairs, batch.owners):
                    settle(cast(Tracked, owner), source, position, ACCEPTED)
                return
            owners = batch.owners_of()  # a report line needs them
        else:
            owners = cast(list[Tracked], batch.owners)  # none is None without bulk
        for owner, verdict, (source, position) in zip(
            owners, verdicts, batch.positions, strict=True
        ):
            settle(owner, source, position, verdict)

    def settle(self, tracked: Tracked, source: str, position: Position, verdict: Verdict) -> None:
        """One operation's verdict: from CleverTap's answer, or settled by an earlier run
        (a resumed record's operation)."""
        self.ledger.settle(tracked, verdict)
        held = self.held
        if tracked.remaining:  # another operation of this record is still out
            held.setdefault(tracked, []).append((source, position, verdict))
            return
        # Its last verdict: its report line is written now, so the state must not keep
        # its earlier verdicts pending (the next run would report it again).
        if held:
            held.pop(tracked, None)
        if tracked.dedupe is not None and tracked.verdict is not ACCEPTED:
            self._forget(tracked)

    def _forget(self, tracked: Tracked) -> None:
        """A record has its final verdict: refused or failed for good, its messageId is
        forgotten (a later copy, or a re-drive of --failed, is sent)."""
        key = tracked.dedupe
        if key is not None and self.ids is not None:
            verdict = tracked.verdict
            if forgotten(verdict.outcome.value, verdict.code):
                self.ids.forget(key, self.groups[tracked.origin.source])
