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

Deletions are few (a few in a hundred messages) and lanes by profile would cut them into
requests of a handful of ids. So they leave the lanes: one open deletion batch of each
kind fills from every lane, up to 100 ids, and goes out once no upload batch still
without its final answer holds one of its profiles (those hold the writes before the
deletion). A deleted profile's later operations wait, in the order they came, until the
deletion has its answer (`release`); then they are planned like any others. So every
profile's writes and deletions reach CleverTap in input order, deletions go 100 to a
request, and the upload lanes never wait for a deletion. What waits is bounded: past
`DEFER_AT_MOST` operations waiting, the open deletions go out as they are, with the
upload batches they wait for.

A lane fills one upload batch at a time: it is sealed when it holds `batch_size`
records, or 100 device tokens, and the next is opened behind it.

Full requests at the end: lanes by profile split a stream N ways, so the last batch of
every lane is partly full (2,500 profiles would go in 15 requests of about 170). Once no
upload batch is on its way, `flush(join=True)` packs the lanes' open batches into full
batches (2,500 profiles in 1,000 + 1,000 + 500) and seals the open deletions (126 in
100 + 26). A joined batch takes whole profiles, the first that fit, so joined batches
share no profile and go side by side; only a profile with more operations than a
request holds is cut, and its batches go one behind the other in one lane. The run
joins again for the operations that waited for the last deletions.

Links: a profile record of an objectId that sets `Identity` (--link-anonymous, an
alias) writes two profiles, the device's and the user's. It goes in the user's lane; its
batch waits (`Batch.after`) for the answer to the batch holding the device's latest
profile write (its events carry their own time), which is sealed so that nothing later
joins it (so no two batches wait for each other: each waits only for batches sealed
before it). When that batch is another lane's open one (a visitor's anonymous identify,
then the one naming them: most exports), the link takes the device's operations out of
it into its own lane instead (`_pull`), and waits only for an earlier sealed one. The
device's later operations follow the link's lane while a batch holding them there has
no answer (`moved`); a joined flush leaves such a lane's batch as it is. A link whose
profile waits for a deletion waits with it, and so do both profiles' later operations.
A joined flush moves each profile of its batches the same way, so that an operation
planned after it (one that waited) follows its profile's joined batch.

A link also makes one CleverTap profile of its two, which a deletion by either key
deletes whole: the planner remembers the groups links made (`link`), and a deletion of
a profile in one holds the whole group, as it holds its own profile: it waits for their
earlier operations, and their later ones wait for it.

Each batch also keeps the *runs* of input positions it holds (per source: first and
last position of operations that came to it one after another), which is what the
state file records for a batch without an answer.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable
from typing import TypeAlias

from ctsync.ledger import Tracked
from ctsync.model import Bulk, Position
from ctsync.prepare import Op, OpKind, ProfileKey, profile_hash
from ctsync.records import Message, Origin
from ctsync.settings import MAX_DELETE_BATCH, MAX_TOKENS_PER_UPLOAD, MAX_UPLOAD_BATCH

NO_MESSAGE: Message = {}  # of a `Tracked` that has its line, or whose report reads nothing

Run: TypeAlias = list[Position]
"""[first, last]: positions of one source that went to one batch one after another."""


DEFER_AT_MOST = 50_000
"""Operations of deleted profiles that may wait for their deletion's answer."""
HOT_AT_MOST = 10_000
"""Profiles remembered as deleted again before their deletion went (see `_heat`)."""
HOT_AFTER = 5
"""Deletions of a profile that must find it waiting for an earlier one before its
deletions go alone (`_heat`). With a few deletions in a hundred messages, many profiles
are deleted twice within a round trip; each going alone cost a request of one id and an
upload request part full (an export of 300,000 messages, 3% of them deletions: 434 of
520 deletion requests held fewer than 100 ids, and the run took 5 times its dry run)."""

LINKED_AT_MOST = 200_000
"""Profiles a run remembers as linked (`Planner.link`; about 450 bytes each, their keys
included): past it, a link's two profiles are not ordered against each other's
deletions (`Planner.forgotten_links` counts the links not remembered; the summary says
so)."""
GROUP_AT_MOST = 1_000
"""Profiles one group of links may hold: a device shared by more users than that (an
anonymousId every message carries) is no one's, and each operation of a linked profile
that waits for a deletion costs time in proportion to its group. A link past it is not
remembered either."""

Deferred: TypeAlias = tuple[
    OpKind,
    ProfileKey | None,
    bytes,
    bool,
    bool,
    Tracked,
    str,
    Position,
    int | None,
    ProfileKey | None,
]
"""An operation waiting for its profile's deletion: kind, key, body, safe, token, owner,
source, position, profile hash, the device whose profile it writes."""


