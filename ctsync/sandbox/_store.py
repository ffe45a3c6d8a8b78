"""The sandbox's SQLite database: what CleverTap would now hold.

Tables:
- `profiles`: one row per (identifier kind, identifier), profileData merged key by key
  (the later record wins per top-level key; values such as `{"$incr": 1}` are stored as
  given, not applied), `writes` = how many accepted profile records it received since
  it was (re)created.
- `events`: every accepted event, appended (identifier, evtName, ts, evtData as JSON).
  A view: the events of one request are stored as one row of `event_batches`, a JSON
  array of `[id kind, identifier, evtName, ts, evtData]`. One row per event costs about
  2 microseconds in SQLite, more than everything else the sandbox does for an event;
  one row per request makes storing nearly free. Reads parse the JSON, which is fine
  for tests and `show` but makes queries on millions of events take seconds.
- `tokens`: every accepted token record.
- `deletions`: the log of deleted identities/guids and whether a profile existed.

Every stored row carries `seq`, one counter across tables, so the order of uploads and
deletions can be checked. One request is one transaction. Events do not create profile
rows: `profiles` holds what profile records wrote, which is what tests count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
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


@dataclass(slots=True)
class _ProfileState:
    """A profile row while a request's writes are merged into it."""

    data: dict[str, Any]
    writes: int
    last_ts: int
    last_seq: int


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
    """The database of one sandbox. Not thread-safe: use it from one thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._seq = self._last_seq()

    @classmethod
    def open(cls, path: Path | None = None) -> SandboxStore:
        """Open (creating if needed) a database file, or an in-memory one for `None`."""
        conn = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None)
        if path is not None:
            # WAL lets `ctsync sandbox show` or a test read while the server writes;
            # OFF still survives the sandbox process being killed (not the machine
            # crashing), and spares an fsync per checkpoint.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        return cls(conn)

    @classmethod
    def open_read_only(cls, path: Path) -> SandboxStore:
        """Open an existing database file without the right to change it."""
        if not path.is_file():
            raise FileNotFoundError(f"no sandbox database at {path}")
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def _last_seq(self) -> int:
        row = self._conn.execute(
            "SELECT max(coalesce((SELECT max(first_seq + count - 1) FROM event_batches), 0),"
            " coalesce((SELECT max(seq) FROM tokens), 0),"
            " coalesce((SELECT max(seq) FROM deletions), 0),"
            " coalesce((SELECT max(last_seq) FROM profiles), 0))"
        ).fetchone()
        return int(row[0])

    # Writing

    def apply_upload(self, checked: CheckedUpload) -> None:
        """Store one request's accepted records in one transaction."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            if checked.events:
                conn.execute(
                    "INSERT INTO event_batches VALUES (?, ?, ?)",
                    (self._seq + 1, len(checked.events), orjson.dumps(checked.events).decode()),
                )
                self._seq += len(checked.events)
            if checked.tokens:
                start = self._seq + 1
                self._seq += len(checked.tokens)
                conn.executemany(
                    "INSERT INTO tokens VALUES (?, ?, ?, ?)",
                    [(seq, *row) for seq, row in enumerate(checked.tokens, start)],
                )
            if checked.profiles:
                self._upsert_profiles(checked)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _upsert_profiles(self, checked: CheckedUpload) -> None:
        # Read each touched profile once, merge the request's writes in order in Python,
        # write each back once: a few statements per request, not per record. (Caching
        # profiles in memory instead was slower: it fragments the heap.)
        touched: dict[tuple[str, str], _ProfileState] = {}
        by_kind: dict[str, list[str]] = {}
        for kind, identifier, _, _ in checked.profiles:
            key = (kind, identifier)
            if key not in touched:
                touched[key] = _ProfileState({}, 0, 0, 0)
                by_kind.setdefault(kind, []).append(identifier)
        for kind, identifiers in by_kind.items():
            marks = ",".join("?" * len(identifiers))
            for identifier, data, writes in self._conn.execute(
                f"SELECT identifier, data, writes FROM profiles"
                f" WHERE id_kind = ? AND identifier IN ({marks})",
                [kind, *identifiers],
            ):
                touched[(kind, identifier)] = _ProfileState(orjson.loads(data), writes, 0, 0)
        for kind, identifier, ts, data in checked.profiles:
            self._seq += 1
            state = touched[(kind, identifier)]
            state.data.update(data)
            state.writes += 1
            state.last_ts = ts
            state.last_seq = self._seq
        self._conn.executemany(
            "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
            [
                (kind, identifier, orjson.dumps(s.data).decode(), s.writes, s.last_ts, s.last_seq)
                for (kind, identifier), s in touched.items()
            ],
        )

    def apply_delete(self, key: DeleteKey, values: Iterable[str]) -> int:
        """Delete profiles by identity or guid, log each; return how many were asked."""
        kind = _DELETE_KIND[key]
        count = 0
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for value in values:
                existed = conn.execute(
                    "DELETE FROM profiles WHERE id_kind = ? AND identifier = ?", (kind, value)
                ).rowcount
                self._seq += 1
                conn.execute(
                    "INSERT INTO deletions VALUES (?, ?, ?, ?)",
                    (self._seq, key, value, 1 if existed else 0),
                )
                count += 1
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return count

    def reset(self) -> None:
        """Forget everything stored."""
        self._conn.executescript(
            "BEGIN; DELETE FROM profiles; DELETE FROM event_batches; DELETE FROM tokens;"
            " DELETE FROM deletions; COMMIT;"
        )
        self._seq = 0

    # Reading

    def counts(self) -> StoreCounts:
        """How many profiles, events, tokens and deletions are stored."""
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
        """How many profile records each identifier (of any kind) received."""
        rows = self._conn.execute("SELECT identifier, writes FROM profiles")
        return {identifier: writes for identifier, writes in rows}

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
        rows = self._conn.execute("SELECT seq, object_id, token_id, token_type FROM tokens")
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
