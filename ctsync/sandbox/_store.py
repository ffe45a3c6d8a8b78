"""The sandbox's SQLite database: what CleverTap would now hold.

A fake CleverTap, stored the plain way: each request is one transaction that appends its
records and merges its profile records into `profiles` one by one, in arrival order;
a deletion removes the profile row and logs itself.

Tables:
- `events`: every accepted event, appended: identifier, evtName, ts, evtData.
- `profile_writes`: every accepted profile record, appended (deleted profiles or not).
- `profiles`: one row per (identifier kind, identifier), profileData merged key by key
  (the later record wins per top-level key; values such as `{"$incr": 1}` are stored as
  given, not applied), `writes` = how many profile records it received since it was
  (re)created, and the ts and seq of the last of them.
- `tokens`: every accepted token record.
- `deletions`: the log of deleted identities/guids and whether a profile existed.

Every stored record carries `seq`, one counter across tables, so the order of requests
and deletions can be checked (within one request: its events, then its profile records,
then its tokens, each in request order). Events do not create profile rows: `profiles`
holds what profile records wrote, which tests count.

No cleverness for speed, because none is needed: `make bench` runs `ctsync sandbox
--sink`, which never writes here. Measured on the shared 2-core machine with the bodies
of `python -m ctsync.sandbox.load` (1000 records a request, half profiles), this store
spends 12-15 ms a request (the earlier design, which batched rows and merged profiles on
the next read, 4-8 ms with its merge counted): 70,000 records/s, above what one ctsync
prepares, and under 1 s of store time for all of tests/e2e.
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
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id_kind TEXT NOT NULL,
    identifier TEXT NOT NULL,
    evt_name TEXT NOT NULL,
    ts INTEGER NOT NULL,
    evt_data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profile_writes (
    seq INTEGER PRIMARY KEY,
    id_kind TEXT NOT NULL,
    identifier TEXT NOT NULL,
    ts INTEGER NOT NULL,
    profile_data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    id_kind TEXT NOT NULL,
    identifier TEXT NOT NULL,
    data TEXT NOT NULL,
    writes INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (id_kind, identifier)
) WITHOUT ROWID;
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

_TABLES = ("events", "profile_writes", "profiles", "tokens", "deletions")

# Which profile identifier a delete key addresses: `guid` is the CleverTap ID (objectId).
_DELETE_KIND: Mapping[DeleteKey, IdentifierKind] = {
    "identity": IdentifierKind.IDENTITY,
    "guid": IdentifierKind.OBJECT_ID,
}


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
    serialises their writes.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._seq = self._last_seq()

    @classmethod
    def open(cls, path: Path | None = None, *, create: bool = True) -> SandboxStore:
        """Open a database file (created unless `create=False`), or in memory for `None`."""
        if path is not None and not create and path.is_dir():
            raise FileNotFoundError(
                f"{path} is a folder; give the database file a sandbox wrote with --db"
            )
        if path is not None and not create and not path.is_file():
            raise FileNotFoundError(f"no sandbox database at {path}")
        conn = sqlite3.connect(
            ":memory:" if path is None else str(path), isolation_level=None, timeout=30.0
        )
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "event_batches" in tables:
            conn.close()
            raise sqlite3.DatabaseError("written by an older sandbox, which batched its rows")
        if tables and not tables & {"events", "profiles"}:  # another program's (a --state)
            conn.close()
            raise sqlite3.DatabaseError("it holds other tables: another program's database")
        if path is not None:
            # WAL lets `show` or a test read while the server writes. synchronous=OFF
            # survives the sandbox process being killed (not the machine crashing) and
            # spares an fsync per checkpoint.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        return cls(conn)

    def close(self) -> None:
        """Close the database (every request is already committed)."""
        self._conn.close()

    def _last_seq(self) -> int:
        tables = ("events", "profile_writes", "tokens", "deletions")
        sql = "SELECT max(" + ", ".join(f"(SELECT coalesce(max(seq), 0) FROM {t})" for t in tables)
        return int(self._conn.execute(sql + ")").fetchone()[0])

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # Writing

    def apply_upload(self, checked: CheckedUpload) -> None:
        """Store one request's accepted records in one transaction."""
        with self._transaction():
            self._conn.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (self._next_seq(), kind, identifier, name, ts, orjson.dumps(data).decode())
                    for kind, identifier, name, ts, data in checked.events
                ],
            )
            for kind, identifier, ts, data in checked.profiles:
                self._write_profile(self._next_seq(), kind, identifier, ts, data)
            self._conn.executemany(
                "INSERT INTO tokens VALUES (?, ?, ?, ?)",
                [(self._next_seq(), *row) for row in checked.tokens],
            )

    def _write_profile(
        self, seq: int, kind: str, identifier: str, ts: int, data: dict[str, Any]
    ) -> None:
        """Log one profile record and merge it into its profile (created if new)."""
        self._conn.execute(
            "INSERT INTO profile_writes VALUES (?, ?, ?, ?, ?)",
            (seq, kind, identifier, ts, orjson.dumps(data).decode()),
        )
        row = self._conn.execute(
            "SELECT data, writes FROM profiles WHERE id_kind = ? AND identifier = ?",
            (kind, identifier),
        ).fetchone()
        merged, writes = ({}, 0) if row is None else (orjson.loads(row[0]), row[1])
        merged.update(data)
        self._conn.execute(
            "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
            (kind, identifier, orjson.dumps(merged).decode(), writes + 1, ts, seq),
        )

    def apply_delete(self, key: DeleteKey, values: Iterable[str]) -> int:
        """Delete profiles by identity or guid, log each; return how many were asked."""
        kind = _DELETE_KIND[key]
        count = 0
        with self._transaction():
            for value in values:
                existed = self._conn.execute(
                    "DELETE FROM profiles WHERE id_kind = ? AND identifier = ?", (kind, value)
                ).rowcount
                self._conn.execute(
                    "INSERT INTO deletions VALUES (?, ?, ?, ?)",
                    (self._next_seq(), key, value, 1 if existed else 0),
                )
                count += 1
        return count

    def reset(self) -> None:
        """Forget everything stored."""
        with self._transaction():
            for table in _TABLES:
                self._conn.execute(f"DELETE FROM {table}")
        self._seq = 0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE: take the write lock before reading a profile to merge, so that
        # another process writing the same file makes this wait, not fail with "busy".
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # Reading

    def counts(self) -> StoreCounts:
        """How many profiles, events, tokens and deletions are stored."""
        row = self._conn.execute(
            "SELECT (SELECT count(*) FROM profiles), (SELECT count(*) FROM events),"
            " (SELECT count(*) FROM tokens), (SELECT count(*) FROM deletions)"
        ).fetchone()
        return StoreCounts(*row)

    def profile(
        self, identifier: str, kind: IdentifierKind = IdentifierKind.IDENTITY
    ) -> StoredProfile | None:
        """The stored profile of one identifier, if there is one."""
        row = self._conn.execute(
            "SELECT id_kind, identifier, data, writes, last_ts, last_seq FROM profiles"
            " WHERE id_kind = ? AND identifier = ?",
            (kind, identifier),
        ).fetchone()
        return None if row is None else _profile(row)

    def profiles(self, limit: int = -1) -> list[StoredProfile]:
        """The stored profiles by identifier: all, or the first `limit`."""
        rows = self._conn.execute(
            "SELECT id_kind, identifier, data, writes, last_ts, last_seq FROM profiles"
            " ORDER BY id_kind, identifier LIMIT ?",
            (limit,),
        )
        return [_profile(row) for row in rows]

    def profile_writes(self) -> dict[str, int]:
        """How many profile records each stored profile received since its (re)creation."""
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
