"""The record stage's results as the run takes them (`ctsync.run.wire`): runs of skipped
records come as one result, and nothing else moves."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ctsync.run.wire import INVALID, READY, SKIPPED, SKIPPED_RUN, Result, skip_runs

REASONS = ["page", "screen", "track:Viewed"]


def result(line: int, kind: str) -> Result:
    if kind in REASONS:
        return (line, 0, SKIPPED, None, kind, None, (), None, 0, None)
    if kind == "token-lookup":  # skipped, but the run may prepare it again: not in a run
        return (line, 0, SKIPPED, b"{}", "page", None, ((("o", "t"), False),), None, 0, None)
    code = READY if kind == "ready" else INVALID
    return (line, 0, code, b"{}", [], None, (), None, 0, None)


@given(st.lists(st.sampled_from([*REASONS, "ready", "invalid", "token-lookup"]), max_size=60))
def test_runs_of_skipped_records_count_as_their_records_and_keep_the_order(
    kinds: list[str],
) -> None:
    results = [result(line, kind) for line, kind in enumerate(kinds, 1)]
    taken = skip_runs(results)
    # By hand: a run is a stretch of plain skipped records between two others.
    expected: list[tuple[str, int, Counter[str]]] = []
    for line, kind in enumerate(kinds, 1):
        if kind in REASONS:
            if expected and expected[-1][0] == "run":
                reasons = expected[-1][2]
                reasons[kind] += 1
                expected[-1] = ("run", line, reasons)
            else:
                expected.append(("run", line, Counter({kind: 1})))
        else:
            expected.append(("one", line, Counter()))
    found: list[tuple[str, int, Counter[str]]] = []
    for item in taken:
        if item[2] == SKIPPED_RUN:
            assert item[5] == sum(item[4].values())  # the count is the records in it
            found.append(("run", item[0], Counter(item[4])))
        else:
            found.append(("one", item[0], Counter()))
    assert found == expected
    # Every record is in exactly one result.
    assert sum(i[5] if i[2] == SKIPPED_RUN else 1 for i in taken) == len(kinds)
