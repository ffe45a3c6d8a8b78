"""The sandbox's SQLite database: what CleverTap would now hold.

Tables and views:
- `events` (a view): every accepted event, appended: identifier, evtName, ts, evtData.
- `profile_writes` (a view): every accepted profile record, appended.
- `profiles`: one row per (identifier kind, identifier), profileData merged key by key
  (the later record wins per top-level key; values such as `{"$incr": 1}` are stored as
  given, not applied), `writes` = how many profile records it received since it was
  (re)created.
- `tokens`: every accepted token record.
- `deletions`: the log of deleted identities/guids and whether a profile existed.

Every stored record carries `seq`, one counter across tables, so the order of requests
and deletions can be checked (within one request: its events, then its profile records,
then its tokens, each in request order). One request is one transaction. Events do not
create profile rows: `profiles` holds what profile records wrote, which tests count.

It is a fake CleverTap: a request's records are stored as they arrive, profiles are merged
in arrival order, deletions applied in arrival order. One piece of cleverness stays, for
speed: a request's events are one row of `event_batches` and its profile records one row
of `profile_batches`, each a JSON array (the `events` and `profile_writes` views unfold
them), and profiles are merged into `profiles` when they are next read or a deletion
comes, not while requests arrive. Why, measured on the shared 2-core machine with the
bodies of `python -m ctsync.sandbox.load` (1000 records a request, half profiles): the
plain design (a row per event and per profile record, each profile read, merged and
written back as its request arrives) cost about 25 ms of store time per request against
3 ms (500 event rows about 11 ms, the 500 merges about 20 ms), and made `load --requests
300` about 2.4x slower (12-18k against 30-42k records/s). That would make the sandbox,
not ctsync, the bottleneck of `make bench`, where it already spends 13 s of CPU on the
other core during the 1M-message run. Merging later also lets one merge read each
profile once and write it back once, however many requests named it.

Reads through the views parse JSON: instant for tests, seconds for millions of records;
the first read after a burst of a million profile records merges them (seconds).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import orjson

from ._validation import CheckedUpload, IdentifierKind

DeleteKey: TypeAlias = Literal["identity", "guid"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    id_kind TEXT NOT NULL,
    identifier TEXT NOT NULL,
    data TEXT NOT NULL,
    writes INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (id_kind, identifier)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_batches (
    first_seq INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    events TEXT NOT NULL
);
CREATE VIEW IF NOT EXISTS events (seq, id_kind, identifier, evt_name, ts, evt_data) AS
SELECT
    b.first_seq + e.key,
    json_extract(e.value, '$[0]'),
    json_extract(e.value, '$[1]'),
    json_extract(e.value, '$[2]'),
    json_extract(e.value, '$[3]'),
    json_extract(e.value, '$[4]')
FROM event_batches AS b, json_each(b.events) AS e;
CREATE TABLE IF NOT EXISTS profile_batches (
    first_seq INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    writes TEXT NOT NULL
);
CREATE VIEW IF NOT EXISTS profile_writes (seq, id_kind, identifier, ts, profile_data) AS
SELECT
    b.first_seq + w.key,
    json_extract(w.value, '$[0]'),
    json_extract(w.value, '$[1]'),
    json_extract(w.value, '$[2]'),
    json_extract(w.value, '$[3]')
FROM profile_batches AS b, json_each(b.writes) AS w;
-- The last seq of profile_batches already merged into profiles.
CREATE TABLE IF NOT EXISTS profiles_merged (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO profiles_merged VALUES (1, 0);
CREATE TABLE IF NOT EXISTS tokens (
    seq INTEGER PRIMARY KEY,
    object_id TEXT NOT NULL,
    token_id TEXT NOT NULL,
    token_type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deletions (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    existed INTEGER NOT NULL
);
"""

# Which profile identifier a delete key addresses: `guid` is the CleverTap ID (objectId).
_DELETE_KIND: Mapping[DeleteKey, IdentifierKind] = {
    "identity": IdentifierKind.IDENTITY,
    "guid": IdentifierKind.OBJECT_ID,
}

# A merge holds at most this many profiles in memory before writing them back.
MERGE_FLUSH_PROFILES = 50_000


