"""messageId dedupe (`ctsync.dedupe`): the store of sent messageIds against a plain
Python model, and the rules of a run (what is skipped, what is forgotten, --workers)
against expectations written by hand."""

from __future__ import annotations

import asyncio
import io
import random
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from xxhash import xxh3_64_intdigest

from ctsync import dedupe
from ctsync.api import Outputs, UploadJob, upload
from ctsync.dedupe import DUPLICATE_MESSAGE_ID, PROBE, MessageIds, day_of, entry, forgotten
from ctsync.errors import UsageError
from ctsync.ledger import Ledger
from ctsync.presets import Preset
from ctsync.reader import Source
from ctsync.run import DryRunSender, RunOptions, UploadRun
from ctsync.run.stage import Recipe
from ctsync.run.workers import WorkerPool, Workers
from ctsync.settings import ClientSettings
from ctsync.state import StateFile
from tests.helpers import CleverTap, assert_accounted, examples

DAY_MS = 86_400_000
NOW_MS = 1_750_000_000_000  # the store's clock in these tests (June 2025)
NOW_DAY = NOW_MS // DAY_MS  # its day, as the store counts days (since 1970-01-01)
GROUPS = ("a.ndjson", "b.ndjson")

# 64-bit keys, few (so that one is remembered, written, forgotten and written again),
# some sharing their low or high 32 bits (the filter's two bits).
KEYS = st.one_of(
    st.sampled_from([0, 1, -1, 2**32, 2**32 + 1, -(2**32), 2**63 - 1, -(2**63), 7 << 32 | 7]),
    st.integers(-(2**63), 2**63 - 1),
)


