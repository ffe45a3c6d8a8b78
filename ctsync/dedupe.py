"""messageId dedupe: a message already sent is not sent again, in this run or a later one.

Segment's archives keep the copies of a message that its destinations drop, and exports
overlap; CleverTap never deduplicates events. So a message whose `messageId` this run or
an earlier run on the same `--state` sent (accepted by CleverTap, in flight, or with an
unknown outcome) is skipped as `duplicate-message-id`. A message refused or failed for
good is forgotten again, so a later copy, or a re-drive of `--failed`, is sent. A message
without a messageId is never deduplicated.

What is kept per message is compact: a 63-bit hash of its messageId (`entry`) and the
UTC day of its `timestamp`, in a SQLite table of the state file (without `--state`: the
first million ids in sorted arrays in memory, the rest in a private temporary database).
A Bloom filter in memory (at least 16 bits of filter per id, 16 MiB at most) answers
"never seen" for nearly every new message without a query; the table gives the exact
answer for the rest. The filter is blocked: an id sets three bits of one 16-bit word,
so a look costs one memory access (measured: 1.9% of new messages then need the exact
answer at 16 bits per id, against 1.4% with two bits anywhere).

The decision is made in the main process, in input order (`--workers` send each
record's entry back with it: its key, the key's `probe` of the filter, its day), and ids
are written with their input's progress in one transaction (`write`, called by
`StateFile.save`): a run killed at any moment leaves the state and the remembered ids
agreeing on what was read.

Ids whose message `timestamp` is more than the window older than the newest timestamp
seen (never later than a day from now, so that one message stamped in 2099 cannot make
every other one look old) are forgotten when a run ends.
"""

from __future__ import annotations

import sqlite3
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from datetime import date
from itertools import chain, combinations
from typing import Final, TypeAlias

from xxhash import xxh3_64_intdigest

from ctsync.ledger import RESUMED_LATER
from ctsync.model import UNKNOWN
from ctsync.records import Message
from ctsync.window import DAY_MS, message_time

