"""The store and the record checks on their own, without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctsync.sandbox import SandboxStore
from ctsync.sandbox._validation import check_upload

from ._support import event, profile

NOW = 1_709_700_000


def _upload(store: SandboxStore, records: list[Any]) -> None:
    store.apply_upload(check_upload(records, now=NOW))


def test_check_upload_sorts_records_and_keeps_positions() -> None:
    checked = check_upload(
        [profile("u1", Name="A"), event("u1"), {"type": "page"}, event("u2", ts="x")], now=NOW
    )
    assert checked.processed == 2
    assert [f["code"] for f in checked.unprocessed] == [524, 525]
    assert [f["error"][-1] for f in checked.unprocessed] == ["3", "4"]
    assert checked.events == [("identity", "u1", "Product Viewed", 1709632800, {"sku": "A1"})]
    assert checked.profiles == [("identity", "u1", 1709632800, {"Name": "A"})]


def test_a_record_without_ts_gets_now() -> None:
    record = event("u1")
    del record["ts"]
    assert check_upload([record], now=NOW).events[0][3] == NOW


def test_profiles_merge_in_order_around_deletes() -> None:
    store = SandboxStore.open()
    _upload(store, [profile("u1", a=1, b=1), profile("u2", a=1)])
    _upload(store, [profile("u1", b=2)])
    store.apply_delete("identity", ["u1"])
    _upload(store, [profile("u1", c=3)])
    _upload(store, [profile("u1", d=4), profile("u2", a=2)])
    u1, u2 = store.profile("u1"), store.profile("u2")
    assert u1 is not None and u2 is not None
    assert (dict(u1.data), u1.writes) == ({"c": 3, "d": 4}, 2)
    assert (dict(u2.data), u2.writes) == ({"a": 2}, 2)
    assert store.profile_records() == {"u1": 4, "u2": 2}
    assert store.deletions()[0].existed


def test_a_profile_written_many_times_reads_its_last_values_at_once() -> None:
    store = SandboxStore.open()
    for n in range(5):
        _upload(store, [profile("u1", n=n, **{f"k{n}": n})])
    stored = store.profile("u1")
    assert stored is not None
    assert (dict(stored.data), stored.writes) == (
        {"n": 4, "k0": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4},
        5,
    )
    assert (stored.last_seq, store.profile_records()) == (5, {"u1": 5})


def test_a_file_whose_writer_was_killed_holds_every_request_for_the_next_reader(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sandbox.db"
    writer = SandboxStore.open(db)
    _upload(writer, [profile("u1", a=1), event("u1")])
    _upload(writer, [profile("u1", a=2)])
    # No close(): as if the server had been killed.
    reader = SandboxStore.open(db, create=False)
    assert reader.profile_writes() == {"u1": 2}
    stored = reader.profile("u1")
    assert stored is not None and stored.data == {"a": 2}
    reader.close()
    _upload(writer, [event("u1")])
    writer.close()
    again = SandboxStore.open(db, create=False)
    assert [e.seq for e in again.events()] == [1, 4]
    again.close()


def test_reset_empties_everything() -> None:
    store = SandboxStore.open()
    _upload(store, [profile("u1", a=1), event("u1")])
    store.apply_delete("guid", ["g1"])
    store.reset()
    counts = store.counts()
    assert (counts.profiles, counts.events, counts.tokens, counts.deletions) == (0, 0, 0, 0)
    assert store.profile_records() == {}
    _upload(store, [event("u1")])
    assert store.events()[0].seq == 1


TOKEN = {"type": "token", "objectId": "g1", "tokenData": {"id": "t1", "type": "fcm"}}


@pytest.mark.parametrize("last", ["event", "profile", "token", "deletion"])
def test_a_reopened_file_numbers_on_after_its_last_record_of_any_kind(
    tmp_path: Path, last: str
) -> None:
    db = tmp_path / "sandbox.db"
    first = SandboxStore.open(db)
    _upload(first, [event("u1")])
    if last == "deletion":
        first.apply_delete("identity", ["u1"])
    else:
        _upload(first, [{"event": event("u1"), "profile": profile("u1"), "token": TOKEN}[last]])
    first.close()
    again = SandboxStore.open(db, create=False)
    _upload(again, [event("u2")])
    assert [e.seq for e in again.events("u2")] == [3]
    again.close()


# One step against the store: ("upload", [(identity, profileData), ...]) or ("delete", ids).
_identities = st.sampled_from(["u1", "u2", "u3"])
_data = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 9), max_size=3)
_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("upload"), st.lists(st.tuples(_identities, _data), min_size=1, max_size=4)
        ),
        st.tuples(st.just("delete"), st.lists(_identities, min_size=1, max_size=2)),
        st.tuples(st.just("read"), st.just([])),
    ),
    max_size=12,
)


@given(_steps)
def test_profiles_are_the_requests_applied_in_arrival_order(steps: list[tuple[str, Any]]) -> None:
    store = SandboxStore.open()
    expected: dict[str, dict[str, int]] = {}
    writes: dict[str, int] = {}
    for action, items in steps:
        if action == "upload":
            _upload(store, [profile(identity, **data) for identity, data in items])
            for identity, data in items:
                expected.setdefault(identity, {}).update(data)
                writes[identity] = writes.get(identity, 0) + 1
        elif action == "delete":
            store.apply_delete("identity", items)
            for identity in items:
                expected.pop(identity, None)
                writes.pop(identity, None)
        else:
            store.counts()  # a read between requests changes nothing
    stored = {p.identifier: dict(p.data) for p in store.profiles()}
    assert stored == expected
    assert store.profile_writes() == writes
