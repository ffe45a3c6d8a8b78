"""Packing operations into CleverTap requests, in lanes that keep each profile's order.

Uploads go up to `batch_size` records per request (at most 100 of them tokens);
deletions up to 100 per request, by identity or by CleverTap ID (never both in one).

Order: CleverTap applies requests as they arrive, so two writes to one profile that are
in flight at once can land in either order, and a retried request lands after requests
sent later. Every operation therefore goes to one of N *lanes*, chosen by the profile it
touches; a lane sends one request at a time, in order, and the next only once the one
before has its final answer (retries included). So for each profile CleverTap sees the
input's order, for identifies as well as deletions and events, and requests still go
out N at a time when profiles do not repeat.

Inside a lane, uploads and deletions fill separate open batches; the lane sends them in
the order they were opened. An operation joins the first open batch of its kind that no
later-opened batch holding its profile follows (so it never passes an earlier operation
of its profile); if there is none, it opens a new batch behind the others. Nothing is
sealed before it is full, so a deletion followed by the same profile's next identify no
longer cuts both requests short. A lane holds at most `MAX_OPEN` open batches: past that
the first one is sealed (with any opened before it: there are none).

Full requests at the end: lanes by profile split a stream N ways, so the last batch of
every lane is partly full (2,500 profiles would go in 15 requests of about 170). Once
every sealed batch has its final answer, `flush(join=True)` packs the lanes' open
batches into full batches of their kind (the first open batch of every lane, then the
second, ...: each lane's order holds), cut at the limits:
2,500 profiles go in 1,000 + 1,000 + 500, 126 deletions in 100 + 26. Nothing is on the
wire any more, so their order against earlier requests holds; a joined batch that shares
a profile with an earlier joined one goes to the same lane, behind it. Waiting for the
answers first (a round trip or two at the end of a run) keeps the plan a function of the
input alone: a dry run shows the requests a real run sends.

Each batch also keeps the *runs* of input positions it holds (per source: first and
last position of operations that came to it one after another), which is what the
state file records for a batch without an answer.
"""

from __future__ import annotations

from collections import deque
from typing import TypeAlias

from ctsync.ledger import Tracked
from ctsync.model import Position
from ctsync.prepare import Op, OpKind, ProfileKey, profile_hash
from ctsync.settings import MAX_DELETE_BATCH, MAX_TOKENS_PER_UPLOAD, MAX_UPLOAD_BATCH

Run: TypeAlias = list[Position]
"""[first, last]: positions of one source that went to one batch one after another."""


MAX_OPEN = 8
"""Open batches a lane may hold at once (see `Planner.add_encoded`)."""


class Batch:
    """One request's worth of operations and the records they came from."""

    __slots__ = (
        "bodies",
        "keys",
        "keyset",
        "kind",
        "lane",
        "owners",
        "positions",
        "runs",
        "safe",
        "sealed",
        "sent",
        "seq",
        "token_flags",
        "tokens",
    )

    def __init__(self, kind: OpKind, lane: int, seq: int) -> None:
        self.kind = kind
        self.lane = lane
        self.seq = seq
        self.bodies: list[bytes] = []  # encoded records, or encoded identity strings
        self.owners: list[Tracked] = []
        self.positions: list[tuple[str, Position]] = []  # each operation's source and place
        self.keys: list[ProfileKey | None] = []
        self.keyset: set[ProfileKey] = set()
        self.safe: list[bool] = []
        self.runs: dict[str, list[Run]] = {}
        self.tokens = 0
        self.token_flags: list[bool] = []  # which operations are device tokens
        self.sealed = False
        self.sent = False  # written to a connection at least once: CleverTap may have it

    def __len__(self) -> int:
        return len(self.bodies)

    def __repr__(self) -> str:
        return f"<Batch {self.kind} lane={self.lane} #{self.seq} n={len(self)}>"