DUPLICATE_MESSAGE_ID: Final = "duplicate-message-id"
"""The skip reason of a message whose messageId was sent already."""
DEFAULT_WINDOW_DAYS: Final = 30
FUTURE_MS: Final = DAY_MS
"""How far past the clock the newest timestamp may be when judging what is old."""
MIN_BITS: Final = 1 << 23
"""1 MiB: the filter first grows past a million ids (each growth sets every id again)."""
MAX_BITS: Final = 1 << 27  # 16 MiB: at 10M ids, 3% of new messages need a query
PROBE: Final = (1 << 30) - 1
"""A key's probe (`key & PROBE`, a small integer: the run's process does no arithmetic
on 63-bit integers): its low 23 bits pick the filter's word, its top 7 one of
`_MASKS`."""
_WORD_BITS: Final = 23  # 2^23 16-bit words: MAX_BITS
_MASKS: Final = tuple(
    sum(1 << bit for bit in three)
    for three in (list(combinations(range(16), 3))[t * 560 // 128] for t in range(128))
)
"""128 of the 560 ways to set three bits of sixteen, evenly spaced."""
BITS_PER_ID: Final = 8
"""The filter doubles when it holds fewer bits than this per id (16 after doubling)."""
WRITE_AT: Final = 1 << 16
"""Ids held in memory at most before they go to the table, when no state file decides."""
SHELVED_AT_MOST: Final = 1 << 20
"""Without a state file, ids kept in sorted arrays (8 bytes each: 8 MiB) before they go
to the table: a SQLite insert costs more than the rest of the dedupe of a message. (At
10M ids the process peaks 47 MB above its start with 2^20, 58 MB with 2^21, 38 MB with
every id in the table.)"""

Entry: TypeAlias = tuple[int, int, int | None]
"""What the run remembers of a message: its messageId's key (the XXH3 hash's top 63
bits: SQLite's INTEGER is signed), the key's probe, and its `timestamp`'s day
(`day_of`), computed where the message is prepared, for the messages that are sent."""
Group: TypeAlias = str | None
"""Whose progress the id is written with: an input's state key (None: no state file)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS message_ids (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS message_ids_newest (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    newest INTEGER NOT NULL
);
"""
_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()
_DAYS: dict[str, int] = {}


def entry(message: Message) -> Entry | None:
    """The entry of a message with a messageId (a non-empty string), else None. One
    call per message sent, in the record stage."""
    message_id = message.get("messageId")
    if type(message_id) is not str or not message_id:
        return None
    try:
        data = message_id.encode()
    except UnicodeEncodeError:  # a lone surrogate (orjson refuses them; other readers may not)
        data = message_id.encode("utf-8", "surrogatepass")
    key = xxh3_64_intdigest(data) >> 1  # XXH3: 0.1 µs, where BLAKE2b cost 0.5
    return key, key & PROBE, day_of(message.get("timestamp"))


def day_of(value: object) -> int | None:
    """The UTC day (days since 1970-01-01) of a message's `timestamp`: enough for a
    window of days, and a fifth of the cost of reading it to the millisecond (an ISO
    date-time's offset is not applied: a day either way)."""
    try:  # the common case: a day this run met before, a lookup
        return _DAYS[value[:10]]  # type: ignore[index]
    except (KeyError, TypeError):  # a new day, or no string (not sliceable, unhashable)
        return _new_day(value)


def _new_day(value: object) -> int | None:
    if type(value) is str:
        day = value[:10]
        if len(day) == 10 and day[4] == "-":
            try:
                found = date.fromisoformat(day).toordinal() - _EPOCH_DAY
            except ValueError:
                return None
            if len(_DAYS) < 4096:  # an archive spans few days: a lookup, not a parse
                _DAYS[day] = found
            return found
    ms = message_time(value)
    return None if ms is None else ms // DAY_MS


def forgotten(outcome: str, code: str) -> bool:
    """Whether a record's final verdict lets a later copy go: refused or failed for good.
    Accepted, an unknown outcome (CleverTap may have it) and a run that stopped first
    (`ledger.RESUMED_LATER`: aborted, interrupted, a full disk: the next run on the state
    sends the record itself) keep its messageId remembered."""
    return outcome == "rejected" or (
        outcome == "failed" and code != UNKNOWN and code not in RESUMED_LATER
    )


class MessageIds:
    """The messageIds sent: in flight, accepted or unknown, this run and earlier ones.

    `db` holds the table; with `persistent` (the state file) nothing is written but by
    `write`, inside the caller's transaction. Otherwise (a run without a state file) ids
    go, as they pile up, to sorted arrays in memory (the shelves, one per move of
    `WRITE_AT` ids), and only past `SHELVED_AT_MOST` of them to the table. Not thread-safe: the
    run's event loop thread only."""

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        window_ms: int,
        persistent: bool,
        clock: Callable[[], float] = time.time,
        min_bits: int = MIN_BITS,
    ) -> None:
        self._db = db
        self._min_bits = min_bits
        self._window_ms = window_ms
        self._persistent = persistent
        db.executescript(_SCHEMA)
        row = db.execute("SELECT newest FROM message_ids_newest").fetchone()
        # Days since 1970, as the record stage computes them (the table keeps epoch ms).
        self._newest: int | None = None if row is None else int(row[0]) // DAY_MS
        # Not yet in the table, and to take out of it, by the input they came from.
        self._fresh: dict[Group, dict[int, int]] = {}
        self._gone: dict[Group, set[int]] = {}
        # Ids forgotten in an input and planned again before that input was written: the
        # inputs whose taking-out the copy put off, should the copy be forgotten too.
        self._put_off: dict[int, list[Group]] = {}
        # Without a state file: ids moved out of memory (the shelves: one sorted array
        # per move), whether the table holds any, and the ids planned again after being
        # forgotten (the table may still hold them: they leave it when they are shelved).
        self._shelves: list[array[int]] = []
        self._shelved = 0
        self._again: set[int] = set()
        now = int(clock() * 1000)
        self._now = now // DAY_MS  # the day of a message without one, before any other
        self._latest = (now + FUTURE_MS) // DAY_MS
        count = db.execute("SELECT count(*) FROM message_ids").fetchone()[0]
        self._in_table = persistent or count > 0
        self._words = array("H")
        self._mask = 0  # of a probe's word
        self._in_filter = 0
        self._grow_at = 0
        self._room = self._room_was = 1  # remembered ids before `_upkeep` (`_set_room`)
        self._rebuild(count)

    @classmethod
    def temporary(cls, window_ms: int) -> MessageIds:
        """For a run without a state file: a private database SQLite deletes at close."""
        db = sqlite3.connect("", isolation_level=None)
        db.execute("PRAGMA journal_mode = OFF")  # nothing to recover: it ends with the run
        db.execute("PRAGMA synchronous = OFF")
        return cls(db, window_ms=window_ms, persistent=False)

    def __len__(self) -> int:
        """Ids remembered (a query: for tests and the end of a run)."""
        self._write_all()
        count: int = self._db.execute("SELECT count(*) FROM message_ids").fetchone()[0]
        return count + self._shelved

    # -- the hot path ------------------------------------------------------------------

    def seen(self, key: int) -> bool:
        """Whether a message with this key was sent and not forgotten."""
        probe = key & PROBE
        bits = _MASKS[probe >> _WORD_BITS]
        if self._words[probe & self._mask] & bits == bits:
            return self._held(key)
        return False  # the common case: a message never seen

    def claim(
        self, key: int, probe: int, day: int | None, group: Group, *, check: bool = True
    ) -> bool:
        """`seen`, and if not, `remember`: one call, and one look at the filter, for a
        message about to be planned. `probe` is `key & PROBE`, from the record stage:
        small integers cost a fraction of the 63-bit key's arithmetic. `check` False:
        remember it whatever the filter says (`remember`)."""
        return bool(self.claim_all((key,), (probe,), (day,), group, check=check))

    def claim_all(
        self,
        keys: Sequence[int | None],
        probes: Sequence[int],
        days: Sequence[int | None],
        group: Group,
        *,
        check: bool = True,
    ) -> list[int]:
        """Each entry in turn (None: a message without a messageId, never a copy): a copy
        of a message sent (the indexes returned), or remembered from now on. One call for
        a block's plain records (the intake's bulk path), one look at the filter each;
        `claim` is this for one entry."""
        copies: list[int] = []
        fresh = self._fresh.get(group)
        if fresh is None:
            fresh = self._fresh[group] = {}
        words, mask, masks, held = self._words, self._mask, _MASKS, self._held
        n = 0
        for key, probe, day in zip(keys, probes, days, strict=True):
            if key is None:
                n += 1
                continue
            at = probe & mask
            bits = masks[probe >> _WORD_BITS]
            have = words[at]
            if check and have & bits == bits and held(key):
                copies.append(n)
                n += 1
                continue
            newest = self._newest
            if day is None:
                day = self._now if newest is None else newest
            elif newest is None or day > newest:
                self._newest = day if day < self._latest else self._latest
            if self._gone:
                self._claimed_again(key)
            fresh[key] = day
            words[at] = have | bits
            self._room -= 1
            if not self._room:
                self._upkeep()
                words, mask = self._words, self._mask  # rebuilt when it grew
                fresh = self._fresh.get(group)
                if fresh is None:  # sent to the table (without a state file)
                    fresh = self._fresh[group] = {}
            n += 1
        return copies

    def _claimed_again(self, key: int) -> None:
        """A key claimed after an input forgot it: the earlier input takes it out again
        when it is written (it may be written first)."""
        for earlier, gone in self._gone.items():
            if key in gone:
                gone.discard(key)
                self._again.add(key)
                self._put_off.setdefault(key, []).append(earlier)

    def _held(self, key: int) -> bool:
        """The exact answer, for a key the filter may hold."""
        for fresh in self._fresh.values():
            if key in fresh:
                return True
        for gone in self._gone.values():
            if key in gone:
                return False
        if self._on_shelves(key):
            return True
        if not self._in_table:
            return False
        row = self._db.execute("SELECT 1 FROM message_ids WHERE id = ?", (key,)).fetchone()
        return row is not None

    def remember(self, key: int, day: int | None, group: Group) -> None:
        """A message with this key is planned (in flight from now on)."""
        self.claim(key, key & PROBE, day, group, check=False)

    def _upkeep(self) -> None:
        """Every `_room` ids remembered (one counter on the hot path, not two tests):
        grow the filter when it is full enough, and without a state file send the ids
        held in memory to the table."""
        self._in_filter += self._room_was
        if self._in_filter > self._grow_at:
            self._rebuild(self._in_filter)  # sets the room again
        if not self._persistent and self._pending() >= WRITE_AT:
            self._write_all()
        self._set_room()

    def _pending(self) -> int:
        return sum(len(fresh) for fresh in self._fresh.values())

    def _set_room(self) -> None:
        room = self._grow_at - self._in_filter + 1  # the filter grows past `_grow_at`
        if not self._persistent:
            room = min(room, WRITE_AT - self._pending())
        self._room = self._room_was = max(room, 1)

    def forget(self, key: int, group: Group) -> None:
        """The message with this key was refused or failed for good: a copy may go."""
        fresh = self._fresh.get(group)
        if fresh is not None:
            fresh.pop(key, None)
        # It may be in the table too (an earlier run planned it, this one resent it).
        self._gone.setdefault(group, set()).add(key)
        # A copy planned after an earlier one was forgotten, forgotten in turn: the
        # earlier input takes it out again when it is written (it may be written first).
        for earlier in self._put_off.pop(key, ()):
            self._gone.setdefault(earlier, set()).add(key)

    # -- writing -----------------------------------------------------------------------

    def write(self, group: Group) -> None:
        """Write the ids planned from one input, and take out those forgotten, in the
        caller's transaction (the state file's, with that input's progress)."""
        gone = self._gone.pop(group, None)
        if gone:
            self._db.executemany("DELETE FROM message_ids WHERE id = ?", ((k,) for k in gone))
        fresh = self._fresh.pop(group, None)
        if fresh:
            # In key order: the B-tree pages are then visited once each, in order, not
            # once per id at random (a large table does not fit SQLite's page cache).
            self._db.executemany(
                f"INSERT OR REPLACE INTO message_ids (id, ts) VALUES (?, ? * {DAY_MS})",
                sorted(fresh.items()),
            )

    def _write_all(self) -> None:
        if self._persistent:
            return  # only with each input's progress (see `write`)
        fresh = sorted(key for held in self._fresh.values() for key in held)
        gone: set[int] = set().union(*self._gone.values())
        again, self._again = self._again, set()
        leave = gone | {key for key in again if any(key in held for held in self._fresh.values())}
        self._fresh.clear()
        self._gone.clear()
        self._put_off.clear()
        if leave and self._in_table:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM message_ids WHERE id = ?", ((k,) for k in leave))
            self._db.execute("COMMIT")
        # The ids moved go to a shelf of their own, sorted: merging them into shelves by
        # key cost as much again as sorting them, every move. An exact look (a filter
        # hit) searches each shelf, at most SHELVED_AT_MOST / WRITE_AT of them. Shelves
        # holding an id forgotten since are filtered; no id is on two shelves.
        if gone:
            self._shelves = [
                array("q", [key for key in shelf if key not in gone])
                if any(_holds(shelf, key) for key in gone)
                else shelf
                for shelf in self._shelves
            ]
        if again and self._shelves:  # planned again after being forgotten: maybe shelved
            fresh = [key for key in fresh if key not in again or not self._on_shelves(key)]
        if fresh:
            self._shelves.append(array("q", fresh))
        self._shelved = sum(len(shelf) for shelf in self._shelves)
        if self._shelved > SHELVED_AT_MOST:
            self._db.execute("BEGIN")
            # In key order, as `write` does (timsort merges the sorted shelves).
            self._db.executemany(
                "INSERT OR REPLACE INTO message_ids (id, ts) VALUES (?, 0)",
                ((key,) for key in sorted(chain.from_iterable(self._shelves))),
            )
            self._db.execute("COMMIT")
            self._shelves = []
            self._shelved = 0
            self._in_table = True

    def _on_shelves(self, key: int) -> bool:
        return any(_holds(shelf, key) for shelf in self._shelves)

    def close(self) -> None:
        """With a state file, forget the ids that fell out of the window and keep the
        newest timestamp; ids never written with their input's progress are left out
        (the state does not count their records read). Without one, drop the table."""
        if self._persistent and self._newest is not None:
            try:
                self._db.execute("BEGIN")
                newest = self._newest * DAY_MS
                self._db.execute(
                    "DELETE FROM message_ids WHERE ts < ?", (newest - self._window_ms,)
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO message_ids_newest (one, newest) VALUES (1, ?)",
                    (newest,),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error:  # a full disk: the next run that ends forgets them
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        if not self._persistent:
            self._db.close()
            self._shelves = []
            self._shelved = 0
        self._fresh.clear()
        self._gone.clear()
        self._put_off.clear()

    # -- the filter --------------------------------------------------------------------

    def _rebuild(self, count: int) -> None:
        """A filter with at least twice `BITS_PER_ID` bits per id (within bounds), set
        from every id remembered."""
        size = self._min_bits
        while size < count * 2 * BITS_PER_ID and size < MAX_BITS:
            size *= 2
        words = array("H", bytes(size // 8))
        mask = size // 16 - 1
        self._words, self._mask = words, mask
        self._grow_at = size // BITS_PER_ID if size < MAX_BITS else 2**63

        def add(key: int) -> None:
            probe = key & PROBE
            words[probe & mask] |= _MASKS[probe >> _WORD_BITS]

        self._in_filter = 0
        for (key,) in self._db.execute("SELECT id FROM message_ids"):
            add(key)
            self._in_filter += 1
        for fresh in self._fresh.values():
            for key in fresh:
                add(key)
                self._in_filter += 1
        for shelf in self._shelves:
            for key in shelf:
                add(key)
            self._in_filter += len(shelf)
        self._set_room()


def _holds(shelf: array[int], key: int) -> bool:
    at = bisect_left(shelf, key)
    return at < len(shelf) and shelf[at] == key


def window_ms(days: float) -> int:
    """`--dedupe-window` in days, as milliseconds."""
    return int(days * DAY_MS)


__all__ = [
    "DEFAULT_WINDOW_DAYS",
    "DUPLICATE_MESSAGE_ID",
    "PROBE",
    "Entry",
    "MessageIds",
    "day_of",
    "entry",
    "forgotten",
    "window_ms",
]