class Batch:
    """One request's worth of operations and the records they came from."""

    __slots__ = (
        "after",
        "answered",
        "bodies",
        "bulk",
        "deferred",
        "fragments",
        "frozen",
        "keys",
        "keyset",
        "kind",
        "lane",
        "later",
        "links",
        "moves",
        "owners",
        "parts",
        "positions",
        "runs",
        "safe",
        "sealed",
        "sent",
        "seq",
        "token_flags",
        "tokens",
        "written",
    )

    def __init__(self, kind: OpKind, lane: int, seq: int) -> None:
        self.kind = kind
        self.lane = lane
        self.seq = seq
        self.bodies: list[bytes] = []  # encoded records, or encoded identity strings
        # The record of each operation; None for one added in bulk (`Planner.add_bulk`)
        # until `owners_of` builds it from `parts`: (where its slice begins here, its
        # `Bulk`, the slice of it, whether the run remembers messageIds).
        self.owners: list[Tracked | None] = []
        self.bulk = 0  # operations added in bulk, whose owners are None
        self.parts: list[tuple[int, Bulk, int, int, bool]] = []
        self.positions: list[tuple[str, Position]] = []  # each operation's source and place
        self.keys: list[ProfileKey | None] = []
        self.keyset: set[ProfileKey] = set()
        self.safe: list[bool] = []
        self.runs: dict[str, list[Run]] = {}
        # Handed to the dispatcher (`freeze`): its runs never change again, so the state
        # file's checkpoints serialize them once (`fragments`, by source).
        self.frozen = False
        self.fragments: dict[str, bytes] = {}
        self.tokens = 0
        self.token_flags: list[bool] = []  # which operations are device tokens
        self.sealed = False
        self.sent = False  # written to a connection at least once: CleverTap may have it
        self.answered = False
        # A deletion batch (lane -1): its profiles' later operations, waiting for its
        # answer, in a batch of their own (positions and runs for the state file).
        self.later: Batch | None = None
        self.deferred: list[Deferred] = []  # in that batch of later operations
        # Links (see `Planner.add_encoded`): batches of other lanes that must have their
        # final answer before this one goes, and the profiles whose operations follow
        # this batch's lane for as long as this batch has no answer.
        self.after: list[Batch] = []
        self.links: set[ProfileKey] = set()  # the devices of the links it holds
        self.moves: list[ProfileKey] = []
        self.written: set[ProfileKey] = set()  # devices whose profiles it writes

    def __len__(self) -> int:
        return len(self.bodies)

    def freeze(self) -> None:
        """On its way to CleverTap (sealed and queued): nothing adds to it or moves its
        operations any more, and the planner refuses to (`_unfrozen`)."""
        self.frozen = True

    def owners_of(self) -> list[Tracked]:
        """Every operation's record: those added in bulk are built now (a report line,
        a stop, a batch joined or split needs them; an accepted batch never does)."""
        owners = self.owners
        for start, bulk, first, end, remember in self.parts:
            raws = bulk.raws
            ids = bulk.ids if remember else None
            positions = bulk.positions
            for n in range(first, end):
                source, (line, part, _) = positions[n]
                owners[start + n - first] = Tracked(
                    Origin(source, line, part),
                    None if raws is None else raws[n],
                    NO_MESSAGE,
                    1,
                    None if ids is None else ids[n],
                )
        self.parts = []
        self.bulk = 0
        return owners  # type: ignore[return-value]  # none is None any more

    def __repr__(self) -> str:
        return f"<Batch {self.kind} lane={self.lane} #{self.seq} n={len(self)}>"


