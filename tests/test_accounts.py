"""Verdicts into the books (`ctsync.run.accounts`): a record is counted once, when its
last operation has its verdict, and is held (kept pending in the state file, with its
verdicts so far) exactly while some of its operations are still out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ctsync.batching import Batch
from ctsync.ledger import Ledger, Tracked
from ctsync.model import ACCEPTED, Verdict
from ctsync.prepare import OpKind
from ctsync.records import Origin, Outcome, Stage
from ctsync.run.accounts import Accounts

REFUSED = Verdict(Outcome.REJECTED, "514", "gender invalid", Stage.API)
UNKNOWN = Verdict(Outcome.FAILED, "outcome-unknown", "may be stored", Stage.TRANSPORT)


def batch_of(tracked: Tracked, numbers: list[int]) -> Batch:
    batch = Batch(OpKind.UPLOAD, 0, 1)
    for number in numbers:
        batch.owners.append(tracked)
        batch.positions.append(("f", (1, 0, number)))
        batch.bodies.append(b"{}")
    return batch


@given(
    verdicts=st.lists(st.sampled_from([ACCEPTED, REFUSED, UNKNOWN]), min_size=1, max_size=6),
    data=st.data(),
)
def test_a_record_is_held_while_operations_are_out_and_counted_once(
    verdicts: list[Verdict], data: st.DataObject
) -> None:
    # The first `known` verdicts come from an earlier run (a resumed record); the rest
    # are answered in batches of this run, in any grouping.
    known = data.draw(st.integers(0, len(verdicts)), label="known")
    ledger = Ledger()
    accounts = Accounts(ledger, None)
    tracked = Tracked(Origin("f", 1), b"{}", {}, len(verdicts))
    for number in range(known):
        accounts.settle(tracked, "f", (1, 0, number), verdicts[number])
        assert (tracked in accounts.held) == (number < len(verdicts) - 1)
    number = known
    while number < len(verdicts):
        size = data.draw(st.integers(1, len(verdicts) - number), label="batch")
        numbers = list(range(number, number + size))
        accounts.answer(batch_of(tracked, numbers), [verdicts[n] for n in numbers])
        number += size
        assert (tracked in accounts.held) == (number < len(verdicts))
        if number < len(verdicts):  # held: every verdict so far, by position
            assert [p for _, p, _ in accounts.held[tracked]] == [(1, 0, n) for n in range(number)]
    summary = ledger.summary
    worst = "failed" if UNKNOWN in verdicts else "rejected" if REFUSED in verdicts else "accepted"
    counted = {
        "accepted": summary.accepted,
        "rejected": summary.rejected.total(),
        "failed": summary.failed.total(),
    }
    assert counted == {name: int(name == worst) for name in counted}
    assert accounts.held == {}