@dataclass(slots=True)
class _Merging:
    """A profile row while profile records are merged into it."""

    data: dict[str, Any]
    writes: int
    last_ts: int = 0
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """How many rows each table holds."""

    profiles: int
    events: int
    tokens: int
    deletions: int


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A profile as merged from all accepted profile records since its (re)creation."""

    kind: IdentifierKind
    identifier: str
    data: Mapping[str, Any]
    writes: int
    last_ts: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    kind: IdentifierKind
    identifier: str
    evt_name: str
    ts: int
    evt_data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredToken:
    seq: int
    object_id: str
    token_id: str
    token_type: str


@dataclass(frozen=True, slots=True)
class StoredDeletion:
    seq: int
    key: DeleteKey
    value: str
    existed: bool


class SandboxStore:
    """The database of one sandbox. Not thread-safe: use it from one thread.

    Several processes may open the same file (the server and `show`, or a test): SQLite
    serialises their writes, and folding profile batches is one transaction.
    """

    def __init__(self, connection: sqlite3.Connection, *, in_memory: bool = False) -> None:
        self._conn = connection
        self._in_memory = in_memory
        self._seq = self._last_seq()

    @classmethod
    def open(cls, path: Path | None = None, *, create: bool = True) -> SandboxStore:
        """Open a database file (created unless `create=False`), or in memory for `None`."""
        if path is not None and not create and not path.is_file():
            raise FileNotFoundError(f"no sandbox database at {path}")
        conn = sqlite3.connect(
            ":memory:" if path is None else str(path), isolation_level=None, timeout=30.0
        )
        if path is not None:
            # WAL lets `show` or a test read while the server writes. synchronous=OFF
            # survives the sandbox process being killed (not the machine crashing) and
            # spares an fsync per checkpoint.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        return cls(conn, in_memory=path is None)

    def close(self) -> None:
        """Merge pending profile writes, so the file is complete for any reader; close."""
        if not self._in_memory:
            self._merge_profiles()
        self._conn.close()

    def _last_seq(self) -> int:
        row = self._conn.execute(
            "SELECT max("
            " coalesce((SELECT max(first_seq + count - 1) FROM event_batches), 0),"
            " coalesce((SELECT max(first_seq + count - 1) FROM profile_batches), 0),"
            " coalesce((SELECT max(seq) FROM tokens), 0),"
            " coalesce((SELECT max(seq) FROM deletions), 0))"
        ).fetchone()
        return int(row[0])

    # Writing

    def apply_upload(self, checked: CheckedUpload) -> None:
        """Store one request's accepted records in one transaction."""
        with self._transaction():
            for table, rows in (
                ("event_batches", checked.events),
                ("profile_batches", checked.profiles),
            ):
                if rows:
                    self._conn.execute(
                        f"INSERT INTO {table} VALUES (?, ?, ?)",
                        (self._seq + 1, len(rows), orjson.dumps(rows).decode()),
                    )
                    self._seq += len(rows)
            if checked.tokens:
                start = self._seq + 1
                self._seq += len(checked.tokens)
                self._conn.executemany(
                    "INSERT INTO tokens VALUES (?, ?, ?, ?)",
                    [(seq, *row) for seq, row in enumerate(checked.tokens, start)],
                )

    def apply_delete(self, key: DeleteKey, values: Iterable[str]) -> int:
        """Delete profiles by identity or guid, log each; return how many were asked."""
        kind = _DELETE_KIND[key]
        count = 0
        with self._transaction():
            # Profile writes that came before the delete must be merged before it.
            self._merge_profiles()
            for value in values:
                existed = self._conn.execute(
                    "DELETE FROM profiles WHERE id_kind = ? AND identifier = ?", (kind, value)
                ).rowcount
                self._seq += 1
                self._conn.execute(
                    "INSERT INTO deletions VALUES (?, ?, ?, ?)",
                    (self._seq, key, value, 1 if existed else 0),
                )
                count += 1
        return count

    def reset(self) -> None:
        """Forget everything stored."""
        with self._transaction():
            for table in ("profiles", "event_batches", "profile_batches", "tokens", "deletions"):
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute("UPDATE profiles_merged SET through_seq = 0")
        self._seq = 0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE: take the write lock first, so two processes folding the same
        # batches cannot both read them as pending.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _merge_profiles(self) -> None:
        """Fold the profile batches stored since the last merge into `profiles`, in order."""
        if self._conn.in_transaction:
            self._merge_profiles_in_transaction()
            return
        pending = self._conn.execute(
            "SELECT EXISTS (SELECT 1 FROM profile_batches WHERE first_seq >"
            " (SELECT through_seq FROM profiles_merged))"
        ).fetchone()[0]
        if pending:
            with self._transaction():
                self._merge_profiles_in_transaction()

    def _merge_profiles_in_transaction(self) -> None:
        (through,) = self._conn.execute("SELECT through_seq FROM profiles_merged").fetchone()
        touched: dict[tuple[str, str], _Merging] = {}
        batches = self._conn.execute(
            "SELECT first_seq, count, writes FROM profile_batches"
            " WHERE first_seq > ? ORDER BY first_seq",
            (through,),
        )
        for first_seq, count, writes in batches:
            records = orjson.loads(writes)
            self._read_profiles(touched, records)
            for seq, (kind, identifier, ts, data) in enumerate(records, first_seq):
                profile = touched[(kind, identifier)]
                profile.data.update(data)
                profile.writes += 1
                profile.last_ts = ts
                profile.last_seq = seq
            through = first_seq + count - 1
            if len(touched) >= MERGE_FLUSH_PROFILES:
                self._write_profiles(touched)
                touched = {}
        self._write_profiles(touched)
        self._conn.execute("UPDATE profiles_merged SET through_seq = ?", (through,))

    def _read_profiles(self, touched: dict[tuple[str, str], _Merging], records: list[Any]) -> None:
        """Add the stored rows of the profiles `records` name to `touched` (new ones empty)."""
        missing: dict[str, list[str]] = {}
        for kind, identifier, _, _ in records:
            if (kind, identifier) not in touched:
                touched[(kind, identifier)] = _Merging({}, 0)
                missing.setdefault(kind, []).append(identifier)
        for kind, identifiers in missing.items():
            marks = ",".join("?" * len(identifiers))
            for identifier, data, writes in self._conn.execute(
                f"SELECT identifier, data, writes FROM profiles"
                f" WHERE id_kind = ? AND identifier IN ({marks})",
                [kind, *identifiers],
            ):
                touched[(kind, identifier)] = _Merging(orjson.loads(data), writes)

    def _write_profiles(self, touched: dict[tuple[str, str], _Merging]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
            [
                (kind, identifier, orjson.dumps(p.data).decode(), p.writes, p.last_ts, p.last_seq)
                for (kind, identifier), p in touched.items()
            ],
        )

    # Reading

    def counts(self) -> StoreCounts:
        """How many profiles, events, tokens and deletions are stored."""
        self._merge_profiles()
        row = self._conn.execute(
            "SELECT (SELECT count(*) FROM profiles),"
            " (SELECT coalesce(sum(count), 0) FROM event_batches),"
            " (SELECT count(*) FROM tokens), (SELECT count(*) FROM deletions)"
        ).fetchone()
        return StoreCounts(*row)

    def profile(
        self, identifier: str, kind: IdentifierKind = IdentifierKind.IDENTITY
    ) -> StoredProfile | None:
        """The stored profile of one identifier, if there is one."""
        self._merge_profiles()
        row = self._conn.execute(
            "SELECT id_kind, identifier, data, writes, last_ts, last_seq FROM profiles"
            " WHERE id_kind = ? AND identifier = ?",
            (kind, identifier),
        ).fetchone()
        return None if row is None else _profile(row)

    def profiles(self, limit: int = -1) -> list[StoredProfile]:
        """The stored profiles by identifier: all, or the first `limit`."""
        self._merge_profiles()
        rows = self._conn.execute(
            "SELECT id_kind, identifier, data, writes, last_ts, last_seq FROM profiles"
            " ORDER BY id_kind, identifier LIMIT ?",
            (limit,),
        )
        return [_profile(row) for row in rows]

    def profile_writes(self) -> dict[str, int]:
        """How many profile records each stored profile received since its (re)creation."""
        self._merge_profiles()
        rows = self._conn.execute("SELECT identifier, writes FROM profiles")
        return {identifier: writes for identifier, writes in rows}

    def profile_records(self) -> dict[str, int]:
        """How many profile records were accepted per identifier, deletions or not."""
        rows = self._conn.execute(
            "SELECT identifier, count(*) FROM profile_writes GROUP BY identifier"
        )
        return {identifier: count for identifier, count in rows}

    def events(self, identifier: str | None = None) -> list[StoredEvent]:
        """The stored events in arrival order, all or those of one identifier."""
        sql = "SELECT seq, id_kind, identifier, evt_name, ts, evt_data FROM events"
        params: tuple[str, ...] = ()
        if identifier is not None:
            sql += " WHERE identifier = ?"
            params = (identifier,)
        rows = self._conn.execute(sql + " ORDER BY seq", params)
        return [
            StoredEvent(seq, IdentifierKind(kind), ident, name, ts, orjson.loads(data))
            for seq, kind, ident, name, ts, data in rows
        ]

    def events_per_identifier(self) -> dict[str, int]:
        """How many events each identifier has."""
        rows = self._conn.execute("SELECT identifier, count(*) FROM events GROUP BY identifier")
        return {identifier: count for identifier, count in rows}

    def event_names(self) -> dict[str, int]:
        """How many events were stored under each evtName, most frequent first."""
        rows = self._conn.execute(
            "SELECT evt_name, count(*) AS n FROM events GROUP BY evt_name ORDER BY n DESC"
        )
        return {name: count for name, count in rows}

    def tokens(self) -> list[StoredToken]:
        """The stored token records in arrival order."""
        rows = self._conn.execute(
            "SELECT seq, object_id, token_id, token_type FROM tokens ORDER BY seq"
        )
        return [StoredToken(*row) for row in rows]

    def deletions(self, last: int = -1) -> list[StoredDeletion]:
        """The deletion log in order: all, or the `last` most recent."""
        rows = self._conn.execute(
            "SELECT * FROM (SELECT seq, key, value, existed FROM deletions"
            " ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (last,),
        )
        return [StoredDeletion(seq, key, value, bool(existed)) for seq, key, value, existed in rows]


def _profile(row: tuple[Any, ...]) -> StoredProfile:
    kind, identifier, data, writes, last_ts, last_seq = row
    return StoredProfile(
        IdentifierKind(kind), identifier, orjson.loads(data), writes, last_ts, last_seq
    )