class Lane:
    """The upload batch being filled, and the sealed batches waiting to go."""

    __slots__ = ("busy", "last", "open", "queue")

    def __init__(self) -> None:
        self.open: Batch | None = None
        self.queue: deque[Batch] = deque()
        self.busy = False
        self.last: Batch | None = None  # the batch it sealed last (maybe not queued yet)


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
        runs: bool = True,
        remember_links: bool = True,
    ) -> None:
        self.lanes = [Lane() for _ in range(max(1, lanes))]
        # Whether batches keep their runs of positions: only the state file reads them
        # (a run without --state keeps none, and its bulks come without them).
        self.runs = runs
        self._limits = {
            OpKind.UPLOAD: batch_size,
            OpKind.DELETE_IDENTITY: delete_batch_size,
            OpKind.DELETE_GUID: delete_batch_size,
        }
        self._seq = 0
        self._unkeyed = 0
        self._last: Batch | None = None  # the batch the previous operation went to
        self._open_deletes: dict[OpKind, Batch] = {}  # filling, one of each kind
        self._deletes: list[Batch] = []  # deletion batches without their final answer
        # The deleted profiles whose later operations wait: the deletion batch they wait for.
        self._deferred: dict[ProfileKey, Batch] = {}
        self._waiting = 0  # operations in `later` batches
        self._hot: set[ProfileKey] = set()  # deleted again and again before the deletion went
        self._warm: dict[ProfileKey, int] = {}  # deleted again (how often), not hot yet
        # Devices a link wrote, whose operations follow the link's lane while a batch
        # holding one of them there has no answer: that batch (the latest). See
        # `add_encoded`.
        self._moved: dict[ProfileKey, Batch] = {}
        # The batch without its final answer holding each device's latest profile
        # write (`Batch.written`), for a link to wait for.
        self._wrote: dict[ProfileKey, Batch] = {}
        # Profiles a link merged (`link`): each one's group, shared by its members, for
        # as long as the run lasts (a deletion by any of them deletes them all).
        self._linked: dict[ProfileKey, list[ProfileKey]] = {}
        # (none for a run whose mapper never deletes: `RunOptions.remember_links`)
        self._remember_links = remember_links
        self.forgotten_links = 0  # links past LINKED_AT_MOST or GROUP_AT_MOST: not kept

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
            op.kind, op.key, op.body, op.safe, op.token, owner, source, position, gap,
            device=op.device,
        )  # fmt: skip

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
        device: ProfileKey | None = None,
    ) -> list[Batch]:
        """`add` of an operation given by its fields (as the record stage sends them
        back: no `Op` is built for each of a million records), `hashed` its key's
        `profile_hash` if known. Returns the batches sealed, usually none.

        `device`: the objectId's profile the operation writes as a profile or token
        record (not an event's: each carries its own time, and needs order only against
        deletions); see `prepare.device_written`. A *link* is such a write
        keyed by another profile, the user's its `Identity` names (--link-anonymous, an
        alias). It goes in the user's lane, after the user's writes; it must also follow
        the device's profile writes, which may be in another lane, and precede all its
        later operations. So its batch waits for the batch holding the device's latest
        profile write (`Batch.after`; that batch is sealed, so nothing later joins it,
        and a batch only waits for batches sealed before it: none waits in a circle),
        and the device's later operations follow the link's lane until a batch holding
        them there has its answer (`answered`)."""
        if device is not None and key is not None and device != key:
            self.link(key, device)  # (read now: a later block may count on it, `intake`)
        linked = self._linked
        if self._deferred and key is not None:
            # (Whatever waits for a deletion, its whole group waits too: `link`.)
            deletion = self._deferred.get(key)
            if deletion is None and device is not None:
                deletion = self._deferred.get(device)
            if deletion is None and kind is not OpKind.UPLOAD and key in linked:
                # A deletion planned after a wait, of a profile a link read since then
                # merged with one that waits: it waits too (it would take that one's
                # place in `deferred`, and its earlier operations would follow it).
                deletion = self._waiting_member(linked[key])
            if deletion is not None:  # its profile's deletion has no answer yet
                if kind is not OpKind.UPLOAD or (device is not None and device != key):
                    # Its groups wait with it (both, for a link not remembered).
                    together = {key, *linked.get(key, ())}
                    if device is not None:
                        together.update((device, *linked.get(device, ())))
                    self._wait_together(deletion, together)
                op = (kind, key, body, safe, token, owner, source, position, hashed, device)
                return self._defer(deletion, op, gap)
        if kind is not OpKind.UPLOAD:
            return self._add_deletion(kind, key, body, safe, owner, source, position, gap)
        sealed: list[Batch] = []
        before: Batch | None = None
        follow = False  # the user follows the link to another lane (`_free`)
        moved = self._moved
        if moved and key is not None and key in moved:
            number = moved[key].lane
        else:
            number = self.lane_of(key, hashed)
        if device is not None and device != key:  # a link
            before = self._latest(device)
            if before is not None and before.lane == number:
                before = None  # one lane: in order already
            elif before is not None and not before.sealed:
                if self._pullable(before, device):
                    sealed, before = self._pull(before, device, number)
                elif key is not None and self._free(key):
                    # A shared device: its latest write is another user's link. This
                    # user has nothing without an answer: the link goes after that
                    # write, in its lane, and the user's later operations follow it.
                    number, before, follow = before.lane, None, True
                else:
                    sealed = self._seal_open(self.lanes[before.lane])
        more, batch = self._into_lane(number, body, owner, source, position, key, safe, token, gap)
        if follow and key is not None:
            self._move(key, batch)
        if moved or device is not None:
            self._follow(batch, key, device, before)
        return sealed + more

    def _follow(
        self,
        batch: Batch,
        key: ProfileKey | None,
        device: ProfileKey | None,
        before: Batch | None,
    ) -> None:
        """A device's profile write (a link among them), or an operation of a device a
        link moved, just went into `batch`."""
        if device is not None:
            batch.written.add(device)
            self._wrote[device] = batch
            if device != key:  # a link: the device's later operations follow it
                batch.links.add(device)
                batch.keyset.add(device)
                if before is not None and before not in batch.after:
                    batch.after.append(before)
                self._move(device, batch)
        if key is not None and key in self._moved:  # (a link's user too, after a join)
            self._move(key, batch)

    def _free(self, key: ProfileKey) -> bool:
        """Whether no operation of `key` is without its final answer, so that its next
        may go in any lane: none waits or was moved, none is in its lane's open batch
        or in the batches its lane sealed (all of them queued: the last one is)."""
        if key in self._moved or key in self._deferred:
            return False
        lane = self.lanes[self.lane_of(key)]
        if lane.open is not None and key in lane.open.keyset:
            return False
        last = lane.last
        if last is None or last.answered:
            return True
        if not lane.queue or lane.queue[-1] is not last:
            return False  # sealed by the call under way, maybe with others: not known
        return not any(key in batch.keyset for batch in lane.queue)

    def _pullable(self, batch: Batch, device: ProfileKey) -> bool:
        """Whether a link may take the device's operations out of `batch` (the open
        batch of another lane) into its own lane: none of them is a link (whose user's
        order is tied to that lane), and no link moved the device there."""
        return device not in batch.links and device not in self._moved

    def _pull(
        self, batch: Batch, device: ProfileKey, number: int
    ) -> tuple[list[Batch], Batch | None]:
        """A link of `device` goes in lane `number`; the device's operations in
        `batch`, another lane's open batch, go there first, in order, instead of that
        batch being sealed part full (a visitor's anonymous identify, then the one that
        names them, in nearly every export). Returns the batches sealed, and the batch
        the link must still wait for: that lane's last sealed batch, if it has no answer
        yet (the device's earlier writes are there or before it)."""
        owners = batch.owners_of()
        mine = [n for n, key in enumerate(batch.keys) if key == device]
        taken = [
            (batch.bodies[n], owners[n], batch.positions[n], batch.safe[n], batch.token_flags[n])
            for n in mine
        ]
        keep = [n for n in range(len(batch.keys)) if batch.keys[n] != device]
        batch.bodies = [batch.bodies[n] for n in keep]
        batch.owners = [owners[n] for n in keep]
        batch.positions = [batch.positions[n] for n in keep]
        batch.keys = [batch.keys[n] for n in keep]
        batch.safe = [batch.safe[n] for n in keep]
        batch.token_flags = [batch.token_flags[n] for n in keep]
        batch.tokens = sum(batch.token_flags)
        batch.keyset.discard(device)
        batch.written.discard(device)
        if self._wrote.get(device) is batch:
            del self._wrote[device]
        if self.runs:
            _rebuild_runs(batch)
        lane = self.lanes[batch.lane]
        if not batch.bodies:
            lane.open = None
        # The device's earlier writes, if any, are in this lane's batches sealed before:
        # the last of them (maybe not queued yet) goes after all the others.
        before = lane.last if lane.last is not None and not lane.last.answered else None
        sealed: list[Batch] = []
        first: Batch | None = None  # the batch the first of them goes to
        for body, owner, (source, position), safe, token in taken:
            more, into = self._into_lane(number, body, owner, source, position, device, safe, token)
            sealed += more
            first = first or into
        if before is not None and first is not None and before not in first.after:
            first.after.append(before)  # (those after it in its lane follow it)
        self._last = None  # what follows continues no run of these
        return sealed, before

    def _into_lane(
        self,
        number: int,
        body: bytes,
        owner: Tracked,
        source: str,
        position: Position,
        key: ProfileKey | None,
        safe: bool,
        token: bool,
        gap: bool = True,
    ) -> tuple[list[Batch], Batch]:
        """One upload into lane `number`'s open batch (a lane fills one at a time:
        sealed at its size, or at 100 device tokens), continuing the run of positions
        before unless `gap`; the batches sealed, and the one it went to."""
        lane = self.lanes[number]
        sealed: list[Batch] = []
        batch = lane.open
        if batch is not None and token and batch.tokens >= MAX_TOKENS_PER_UPLOAD:
            sealed = self._seal_open(lane)
            batch = None
        if batch is None:
            self._seq += 1
            batch = lane.open = Batch(OpKind.UPLOAD, number, self._seq)
        self._put(batch, body, owner, source, position, key, safe, token, gap)
        if len(batch.bodies) >= self._limits[OpKind.UPLOAD]:
            sealed += self._seal_open(lane)
        return sealed, batch

    def _move(self, device: ProfileKey, batch: Batch) -> None:
        """`batch` holds the device's latest operation in the lane a link moved it to."""
        if self._moved.get(device) is not batch:
            self._moved[device] = batch
            batch.moves.append(device)

    def _latest(self, device: ProfileKey) -> Batch | None:
        """The batch without its final answer holding the latest profile write of
        `device` (or, while a link has moved it, its latest operation: a later one,
        in the same lane); None if none does."""
        return self._moved.get(device) or self._wrote.get(device)

    def link(self, user: ProfileKey, device: ProfileKey) -> None:
        """A link (`add_encoded`) merged the device's profile into the user's at
        CleverTap: from now on a deletion by either key deletes both, so it is ordered
        against both profiles' operations (`_add_deletion`), for the rest of the run
        (whatever later links or deletions do: an order kept that was not needed only
        costs time). The groups are merged, the smaller into the larger.

        What waits for a deletion, its whole group does: a deletion registers its
        group (`_add_deletion`), or waits if one of them waits; a link of a profile
        that waits waits, and registers both groups (merged when the link is read); a
        merge of what waits moves whole groups (`_merge`); and each deletion releases
        what it registered (`release`). So a profile's own entry in `deferred` says
        whether it waits, in one look (the intake's bulk check too)."""
        if not self._remember_links:
            return
        linked = self._linked
        mine = linked.get(user)
        theirs = linked.get(device)
        if mine is not None and mine is theirs:
            return
        size = (1 if mine is None else len(mine)) + (1 if theirs is None else len(theirs))
        new = (mine is None) + (theirs is None)
        if size > GROUP_AT_MOST or (new and len(linked) + new > LINKED_AT_MOST):
            self.forgotten_links += 1
            return
        if mine is None:
            mine = linked[user] = [user]
        if theirs is None:
            theirs = linked[device] = [device]
        if len(mine) < len(theirs):
            mine, theirs = theirs, mine
        mine += theirs
        for profile in theirs:
            linked[profile] = mine

    @property
    def linked(self) -> dict[ProfileKey, list[ProfileKey]]:
        """The profiles a link merged with others, and each one's group (see `link`)."""
        return self._linked

    def _waiting_member(self, group: list[ProfileKey]) -> Batch | None:
        """The deletion a profile of `group` waits for, if one does."""
        deferred = self._deferred
        for profile in group:
            deletion = deferred.get(profile)
            if deletion is not None:
                return deletion
        return None

    def waits(self, bulk: Bulk) -> set[ProfileKey]:
        """The devices of a bulk's links that cannot go in bulk: a link must wait for
        a batch of another lane (`add_encoded`). (`Bulk.split` takes out the records
        of their users too.)"""
        found: set[ProfileKey] = set()
        for n, device in bulk.devices:
            if device != bulk.keys[n]:
                before = self._latest(device)
                if before is not None and before.lane != bulk.lane:
                    found.add(device)
        return found

    def answered(self, batch: Batch) -> None:
        """An upload batch has its final answer: what waits for it may go, and the
        profiles it moved go back to their own lanes once nothing holds them."""
        batch.answered = True
        batch.after = []  # (what it waited for stays no longer in memory)
        if 0 <= batch.lane < len(self.lanes) and self.lanes[batch.lane].last is batch:
            self.lanes[batch.lane].last = None  # (nor itself)
        moved = self._moved
        for key in batch.moves:
            if moved.get(key) is batch:
                del moved[key]
        wrote = self._wrote
        for device in batch.written:
            if wrote.get(device) is batch:
                del wrote[device]

    @property
    def moved(self) -> dict[ProfileKey, Batch]:
        """The devices whose operations follow a link's lane (see `add_encoded`)."""
        return self._moved

    def add_bulk(self, bulk: Bulk, remember: bool) -> list[Batch]:
        """A block's plain records of one lane (`wire.Bulk`), in order, into the lane's
        batches a slice at a time, with no object per record (`Batch.owners_of`).
        The caller has checked that none of their profiles waits for a deletion.
        `remember`: the run remembers their messageIds. Returns the batches sealed."""
        number = bulk.lane
        lane = self.lanes[number]
        limit = self._limits[OpKind.UPLOAD]
        size = len(bulk.bodies)
        sealed: list[Batch] = []
        devices = bulk.devices
        at = 0  # the next of `devices`
        first = 0
        while first < size:
            batch = lane.open
            if batch is None:
                self._seq += 1
                batch = lane.open = Batch(OpKind.UPLOAD, number, self._seq)
            _unfrozen(batch)
            end = min(size, first + limit - len(batch.bodies))
            whole = first == 0 and end == size
            count = end - first
            batch.parts.append((len(batch.bodies), bulk, first, end, remember))
            batch.bulk += count
            batch.owners += [None] * count
            batch.token_flags += [False] * count
            if whole:
                keys = bulk.keys
                batch.bodies += bulk.bodies
                batch.positions += bulk.positions
                batch.keys += keys
                batch.safe += bulk.safe
            else:
                keys = bulk.keys[first:end]
                batch.bodies += bulk.bodies[first:end]
                batch.positions += bulk.positions[first:end]
                batch.keys += keys
                batch.safe += bulk.safe[first:end]
            batch.keyset.update(keys)
            while at < len(devices) and devices[at][0] < end:  # (rare: see `add_encoded`)
                n, device = devices[at]
                key = bulk.keys[n]
                if key is not None and device != key:
                    self.link(key, device)
                self._follow(batch, key, device, None)
                at += 1
            if self.runs:
                runs = bulk.runs if whole else _runs_between(bulk, first, end)
                source = bulk.positions[first][0]
                have = batch.runs.get(source)
                if have is None:
                    batch.runs[source] = list(runs) if whole else runs  # not the `Bulk`'s own
                else:
                    have += runs
            if len(batch.bodies) >= limit:
                sealed += self._seal_open(lane)
            first = end
        # The next operation read continues no run of these: the block's other records
        # were planned before them, though some came earlier in the input.
        self._last = None
        return sealed

    @property
    def deferred(self) -> dict[ProfileKey, Batch]:
        """The deleted profiles whose later operations wait, and the deletion each waits
        for."""
        return self._deferred

    def flush(self, *, join: bool = False, deletions: bool = True) -> list[Batch]:
        """Seal every open batch (end of input). With `join` (only once no sealed batch
        waits or is on the wire), the open batches give their operations to full batches
        of their kind instead (see the module's docstring); the open deletion batches
        only with `deletions` (else they go on filling)."""
        if not join:
            sealed: list[Batch] = []
            for lane in self.lanes:
                sealed += self._seal_open(lane)
            return sealed + self.seal_deletions()
        # Lanes hold no profile in common: their open batches join in any order.
        tails: list[Batch] = []
        kept: list[Batch] = []
        for lane in self.lanes:
            assert not lane.queue, "joined while a lane still had batches to send"
            if lane.open is not None and lane.open.links:
                # A link's two profiles keep their order in its lane: not joined.
                kept += self._seal_open(lane)
            elif lane.open is not None:
                lane.open.owners_of()  # joined batches take each operation's record
                tails.append(lane.open)
                lane.open = None
        self._last = None
        joined = self._join(OpKind.UPLOAD, tails)
        self._place(joined)
        # What pointed at a tail points at the batch its operations joined. A profile's
        # later operations follow its joined batch's lane while it has no answer (as a
        # link's device does): one waiting for a deletion (or for a link that waits for
        # one) may be planned before then. Not when a kept batch (a link's) holds the
        # profile's later operations: they follow that one.
        gone = {id(tail) for tail in tails}
        for batch in joined:
            for device in batch.written:
                if _stale(self._wrote.get(device), gone):
                    self._wrote[device] = batch
            for key in batch.keyset:
                if _stale(self._moved.get(key), gone):
                    self._move(key, batch)
        return kept + joined + (self.seal_deletions() if deletions else [])

    def _join(self, kind: OpKind, tails: list[Batch]) -> list[Batch]:
        """The operations of `tails` (open batches of one kind, one per lane) in full
        batches. A profile's operations stay together, in order: a batch takes whole
        profiles, the first that fit (the others of a tail follow in the next batch), so
        joined batches share no profile and go out side by side (`_place`); only a
        profile with more operations than a request holds is cut, in order. Each
        batch's runs of positions join only operations that were one after another in
        their tail's run."""
        limit = self._limits[kind]
        joined: list[Batch] = []
        for tail in tails:
            runs_of = _runs_of(tail) if self.runs else None
            flags = tail.token_flags
            groups: dict[object, list[int]] = {}  # each profile's operations, in order
            for n, key in enumerate(tail.keys):
                groups.setdefault(key if key is not None else ("", n), []).append(n)
            left = list(groups.values())
            while left:
                batch = joined[-1] if joined else None
                if batch is None or len(batch) >= limit or batch.tokens >= MAX_TOKENS_PER_UPLOAD:
                    batch = self._joined(kind, joined)
                room, token_room = limit - len(batch), MAX_TOKENS_PER_UPLOAD - batch.tokens
                taken: list[int] = []
                rest: list[list[int]] = []
                for group in left:
                    tokens = sum(flags[n] for n in group)
                    if len(group) <= room and tokens <= token_room:
                        taken += group
                        room -= len(group)
                        token_room -= tokens
                    else:
                        rest.append(group)
                if not taken:
                    if len(batch):  # nothing fits what is left of this batch: a new one
                        self._joined(kind, joined)
                        continue
                    # One profile with more than a request holds: as much as fits, in order.
                    group = left[0]
                    fits = 0
                    while fits < len(group) and fits < room:
                        token_room -= flags[group[fits]]
                        if token_room < 0:
                            break
                        fits += 1
                    taken, rest = group[:fits], [group[fits:], *left[1:]]
                _fill(batch, tail, sorted(taken), runs_of)
                left = rest
        return joined

    def _joined(self, kind: OpKind, joined: list[Batch]) -> Batch:
        self._seq += 1
        batch = Batch(kind, 0, self._seq)
        batch.sealed = True
        joined.append(batch)
        return batch

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
        """Batches still being filled (read, not yet sealed), and the operations that
        wait for a deletion's answer."""
        found = [lane.open for lane in self.lanes if lane.open is not None]
        found += self._open_deletes.values()
        found += [d.later for d in self._deletes if d.later is not None]
        return found

    # -- deletions ----------------------------------------------------------------

    def _add_deletion(
        self,
        kind: OpKind,
        key: ProfileKey | None,
        body: bytes,
        safe: bool,
        owner: Tracked,
        source: str,
        position: Position,
        gap: bool,
    ) -> list[Batch]:
        """A deletion joins the open deletion batch of its kind; the profile's later
        operations wait for its answer."""
        linked = key is not None and key in self._linked
        if key is not None and key in self._hot and not linked:  # again and again: alone
            alone = self._new_deletion(kind)
            self._put(alone, body, owner, source, position, key, safe, False, gap)
            self._deferred[key] = alone
            return self._go_alone(alone, key)
        batch = self._open_deletes.get(kind)
        if batch is None:
            batch = self._open_deletes[kind] = self._new_deletion(kind)
        self._put(batch, body, owner, source, position, key, safe, False, gap)
        if key is not None:
            self._deferred[key] = batch
            if linked:
                # It deletes the profiles a link merged with it too: it waits for their
                # earlier operations (`blocked`), and their later ones wait for it. (None
                # of them waits for a deletion already: this one would wait too.)
                for profile in self._linked[key]:
                    self._deferred[profile] = batch
                    batch.keyset.add(profile)
        if len(batch.bodies) >= self._limits[kind]:
            del self._open_deletes[kind]
            self._seal(batch)
            return [batch]
        return []

    def _defer(self, deletion: Batch, op: Deferred, gap: bool) -> list[Batch]:
        """An operation of a profile whose deletion has no answer yet: it waits."""
        self._wait_behind(deletion, op, gap)
        self._waiting += 1
        sealed = self._heat(op[1], deletion) if op[0] is not OpKind.UPLOAD else []
        if self._waiting > DEFER_AT_MOST:  # memory stays bounded: send what they wait for
            sealed += self.unblock(self._deletes)
        return sealed

    def _wait_together(self, deletion: Batch, profiles: Iterable[ProfileKey]) -> None:
        """A link waits for `deletion`: the later operations of both its profiles wait
        behind it. If one of them waits for another deletion already, what waits for
        that one waits for this one instead, in the order it came, and so do their
        profiles' later operations (a profile's waiting operations stay in one list,
        in order; each is checked again when planned, `release`)."""
        deferred = self._deferred
        for profile in profiles:
            other = deferred.get(profile)
            if other is None:
                deferred[profile] = deletion
            elif other is not deletion:
                self._merge(other, deletion)
                deferred[profile] = deletion
            # (released with it, and its later deletions find it: `_wait_for_next`)
            deletion.keyset.add(profile)

    def _merge(self, other: Batch, deletion: Batch) -> None:
        """The operations waiting for `other` wait for `deletion`, after its own, and so
        do their profiles' later ones, with the profiles a link merged with them (a
        group waits whole: `link`)."""
        waiting, other.later = other.later, None
        if waiting is None:
            return
        deferred = self._deferred
        linked = self._linked
        for op in waiting.deferred:
            self._wait_behind(deletion, op, True)
            for profile in (op[1], op[9]):
                if profile is not None and deferred.get(profile) is other:
                    deferred[profile] = deletion
                    for member in linked.get(profile, ()):
                        if deferred.get(member) is other:  # (released with it, then)
                            deferred[member] = deletion
                            deletion.keyset.add(member)
        self._last = None  # the next operation continues no run of these

    def _wait_behind(self, deletion: Batch, op: Deferred, gap: bool) -> None:
        """`op` into the batch of operations waiting for `deletion`'s answer."""
        later = deletion.later
        if later is None:
            later = deletion.later = Batch(OpKind.UPLOAD, -1, 0)
        _, key, body, safe, token, owner, source, position, _, _ = op
        self._put(later, body, owner, source, position, key, safe, token, gap)
        later.deferred.append(op)

    def _new_deletion(self, kind: OpKind) -> Batch:
        self._seq += 1
        batch = Batch(kind, -1, self._seq)
        self._deletes.append(batch)
        return batch

    def _heat(self, key: ProfileKey | None, deletion: Batch) -> list[Batch]:
        """A profile deleted again before its deletion had an answer: a chain of its
        deletions and writes, each waiting for the one before, that batches filling at
        the pace of the other profiles would hold up to the end of the run (one user in
        ten of the messages, deleted 19 times). The `HOT_AFTER`th time, from then on its
        deletions go alone, at once, with its upload batch, part full: a round trip
        each. The deletion it waits for now leaves the shared batch, if that is still
        filling. Before, the deletion waits as any later operation does."""
        if key is None or key in self._linked:  # (a linked profile's deletion waits)
            return []
        warm = self._warm
        times = warm.get(key, 0) + 1
        if times < HOT_AFTER:  # it waits, as any later operation does
            if times == 1 and len(warm) >= HOT_AT_MOST:
                warm.clear()  # (bounded: some profiles start again from cold)
            warm[key] = times
            return []
        warm.pop(key, None)
        if len(self._hot) < HOT_AT_MOST:
            self._hot.add(key)
        if deletion.sealed:  # on its way: the chain goes on from its answer
            return []
        if key not in deletion.keys:  # it waits for a deletion of another profile: a link's
            return []
        if deletion.later is not None and any(
            op[9] is not None and op[9] != op[1] for op in deletion.later.deferred
        ):
            return []  # a link waits for it too: it goes as it is (two profiles' order)
        if len(deletion) > 1:
            deletion = self._take_out(deletion, key)
        elif self._open_deletes.get(deletion.kind) is deletion:
            del self._open_deletes[deletion.kind]
        return self._go_alone(deletion, key)

    def _take_out(self, shared: Batch, key: ProfileKey) -> Batch:
        """The deletion of `key`, and the operations waiting for it, out of `shared` into
        a deletion batch of its own. Runs of positions are rebuilt one position each
        (what was one after another is not any more)."""
        alone = self._new_deletion(shared.kind)
        at = shared.keys.index(key)
        _, position = shared.positions[at]
        source = shared.positions[at][0]
        body, owner, safe = shared.bodies[at], shared.owners_of()[at], shared.safe[at]
        for column in (shared.bodies, shared.owners, shared.positions, shared.keys):
            del column[at]
        del shared.safe[at]
        del shared.token_flags[at]
        shared.keyset.discard(key)
        if self.runs:
            _rebuild_runs(shared)
        self._put(alone, body, owner, source, position, key, safe, False, True)
        self._deferred[key] = alone
        waiting = shared.later
        if waiting is not None:
            mine = [op for op in waiting.deferred if op[1] == key]
            others = [op for op in waiting.deferred if op[1] != key]
            shared.later = self._holding(others)
            alone.later = self._holding(mine)
        self._last = None  # the next operation read continues no run of these
        return alone

    def _holding(self, ops: list[Deferred]) -> Batch | None:
        """A batch of waiting operations (each its own run of positions)."""
        if not ops:
            return None
        later = Batch(OpKind.UPLOAD, -1, 0)
        for _, key, body, safe, token, owner, source, position, _, _ in ops:
            self._put(later, body, owner, source, position, key, safe, token, True)
        later.deferred = ops
        return later

    def _go_alone(self, deletion: Batch, key: ProfileKey) -> list[Batch]:
        """Seal a deletion batch of one profile, and the upload batch holding that
        profile's writes before it (part full), so that the chain moves on."""
        self._seal(deletion)
        moved = self._moved.get(key)
        lane = self.lanes[moved.lane if moved is not None else self.lane_of(key)]
        return [*self._seal_holding(lane, {key}), deletion]

    def blocked(self, deletion: Batch) -> bool:
        """Whether an upload batch without its final answer holds one of the deletion's
        profiles (their operations before the deletion: later ones wait)."""
        keys = deletion.keyset
        for lane in self.lanes:
            for batch in lane.queue:
                if not keys.isdisjoint(batch.keyset):
                    return True
            if lane.open is not None and not keys.isdisjoint(lane.open.keyset):
                return True
        return False

    def seal_deletions(self) -> list[Batch]:
        """The open deletion batches, sealed as they are (the end of the input)."""
        sealed = list(self._open_deletes.values())
        self._open_deletes.clear()
        for batch in sealed:
            self._seal(batch)
        return sealed

    def unblock(self, deletions: list[Batch]) -> list[Batch]:
        """Seal `deletions` and the open upload batches they wait for, as they are: when
        nothing else would move (see `Dispatcher.until`), or too much waits."""
        keys: set[ProfileKey] = set()
        for deletion in deletions:
            keys |= deletion.keyset
        sealed: list[Batch] = []
        for lane in self.lanes:
            sealed += self._seal_holding(lane, keys)
        if any(not d.sealed for d in deletions):
            sealed += self.seal_deletions()
        return sealed  # the upload batches first, then the deletions that wait for them

    def release(self, deletion: Batch) -> list[Batch]:
        """A deletion batch has its final answer: its profiles' later operations are
        planned now, in the order they came (a second deletion among them waits for a
        new deletion batch). Returns the batches that sealed."""
        deletion.answered = True
        self._deletes.remove(deletion)
        deferred = self._deferred
        for profile in deletion.keyset:
            if deferred.get(profile) is deletion:
                self._wait_for_next(profile)
        later, deletion.later = deletion.later, None
        if later is None:
            return []
        self._waiting -= len(later.deferred)
        # Profiles a link made wait for it (`_wait_together`), and those whose waiting
        # operations moved behind it from another deletion (`_merge`).
        for op in later.deferred:
            for linked in (op[1], op[9]):
                if linked is not None and deferred.get(linked) is deletion:
                    self._wait_for_next(linked)
        sealed: list[Batch] = []
        for kind, key, body, safe, token, owner, source, position, hashed, device in later.deferred:
            sealed += self.add_encoded(
                kind, key, body, safe, token, owner, source, position, True, hashed, device
            )
        # The next operation read is no continuation of these (earlier) positions: a run
        # from one of them to it would span the positions between, in other batches.
        self._last = None
        return sealed

    def _wait_for_next(self, profile: ProfileKey) -> None:
        """A deletion `profile` waited for has its answer: its operations wait for the
        latest other deletion of it without an answer, if a link had them wait for
        that one's answer too (`_wait_together`), or for nothing."""
        for deletion in reversed(self._deletes):
            if profile in deletion.keyset:
                self._deferred[profile] = deletion
                return
        del self._deferred[profile]

    def clear(self) -> None:
        """Forget everything not sent (a stop: the dispatcher settles it)."""
        for lane in self.lanes:
            lane.queue.clear()
            lane.open = None
            lane.last = None
        self._open_deletes.clear()
        self._deletes.clear()
        self._deferred.clear()
        self._waiting = 0
        self._last = None
        self._hot.clear()
        self._warm.clear()
        self._moved.clear()
        self._wrote.clear()
        self._linked.clear()

    def _seal(self, batch: Batch) -> None:
        batch.sealed = True
        if self._last is batch:
            self._last = None

    def _put(
        self,
        batch: Batch,
        body: bytes,
        owner: Tracked,
        source: str,
        position: Position,
        key: ProfileKey | None,
        safe: bool,
        token: bool,
        gap: bool,
    ) -> None:
        """One operation into `batch`, continuing the run of positions of the operation
        before if it went to the same batch and nothing was passed over (`gap`)."""
        _unfrozen(batch)
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
        if self.runs:
            runs = batch.runs.get(source)
            if runs is None:
                batch.runs[source] = [[position, position]]
            elif self._last is batch and not gap:
                runs[-1][1] = position
            else:
                runs.append([position, position])
        self._last = batch

    def _seal_open(self, lane: Lane) -> list[Batch]:
        """Seal the lane's open upload batch, if it has one: it goes next in the lane."""
        batch, lane.open = lane.open, None
        if batch is None:
            return []
        self._seal(batch)
        lane.last = batch
        return [batch]

    def _seal_holding(self, lane: Lane, keys: set[ProfileKey]) -> list[Batch]:
        """Seal the lane's open upload batch if it holds one of `keys` (their writes
        before a deletion that must go)."""
        if lane.open is None or keys.isdisjoint(lane.open.keyset):
            return []
        return self._seal_open(lane)