class StoreAgainstModel(RuleBasedStateMachine):
    """A `MessageIds` in a state file, with a filter small enough to collide and grow,
    against what it promises: in a run, an id is seen from `remember` until `forget`;
    a later run sees what was written with its group's progress (`write`, in the state's
    transaction), never what was not; a run that closes forgets ids older than the
    window before the newest timestamp seen."""

    @initialize()
    def open(self) -> None:
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.window = 10 * DAY_MS
        # The model: the ids this run sees, by key (timestamp, group); what the state
        # file holds (what a later run sees); the newest timestamp persisted.
        self.live: dict[int, tuple[int, str]] = {}
        self.durable: dict[int, int] = {}
        self.newest_durable: int | None = None
        self.newest: int | None = None
        self.forgotten: dict[str, set[int]] = {}
        self.known: set[int] = set()
        self.store = self._open_store()

    def _open_store(self) -> MessageIds:
        return MessageIds(
            self.db,
            window_ms=self.window,
            persistent=True,
            clock=lambda: NOW_MS / 1000,
            min_bits=64,
        )

    @rule(key=KEYS, days=st.integers(0, 40), group=st.sampled_from(GROUPS))
    def remember(self, key: int, days: int, group: str) -> None:
        self.known.add(key)
        # The pipeline never plans a copy of a message it remembers, but it plans again
        # a record an earlier run left pending (remembered "earlier").
        if key in self.live and self.live[key][1] != "earlier":
            return
        day = NOW_DAY - days
        self.store.remember(key, day, group)
        self.live[key] = (day, group)
        self.newest = day if self.newest is None else max(self.newest, day)

    @rule(
        entries=st.lists(
            st.tuples(st.one_of(st.none(), KEYS), st.one_of(st.none(), st.integers(0, 40))),
            max_size=8,
        ),
        group=st.sampled_from(GROUPS),
    )
    def claim_all(self, entries: list[tuple[int | None, int | None]], group: str) -> None:
        """A block's plain records claimed in one call (`claim_all`): a copy is an entry
        whose id is seen at its turn (an earlier entry of the same call included); the
        others are remembered, a message without a timestamp at the newest day seen (which
        it does not move)."""
        self._claim_all(entries, group)

    @rule(
        entries=st.lists(st.tuples(KEYS, st.integers(0, 40)), min_size=2, max_size=12),
        group=st.sampled_from(GROUPS),
    )
    def claim_all_dated(self, entries: list[tuple[int | None, int | None]], group: str) -> None:
        """The same with every entry keyed and dated, as most blocks are: the store's
        path for whole stretches of them (`_claim_many`), whose filter fills and grows
        within one call."""
        self._claim_all(entries, group)

    def _claim_all(self, entries: list[tuple[int | None, int | None]], group: str) -> None:
        keys = [key for key, _ in entries]
        days = [None if days is None else NOW_DAY - days for _, days in entries]
        probes = [0 if key is None else key & PROBE for key in keys]
        copies = self.store.claim_all(keys, probes, days, group)
        expected = []
        for n, (key, day) in enumerate(zip(keys, days, strict=True)):
            if key is None:
                continue
            self.known.add(key)
            if key in self.live:
                expected.append(n)
                continue
            if day is None:  # it moves no window: the newest day seen stays
                self.live[key] = (self.newest if self.newest is not None else NOW_DAY, group)
                continue
            self.live[key] = (day, group)
            self.newest = day if self.newest is None else max(self.newest, day)
        assert copies == expected

    @precondition(lambda self: any(group != "earlier" for _, group in self.live.values()))
    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        # Only a record planned in this run gets its final verdict in it.
        planned = sorted(key for key, (_, group) in self.live.items() if group != "earlier")
        key = data.draw(st.sampled_from(planned))
        _, group = self.live.pop(key)
        self.store.forget(key, group)
        self.forgotten.setdefault(group, set()).add(key)

    @rule(group=st.sampled_from(GROUPS))
    def write(self, group: str) -> None:
        self.db.execute("BEGIN")
        self.store.write(group)
        self.db.execute("COMMIT")
        for key, (ms, owner) in self.live.items():
            if owner == group:
                self.durable[key] = ms
        for key in self.forgotten.pop(group, set()):
            if key not in self.live:
                self.durable.pop(key, None)

    @rule()
    def killed_then_next_run(self) -> None:
        """The process dies: nothing more is written; the next run opens the file."""
        self.store = self._open_store()
        self.live = {key: (ms, "earlier") for key, ms in self.durable.items()}
        self.forgotten = {}
        self.newest = self.newest_durable

    @rule()
    def closed_then_next_run(self) -> None:
        """The run ends: ids older than the window before the newest are forgotten."""
        self.store.close()
        if self.newest is not None:  # days, against a window in milliseconds
            cutoff = self.newest * DAY_MS - self.window
            self.durable = {k: day for k, day in self.durable.items() if day * DAY_MS >= cutoff}
            self.newest_durable = self.newest
        self.killed_then_next_run()

    @invariant()
    def seen_is_what_is_remembered(self) -> None:
        for key in [*getattr(self, "known", ()), 12345, -(2**40)]:
            assert self.store.seen(key) == (key in self.live), key

    def teardown(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


TestStoreAgainstModel = StoreAgainstModel.TestCase
TestStoreAgainstModel.settings = settings(max_examples=examples(200), stateful_step_count=40)


# Keys at the edges of the sorted arrays (one per top byte, in signed order), which a
# uniform draw almost never meets.
SHELF_EDGES = st.builds(
    lambda top, side: max(-(2**63), min(2**63 - 1, (top << 56) + side)),
    st.one_of(st.sampled_from([-128, -127, -1, 0, 1, 127, 128]), st.integers(-128, 128)),
    st.sampled_from([-1, 0, 1]),
)


@example(  # an id in each array at the edges of the signed order, and in both middle ones
    steps=[(True, k) for k in (-(2**63), 2**63 - 1, -1, 0, 1 << 56, (1 << 56) - 1, -(1 << 56))]
)
@given(steps=st.lists(st.tuples(st.booleans(), st.one_of(KEYS, SHELF_EDGES)), max_size=120))
def test_without_a_state_file_every_id_planned_and_not_forgotten_is_seen(
    steps: list[tuple[bool, int]],
) -> None:
    """Without a state file, ids pile up in memory, go to the sorted arrays five at a
    time here and to the table past twelve, while the filter (64 bits) grows: every id
    remembered and not forgotten is seen, every other not, whatever the moment of the
    moves (an id forgotten after one of them, then planned again, included)."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    with mock.patch.multiple(dedupe, WRITE_AT=5, SHELVED_AT_MOST=12):
        store = MessageIds(db, window_ms=DAY_MS, persistent=False, min_bits=64)
        live: set[int] = set()
        ever: list[int] = []
        batch: list[int] = []  # keys claimed in one call (`claim_all`) by every fourth step
        for remember, key in steps:
            if remember and key % 4 == 1:
                batch.append(key)
                if len(batch) < 3:
                    continue
                # Dated or not: the store claims dated stretches in one step each.
                days = [NOW_DAY] * 3 if batch[0] % 8 == 1 else [None] * 3
                copies = store.claim_all(list(batch), [k & PROBE for k in batch], days, None)
                expected = []
                for n, claimed in enumerate(batch):
                    if claimed in live:
                        expected.append(n)
                    else:
                        live.add(claimed)
                        ever.append(claimed)
                assert copies == expected
                batch.clear()
            elif remember:
                # A key met before, now and then: forgotten ones are planned again.
                key = ever[key % len(ever)] if ever and key % 3 == 0 else key
                if key not in live:
                    store.remember(key, NOW_DAY, None)
                    live.add(key)
                    ever.append(key)
            elif live:
                gone = sorted(live)[key % len(live)]
                store.forget(gone, None)
                live.discard(gone)
            for known in [*ever, key]:
                assert store.seen(known) == (known in live), known
        assert len(store) == len(live)


def test_an_id_planned_again_by_a_resumed_run_is_kept_with_its_new_day() -> None:
    """A record an earlier run left pending is planned again (`remember`): its id, in the
    table from that run with that run's day, is written again with the day it has now,
    so the window counts from it (not from the earlier day, which would let it go)."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    window = 10 * DAY_MS

    def opened() -> MessageIds:
        return MessageIds(
            db, window_ms=window, persistent=True, clock=lambda: NOW_MS / 1000, min_bits=64
        )

    store = opened()
    store.remember(7, NOW_DAY - 20, "a")
    db.execute("BEGIN")
    store.write("a")
    db.execute("COMMIT")
    store.close()
    store = opened()  # the resumed run: the same id, now with a day inside the window
    store.remember(7, NOW_DAY, "a")
    store.remember(8, NOW_DAY, "a")  # a new id of today: the newest day seen
    db.execute("BEGIN")
    store.write("a")
    db.execute("COMMIT")
    store.close()  # the newest day is now: an id 20 days older would be forgotten
    again = opened()
    assert again.seen(7) and again.seen(8)


def _store(db: sqlite3.Connection) -> MessageIds:
    """A store in a state file, at NOW_MS, with a window of 10 days."""
    return MessageIds(
        db, window_ms=10 * DAY_MS, persistent=True, clock=lambda: NOW_MS / 1000, min_bits=64
    )


def _closed_and_opened_again(db: sqlite3.Connection, store: MessageIds) -> MessageIds:
    db.execute("BEGIN")
    store.write("a")
    db.execute("COMMIT")
    store.close()
    return _store(db)


def test_a_copy_in_the_same_call_leaves_the_first_messages_day() -> None:
    # An id met twice in one block: the second is a copy, and the day kept is the first
    # message's, 30 days before the newest: the run's end forgets it (a window of 10).
    db = sqlite3.connect(":memory:", isolation_level=None)
    store = _store(db)
    keys = [1, 1, 2]
    assert store.claim_all(
        keys, [k & PROBE for k in keys], [NOW_DAY - 30, NOW_DAY, NOW_DAY], "a"
    ) == [1]
    again = _closed_and_opened_again(db, store)
    assert not again.seen(1)
    assert again.seen(2)


def test_a_copy_in_the_same_call_does_not_move_the_window() -> None:
    # The copy is the newest message of the call, but nothing of it is remembered: the
    # newest day is the second id's, and both ids stay within the window from it.
    db = sqlite3.connect(":memory:", isolation_level=None)
    store = _store(db)
    keys = [1, 2, 1]
    days = [NOW_DAY - 30, NOW_DAY - 25, NOW_DAY]
    assert store.claim_all(keys, [k & PROBE for k in keys], days, "a") == [2]
    again = _closed_and_opened_again(db, store)
    assert again.seen(1)
    assert again.seen(2)


def test_a_day_past_tomorrow_in_a_call_moves_the_window_only_to_tomorrow() -> None:
    # One message stamped years ahead must not make the others look old.
    db = sqlite3.connect(":memory:", isolation_level=None)
    store = _store(db)
    keys = [3, 4]
    assert (
        store.claim_all(keys, [k & PROBE for k in keys], [NOW_DAY - 5, NOW_DAY + 1000], "a") == []
    )
    again = _closed_and_opened_again(db, store)
    assert again.seen(3)
    assert again.seen(4)


def test_ids_claimed_in_one_call_stay_seen_when_memory_moves_them_midway() -> None:
    """Without a state file, ids move out of memory every few claims: a `claim_all` of
    many keys crosses several moves (and growths of the filter), and every key stays seen,
    every repeat is a copy."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    with mock.patch.multiple(dedupe, WRITE_AT=2, SHELVED_AT_MOST=6):
        store = MessageIds(db, window_ms=DAY_MS, persistent=False, min_bits=64)
        keys = [n * 0x9E3779B97F4A7C15 % 2**63 for n in range(1, 40)]
        entries = keys + keys[:5]
        copies = store.claim_all(entries, [k & PROBE for k in entries], [NOW_DAY] * 44, None)
        assert copies == list(range(39, 44))
        assert all(store.seen(key) for key in keys)
        assert len(store) == len(keys)


def test_a_store_without_a_state_file_is_private_and_moves_its_ids_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MessageIds.temporary` (a run without --state): no file where the run was
    started, and ids leave the dict in memory for the arrays, then the table."""
    monkeypatch.chdir(tmp_path)
    keys = [n << 33 | n for n in range(1, 30)]
    with mock.patch.multiple(dedupe, WRITE_AT=4, SHELVED_AT_MOST=10):
        store = MessageIds.temporary(DAY_MS)
        for key in keys:
            store.remember(key, NOW_DAY, None)
        assert sum(len(fresh) for fresh in store._fresh.values()) < 4
        assert store._db.execute("SELECT count(*) FROM message_ids").fetchone()[0] > 10
        assert all(store.seen(key) for key in keys) and not store.seen(12345)
        store.close()
    assert list(tmp_path.iterdir()) == []


def test_without_a_state_file_ids_go_to_the_table_only_past_the_shelves() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    with mock.patch.multiple(dedupe, WRITE_AT=5, SHELVED_AT_MOST=8):
        store = MessageIds(db, window_ms=DAY_MS, persistent=False, min_bits=64)
        in_table = []
        for key in range(1, 13):
            store.remember(key * 7919 << 32 | key, NOW_DAY, None)
            in_table.append(db.execute("SELECT count(*) FROM message_ids").fetchone()[0])
        # Five at a time to the arrays (the filter grows at the ninth id), all ten to
        # the table once the arrays hold more than eight.
        assert in_table == [0] * 9 + [10, 10, 10]
        assert all(store.seen(key * 7919 << 32 | key) for key in range(1, 13))
        assert not store.seen(13 * 7919 << 32 | 13)
        assert len(store) == 12


def test_without_a_state_file_an_id_forgotten_in_the_table_and_planned_again_counts_once() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    keys = [n << 40 | n for n in range(1, 7)]
    with mock.patch.multiple(dedupe, WRITE_AT=2, SHELVED_AT_MOST=3):
        store = MessageIds(db, window_ms=DAY_MS, persistent=False, min_bits=64)
        for key in keys[:4]:  # to the arrays two at a time, then all four to the table
            store.remember(key, NOW_DAY, None)
        assert db.execute("SELECT count(*) FROM message_ids").fetchone()[0] == 4
        store.forget(keys[0], None)
        store.remember(keys[0], NOW_DAY, None)  # refused, then a copy sent
        store.remember(keys[4], NOW_DAY, None)  # the two go to the arrays
        store.forget(keys[1], None)  # refused: a copy may go
        assert [store.seen(key) for key in keys] == [True, False, True, True, True, False]
        assert len(store) == 4  # keys 1, 3, 4, 5: each once
        assert [store.seen(key) for key in keys] == [True, False, True, True, True, False]


def test_without_a_state_file_an_id_refused_on_the_shelves_and_sent_again_counts_once() -> None:
    """Refused while on the sorted arrays, then a copy sent before the next move: the
    id is kept once, and forgotten for good when refused again."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    keys = [n << 40 | n for n in range(1, 7)]
    with mock.patch.multiple(dedupe, WRITE_AT=2, SHELVED_AT_MOST=100):
        store = MessageIds(db, window_ms=DAY_MS, persistent=False, min_bits=64)
        for key in keys[:2]:  # both to the arrays
            store.remember(key, NOW_DAY, None)
        store.forget(keys[0], None)
        store.remember(keys[0], NOW_DAY, None)  # the copy, before the move takes it out
        store.remember(keys[2], NOW_DAY, None)  # the move: keys 1 and 3 to the arrays
        assert len(store) == 3
        assert [store.seen(key) for key in keys] == [True, True, True, False, False, False]
        store.forget(keys[0], None)  # refused again: no copy of it is left behind
        assert len(store) == 2
        assert [store.seen(key) for key in keys] == [False, True, True, False, False, False]


def test_an_id_forgotten_in_one_input_and_planned_again_from_another_stays() -> None:
    """A copy sent after its first was refused: the refusal is written with the first
    input's progress, the copy with the second's, in either order."""
    for order in (("a", "b"), ("b", "a")):
        db = sqlite3.connect(":memory:", isolation_level=None)
        store = MessageIds(db, window_ms=DAY_MS, persistent=True, min_bits=64)
        store.remember(42, NOW_DAY, "a")
        store.forget(42, "a")
        store.remember(42, NOW_DAY, "b")
        for group in order:
            db.execute("BEGIN")
            store.write(group)
            db.execute("COMMIT")
        assert MessageIds(db, window_ms=DAY_MS, persistent=True).seen(42), order


def test_an_id_refused_in_one_input_then_in_another_is_forgotten_whichever_is_written() -> None:
    """Sent from input a (and written with a's progress), refused; a copy from input b
    sent, refused too. Whichever input's progress is written, and if the run is killed
    before the other's, the next run remembers neither: no copy went through (found by
    the store's model: a's taking-out was put off for b's copy, then lost)."""
    for written in (("a",), ("b",), ("a", "b"), ("b", "a")):
        db = sqlite3.connect(":memory:", isolation_level=None)
        store = MessageIds(db, window_ms=DAY_MS, persistent=True, min_bits=64)
        store.remember(42, NOW_DAY, "a")
        db.execute("BEGIN")
        store.write("a")
        db.execute("COMMIT")
        store.forget(42, "a")
        store.remember(42, NOW_DAY, "b")
        store.forget(42, "b")
        assert not store.seen(42)
        for group in written:
            db.execute("BEGIN")
            store.write(group)
            db.execute("COMMIT")
        assert not MessageIds(db, window_ms=DAY_MS, persistent=True).seen(42), written


def test_a_run_that_ends_forgets_ids_older_than_the_window_before_the_newest() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    store = MessageIds(db, window_ms=10 * DAY_MS, persistent=True, clock=lambda: NOW_MS / 1000)
    stamps = {1: NOW_DAY - 10, 2: NOW_DAY - 11, 3: NOW_DAY, 4: None}
    stamps[6] = NOW_DAY - 9  # exactly the window before the newest: kept
    for key, day in stamps.items():
        store.remember(key, day, "a")
    store.remember(5, NOW_DAY + 400, "a")  # a clock far ahead does not count
    db.execute("BEGIN")
    store.write("a")
    db.execute("COMMIT")
    store.close()
    later = MessageIds(db, window_ms=10 * DAY_MS, persistent=True, clock=lambda: NOW_MS / 1000)
    # The newest counted is a day past the clock: 1 and 2 are then 11 and 12 days older;
    # 4, without a timestamp, counts as the newest seen before it.
    assert [key for key in range(1, 7) if later.seen(key)] == [3, 4, 5, 6]


def test_a_message_without_a_timestamp_counts_as_stamped_the_day_it_was_sent() -> None:
    """The first message of a run has no timestamp (and nothing newer was seen): it is
    remembered as of the run's day, so a run 40 days later forgets it (window 10)."""
    db = sqlite3.connect(":memory:", isolation_level=None)

    def run(clock_ms: int) -> MessageIds:
        return MessageIds(db, window_ms=10 * DAY_MS, persistent=True, clock=lambda: clock_ms / 1000)

    first = run(NOW_MS)
    first.remember(7, None, "a")
    db.execute("BEGIN")
    first.write("a")
    db.execute("COMMIT")
    first.close()
    assert run(NOW_MS).seen(7)
    later = run(NOW_MS + 40 * DAY_MS)
    later.remember(8, NOW_DAY + 40, "a")
    db.execute("BEGIN")
    later.write("a")
    db.execute("COMMIT")
    later.close()
    assert [key for key in (7, 8) if run(NOW_MS + 40 * DAY_MS).seen(key)] == [8]


def test_the_filter_leaves_few_new_messages_to_the_exact_answer() -> None:
    """At 16 bits of filter an id, about 2% of messages never seen need the exact answer
    (a look in memory or a query): the filter is what keeps dedupe cheap."""
    rng = random.Random(7)
    db = sqlite3.connect(":memory:", isolation_level=None)
    store = MessageIds(db, window_ms=DAY_MS, persistent=True, min_bits=4096 * 16)
    for _ in range(4096):
        store.remember(rng.getrandbits(63), NOW_DAY, "a")
    new = [rng.getrandbits(63) for _ in range(20_000)]
    asked = mock.patch.object(MessageIds, "_held", autospec=True, return_value=False)
    with asked as held:
        assert not any(store.seen(key) for key in new)
    assert 0.005 < held.call_count / len(new) < 0.03
    with asked as held:  # the intake's one call: look, and remember (the filter fills up)
        assert not any(store.claim(key, key & PROBE, NOW_DAY, "a") for key in new[:2000])
    assert held.call_count / 2000 < 0.06  # 6,096 ids at the end: 10.7 bits an id


# -- the key ---------------------------------------------------------------------------


@given(st.text(min_size=1), st.text(min_size=1))
def test_a_key_is_a_63_bit_function_of_the_messageid_alone(a: str, b: str) -> None:
    """What SQLite's signed INTEGER holds, the same for the same messageId whatever else
    the message says; its probe is its low 30 bits; its day is its timestamp's."""
    found = entry({"messageId": a, "timestamp": "2024-05-01T00:00:00Z"})
    assert found is not None
    key_a, probe_a, day_a = found
    assert 0 <= key_a < 2**63
    assert probe_a == key_a % 2**30 and PROBE == 2**30 - 1
    assert day_a == 19_844  # 2024-05-01: 1,714,521,600 s after 1970-01-01, / 86,400
    assert key_a == xxh3_64_intdigest(a.encode("utf-8", "surrogatepass")) >> 1  # state files
    again = entry({"messageId": a, "type": "track"})
    assert again == (key_a, probe_a, None)
    key_b = entry({"messageId": b})
    assert key_b is not None
    assert (key_a == key_b[0]) == (a == b)  # 2^-63 odds of a collision per pair


@pytest.mark.parametrize("value", [None, "", 12, ["m"], {"id": "m"}])
def test_a_message_without_a_messageid_string_has_no_key(value: Any) -> None:
    assert entry({"messageId": value}) is None
    assert entry({}) is None


@pytest.mark.parametrize(
    ("outcome", "code", "forget"),
    [
        ("accepted", "", False),
        ("rejected", "509", True),
        ("failed", "http-500", True),
        ("failed", "retries-exhausted", True),
        ("failed", "outcome-unknown", False),
        ("failed", "aborted", False),
        ("failed", "interrupted", False),
        ("failed", "disk-full", False),
        ("failed", "output-error", False),
    ],
)
def test_refused_and_failed_records_are_forgotten_unknown_ones_not(
    outcome: str, code: str, forget: bool
) -> None:
    assert forgotten(outcome, code) is forget


# -- a run -----------------------------------------------------------------------------


def track(seq: int, message_id: str | None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": "Played",
        "userId": f"u-{seq % 7}",
        "timestamp": "2024-05-01T12:00:00Z",
        "properties": {"seq": seq},
        **extra,
    }
    if message_id is not None:
        message["messageId"] = message_id
    return message


def dry_run(
    path: Path, tmp_path: Path, *, workers: int = 1, dedupe: bool = True
) -> tuple[Any, list[int]]:
    """A dry run of `path`; its summary and the `seq` of every event it would send."""
    output = tmp_path / f"requests-{workers}-{dedupe}.ndjson"
    output.unlink(missing_ok=True)
    job = UploadJob(
        paths=[str(path)],
        preset=Preset.CLASSIC,
        run=RunOptions(dedupe=dedupe, batch_size=7),
        workers=workers,
        outputs=Outputs(requests=output),
    )
    summary = upload(job)
    assert_accounted(summary)
    sent = [
        record["evtData"]["seq"]
        for line in output.read_bytes().splitlines()
        for record in orjson.loads(line)["body"]["d"]
        if record.get("type") == "event"
    ]
    return summary, sent


ID_OF = st.one_of(st.none(), st.sampled_from([f"m{i}" for i in range(8)]))


@given(ids=st.lists(ID_OF, max_size=40))
@settings(max_examples=examples(100))
def test_the_first_copy_of_each_messageid_is_sent_and_the_others_skipped(
    tmp_path_factory: pytest.TempPathFactory, ids: list[str | None]
) -> None:
    tmp = tmp_path_factory.mktemp("dedupe")
    export = tmp / "export.ndjson"
    export.write_bytes(b"".join(orjson.dumps(track(i, m)) + b"\n" for i, m in enumerate(ids)))
    # By hand: the first copy of each messageId, and every message without one.
    first: dict[str, int] = {}
    expected = []
    for seq, message_id in enumerate(ids):
        if message_id is None or message_id not in first:
            expected.append(seq)
            if message_id is not None:
                first[message_id] = seq
    summary, sent = dry_run(export, tmp)
    assert sorted(sent) == expected
    assert summary.skipped.get(DUPLICATE_MESSAGE_ID, 0) == len(ids) - len(expected)
    everything, sent_all = dry_run(export, tmp, dedupe=False)
    assert sorted(sent_all) == list(range(len(ids)))
    assert DUPLICATE_MESSAGE_ID not in everything.skipped


def test_the_state_table_is_made_in_an_older_state_file(tmp_path: Path) -> None:
    """A state file written before dedupe has no table: it is made, and the file opens."""
    path = tmp_path / "old.db"
    StateFile(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS message_ids")
        db.execute("DROP TABLE IF EXISTS message_ids_newest")
    state = StateFile(path)
    try:
        ids = state.message_ids(30 * DAY_MS)
        assert not ids.seen(1)
        ids.close()
    finally:
        state.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_later_run_sends_again_a_message_older_than_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: ClientSettings, workers: int
) -> None:
    """Each message is remembered with its own timestamp's day (read where it is
    prepared, in a worker with --workers 2): the newest is 2024-05-01, so with a window
    of 30 days the message of 2024-03-01 is forgotten when the run ends, and its copy
    in the next run on the same state is sent; the copy of the newer one is not."""
    monkeypatch.setenv("CTSYNC_WORKER_START_AFTER", "0")  # workers even for two lines
    old = track(1, "m-old", timestamp="2024-03-01T08:00:00Z")  # userId u-1
    new = track(2, "m-new", timestamp="2024-05-01T08:00:00Z")  # userId u-2
    export = tmp_path / "export.ndjson"
    export.write_bytes(orjson.dumps(old) + b"\n" + orjson.dumps(new) + b"\n")
    copies = tmp_path / "copies.ndjson"
    copies.write_bytes(orjson.dumps(new) + b"\n" + orjson.dumps(old) + b"\n")
    sent = []
    for path in (export, copies):
        server = CleverTap()
        job = UploadJob(
            paths=[str(path)],
            preset=Preset.CLASSIC,
            client=settings,
            run=RunOptions(dedupe_window_days=30),
            workers=workers,
            state=tmp_path / "state.db",
        )
        summary = upload(job, transport=server.transport())
        assert_accounted(summary)
        sent.append(sorted(server.received))
    assert sent == [["u-1", "u-2"], ["u-1"]]


# -- --workers -------------------------------------------------------------------------


def message_line(draw: st.DrawFn, seq: int) -> bytes:
    """A Segment message, often sharing its messageId with others: a track, an identify
    (with a device token, sometimes), one that strict validation refuses, or no JSON."""
    kind = draw(st.sampled_from(["track", "track", "identify", "refused", "broken"]))
    if kind == "broken":
        return b'{"type": "track", "messageId": "m1"'
    message: dict[str, Any] = {
        "type": "track" if kind != "identify" else "identify",
        "timestamp": draw(st.sampled_from(["2024-05-01T12:00:00Z", "2024-03-01", "soon"])),
        "userId": f"u-{seq % 3}",
    }
    message_id = draw(ID_OF)
    if message_id is not None:
        message["messageId"] = message_id
    if kind == "identify":
        message["traits"] = {"plan": f"p{seq}"}
        if draw(st.booleans()):
            message["context"] = {"device": {"token": "tok-1", "type": "android"}}
    else:
        message["event"] = "Played" if kind == "track" else "x" * 600  # too long: refused
        message["properties"] = {"seq": seq}
    return orjson.dumps(message)


@st.composite
def exports_with_copies(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 30))
    return b"".join(message_line(draw, seq) + b"\n" for seq in range(count))


def run_with(
    export: Path, workers: Workers | None, built: Recipe
) -> tuple[list[bytes], dict[str, Any], bytes]:
    requests, report = io.BytesIO(), io.BytesIO()
    tokens: set[tuple[str, str]] = set()
    ledger = Ledger(report=report, dry_run=True, run="the-run")
    ids = MessageIds.temporary(30 * DAY_MS)
    run = UploadRun(
        [Source(str(export), export, export.stat().st_size, max_line_bytes=1024)],
        mapper=built.mapper(tokens),
        tokens=tokens,
        sender=DryRunSender(requests),
        ledger=ledger,
        options=RunOptions(batch_size=3, lanes=2),
        validator=built.validator(),
        workers=workers,
        message_ids=ids,
    )
    try:
        summary = asyncio.run(run.run())
    finally:
        ids.close()
    found = summary.as_dict()
    del found["elapsed_seconds"], found["cpu_seconds"]
    return sorted(requests.getvalue().splitlines()), found, report.getvalue()


@settings(
    max_examples=examples(100),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=exports_with_copies(), block_bytes=st.integers(1, 2000), in_flight=st.integers(1, 3))
def test_two_workers_skip_the_same_copies_as_one_process(
    tmp_path_factory: pytest.TempPathFactory,
    worker_pool: WorkerPool,
    data: bytes,
    block_bytes: int,
    in_flight: int,
) -> None:
    """The first copy in input order is sent, whichever process prepared which copy: the
    same requests, report and summary as one process (the token of an identify
    included: its copy is skipped before its token is counted as sent)."""
    export = tmp_path_factory.mktemp("copies") / "export.ndjson"
    export.write_bytes(data)
    built = UploadJob(preset=Preset.CLASSIC).recipe
    one = run_with(export, None, built)
    workers = Workers(
        count=2, recipe=built, block_bytes=block_bytes, start_after=0, in_flight=in_flight,
        pool=worker_pool,
    )  # fmt: skip
    two = run_with(export, workers, built)
    assert two[0] == one[0], "the requests differ"
    assert two[2] == one[2], "the report differs"
    assert two[1] == one[1], "the summary differs"
    read = one[1]["read"]
    assert read == sum(one[1][k] for k in ("skipped", "invalid", "accepted", "rejected", "failed"))


@pytest.mark.parametrize(
    ("timestamp", "day"),
    [
        ("2024-05-01T12:00:00Z", "2024-05-01"),
        ("2024-05-01T23:59:59.999-08:00", "2024-05-01"),  # the offset is not applied
        ("2024-05-01", "2024-05-01"),
        (1_714_608_000_123, "2024-05-02"),  # epoch milliseconds
        (1_714_608_000, "2024-05-02"),  # epoch seconds
        ("2024-13-01T00:00:00Z", None),
        ("soon", None),
        (None, None),
        ([], None),
        # Not strings, though their first ten items or characters name a day met before.
        (["2024-05-01T12:00:00Z"], None),
        ({"day": "2024-05-01"}, None),
        (True, None),
        (1_714_608_000.5, "2024-05-02"),  # epoch seconds with a fraction
        ("20240502", "2024-05-02"),  # ISO's basic form
    ],
)
def test_a_message_is_remembered_with_the_day_of_its_timestamp(
    timestamp: Any, day: str | None
) -> None:
    expected = None if day is None else (date.fromisoformat(day) - date(1970, 1, 1)).days
    day_of("2024-05-01T00:00:00Z")  # a day met before: answered from memory
    assert day_of(timestamp) == expected
    assert day_of(timestamp) == expected  # the second time too (a day is looked up once)
    found = entry({"messageId": "m", "timestamp": timestamp})
    assert found is not None and found[2] == expected  # the entry's day is the same


def test_a_messageid_with_a_lone_surrogate_has_a_key() -> None:
    key = entry({"messageId": "a\ud800b"})  # orjson refuses one; a caller may not
    assert key is not None and key != entry({"messageId": "ab"})


def test_a_dedupe_window_of_no_days_is_a_usage_error(tmp_path: Path) -> None:
    export = tmp_path / "export.ndjson"
    export.write_bytes(orjson.dumps(track(1, "m1")) + b"\n")
    job = UploadJob(paths=[str(export)], run=RunOptions(dedupe_window_days=0))
    with pytest.raises(UsageError, match="--dedupe-window"):
        upload(job)