class Lane:
    """Open batches (in the order they were opened) and sealed batches waiting to go."""

    __slots__ = ("busy", "open", "queue")

    def __init__(self) -> None:
        self.open: list[Batch] = []
        self.queue: deque[Batch] = deque()
        self.busy = False


class Planner:
    """Turns a stream of operations into sealed batches, lane by lane.

    `add` and `flush` return the batches sealed by the call, in the order their lanes
    must send them; the caller appends each to `lanes[batch.lane].queue`.
    """

    def __init__(
        self,
        *,
        lanes: int = 1,
        batch_size: int = MAX_UPLOAD_BATCH,
        delete_batch_size: int = MAX_DELETE_BATCH,
    ) -> None:
        self.lanes = [Lane() for _ in range(max(1, lanes))]
        self._limits = {
            OpKind.UPLOAD: batch_size,
            OpKind.DELETE_IDENTITY: delete_batch_size,
            OpKind.DELETE_GUID: delete_batch_size,
        }
        self._seq = 0
        self._unkeyed = 0
        self._last: Batch | None = None  # the batch the previous operation went to

    def lane_of(self, key: ProfileKey | None, hashed: int | None = None) -> int:
        """The lane of an operation on `key`; `hashed` is `profile_hash(key)` when the
        record stage computed it already (in a worker: not here, once per operation)."""
        n = len(self.lanes)
        if n == 1:
            return 0
        if key is None:  # orders against nothing: spread round robin
            self._unkeyed += 1
            return self._unkeyed % n
        return (profile_hash(key) if hashed is None else hashed) % n

    def add(
        self, op: Op, owner: Tracked, source: str, position: Position, gap: bool = False
    ) -> list[Batch]:
        """Add one operation. `gap` says positions were passed over just before this one
        (done in an earlier run), so no run of positions may reach across them."""
        return self.add_encoded(
            op.kind, op.key, op.body, op.safe, op.token, owner, source, position, gap
        )

    def add_encoded(
        self,
        kind: OpKind,
        key: ProfileKey | None,
        body: bytes,
        safe: bool,
        token: bool,
        owner: Tracked,
        source: str,
        position: Position,
        gap: bool = False,
        hashed: int | None = None,
    ) -> list[Batch]:
        """`add` of an operation given by its fields (as the record stage sends them
        back: no `Op` is built for each of a million records), `hashed` its key's
        `profile_hash` if known. Returns the batches sealed, usually none."""
        number = self.lane_of(key, hashed)
        lane = self.lanes[number]
        opened = lane.open
        sealed: list[Batch] = []
        batch = None
        if len(opened) == 1 and opened[0].kind is kind:
            batch = opened[0]  # the common case: no later batch can hold the profile
        elif opened:
            batch = _eligible(opened, kind, key)
            if batch is None and len(opened) >= MAX_OPEN:
                sealed = self._seal_through(lane, opened[0])
                batch = _eligible(opened, kind, key)
        if batch is not None and token and batch.tokens >= MAX_TOKENS_PER_UPLOAD:
            sealed += self._seal_through(lane, batch)
            batch = None
        if batch is None:
            self._seq += 1
            batch = Batch(kind, number, self._seq)
            opened.append(batch)
        batch.bodies.append(body)
        batch.owners.append(owner)
        batch.positions.append((source, position))
        batch.keys.append(key)
        batch.safe.append(safe)
        batch.token_flags.append(token)
        if key is not None:
            batch.keyset.add(key)
        if token:
            batch.tokens += 1
        runs = batch.runs.get(source)
        if runs is None:
            batch.runs[source] = [[position, position]]
        elif self._last is batch and not gap:
            runs[-1][1] = position
        else:
            runs.append([position, position])
        self._last = batch
        if len(batch.bodies) >= self._limits[kind]:
            sealed += self._seal_through(lane, batch)
        return sealed

    def flush(self, *, join: bool = False) -> list[Batch]:
        """Seal every open batch (end of input). With `join` (only once no sealed batch
        waits or is on the wire), the open batches give their operations to full batches
        of their kind instead (see the module's docstring)."""
        if not join:
            sealed: list[Batch] = []
            for lane in self.lanes:
                if lane.open:
                    sealed += self._seal_through(lane, lane.open[-1])
            return sealed
        # A lane's n-th open batch goes out after its (n-1)-th: join them in that order,
        # each step by kind (lanes hold no profile in common).
        steps: list[dict[OpKind, list[Batch]]] = []
        for lane in self.lanes:
            assert not lane.queue, "joined while a lane still had batches to send"
            for n, batch in enumerate(lane.open):
                if n == len(steps):
                    steps.append({})
                steps[n].setdefault(batch.kind, []).append(batch)
            lane.open.clear()
        self._last = None
        joined: list[Batch] = []
        for step in steps:
            for kind, batches in step.items():
                joined += self._join(kind, batches)
        self._place(joined)
        return joined

    def _join(self, kind: OpKind, tails: list[Batch]) -> list[Batch]:
        """The operations of `tails` (open batches of one kind, at most one per lane), in
        order, in full batches; each run of positions is cut where a batch ends."""
        limit = self._limits[kind]
        joined: list[Batch] = []
        for tail in tails:
            at = {source: 0 for source in tail.runs}  # the run each operation belongs to
            previous: tuple[str, int] | None = None  # never continued from another tail
            for n, (source, position) in enumerate(tail.positions):
                runs = tail.runs[source]
                while runs[at[source]][1] < position:
                    at[source] += 1
                batch = joined[-1] if joined else None
                token = tail.token_flags[n]
                if (
                    batch is None
                    or len(batch.bodies) >= limit
                    or (token and batch.tokens >= MAX_TOKENS_PER_UPLOAD)
                ):
                    self._seq += 1
                    batch = Batch(kind, 0, self._seq)
                    batch.sealed = True
                    joined.append(batch)
                    previous = None
                key = tail.keys[n]
                batch.bodies.append(tail.bodies[n])
                batch.owners.append(tail.owners[n])
                batch.positions.append((source, position))
                batch.keys.append(key)
                batch.safe.append(tail.safe[n])
                batch.token_flags.append(token)
                if key is not None:
                    batch.keyset.add(key)
                if token:
                    batch.tokens += 1
                run = (source, at[source])
                if previous == run:
                    batch.runs[source][-1][1] = position
                else:
                    batch.runs.setdefault(source, []).append([position, position])
                previous = run
        return joined

    def _place(self, joined: list[Batch]) -> None:
        """Lanes for joined batches, in the order they must go: side by side, except a
        batch sharing a profile with earlier ones goes behind them (all in lane 0, one
        after another, if those are in two lanes)."""
        n = len(self.lanes)
        for at, batch in enumerate(joined):
            shared = {b.lane for b in joined[:at] if not b.keyset.isdisjoint(batch.keyset)}
            if len(shared) > 1:
                for other in joined:
                    other.lane = 0
                return
            batch.lane = shared.pop() if shared else at % n

    def open_batches(self) -> list[Batch]:
        """Batches still being filled (read, not yet sealed)."""
        return [batch for lane in self.lanes for batch in lane.open]

    def _seal_through(self, lane: Lane, batch: Batch) -> list[Batch]:
        """Seal `batch` and every batch the lane opened before it, in that order."""
        at = lane.open.index(batch)
        sealed = lane.open[: at + 1]
        del lane.open[: at + 1]
        for done in sealed:
            done.sealed = True
        if self._last is not None and self._last.sealed:
            self._last = None
        return sealed


def _eligible(opened: list[Batch], kind: OpKind, key: ProfileKey | None) -> Batch | None:
    """The first open batch of `kind` that no later open batch holding `key` follows:
    where the operation may go without passing an earlier operation of its profile."""
    found = None
    for candidate in reversed(opened):
        if candidate.kind is kind:
            found = candidate
        if key is not None and key in candidate.keyset:
            break
    return found