def _stale(batch: Batch | None, gone: set[int]) -> bool:
    """Whether a pointer to `batch` (the latest of some profile's operations) holds
    nothing later than a join: none, answered, or one of the tails joined (`gone`)."""
    return batch is None or batch.answered or id(batch) in gone


def _runs_of(tail: Batch) -> list[int]:
    """The run (its index in the tail's runs of its source) of each of its operations.
    Runs hold operations one after another in the batch, their positions rising; a
    batch's positions need not rise (the writes that waited for a deletion come after
    later ones), so an operation continues the run before it only if its position lies
    in that run and after the one before; otherwise it starts the next run."""
    at: dict[str, int] = {}
    before: dict[str, Position] = {}
    found = []
    for source, position in tail.positions:
        runs = tail.runs[source]
        k = at.get(source, -1)
        if k < 0 or not (runs[k][0] <= position <= runs[k][1] and position > before[source]):
            k += 1
        at[source] = k
        before[source] = position
        found.append(k)
    return found


def _fill(batch: Batch, tail: Batch, taken: list[int], runs_of: list[int] | None) -> None:
    """Operations `taken` of `tail` (in its order) into the joined `batch`; with their
    runs of positions unless `runs_of` is None (the planner keeps none)."""
    _unfrozen(batch)
    previous = -2
    for n in taken:
        source, position = tail.positions[n]
        key = tail.keys[n]
        token = tail.token_flags[n]
        batch.bodies.append(tail.bodies[n])
        batch.owners.append(tail.owners[n])
        batch.positions.append((source, position))
        batch.keys.append(key)
        batch.safe.append(tail.safe[n])
        batch.token_flags.append(token)
        if key is not None:
            batch.keyset.add(key)
            if key in tail.written:
                batch.written.add(key)
        if token:
            batch.tokens += 1
        if runs_of is None:
            continue
        if (
            previous == n - 1
            and runs_of[previous] == runs_of[n]
            and tail.positions[previous][0] == source
        ):
            batch.runs[source][-1][1] = position  # one after another in one run
        else:
            batch.runs.setdefault(source, []).append([position, position])
        previous = n


def _runs_between(bulk: Bulk, first: int, end: int) -> list[Run]:
    """The runs of `bulk`'s operations `first` to `end` (not included): its runs cut at
    both ends (new lists where cut: a run's list is never shared by two batches)."""
    starts, runs, positions = bulk.starts, bulk.runs, bulk.positions
    at = bisect_right(starts, first) - 1  # the run holding operation `first`
    stop = bisect_left(starts, end)  # runs from `at` up to here hold some of them
    cut = runs[at:stop]
    if starts[at] < first:
        cut[0] = [positions[first][1], cut[0][1]]
    last_end = starts[stop] if stop < len(starts) else len(positions)  # past the last run
    if last_end > end:
        cut[-1] = [cut[-1][0], positions[end - 1][1]]
    return cut


def _rebuild_runs(batch: Batch) -> None:
    """Each position its own run: exact, whatever went out of the batch."""
    _unfrozen(batch)
    batch.runs = {}
    for source, position in batch.positions:
        batch.runs.setdefault(source, []).append([position, position])


def _unfrozen(batch: Batch) -> None:
    """A batch on its way must not change: its runs are in the state file as they were
    (`Batch.fragments`), and CleverTap may have its records."""
    if batch.frozen:
        raise RuntimeError(f"batch {batch.seq} changed after it was handed over")
