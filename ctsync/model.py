"""The values a run shares with what sends its requests (the CleverTap client, the dry
run, the tests' fakes) and with the state file: the request, the `Sender` that sends it,
the hook called when it may reach CleverTap, each record's `Verdict`, an operation's
`Position` in its input, the request bodies as they go on the wire, and the `Bulk` of
plain records the record stage hands the planner.

Imported by the run without the HTTP client, so a dry run never loads httpx; and by the
client and the state file without the run's accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeAlias

from ctsync.prepare import ProfileKey
from ctsync.records import DeleteKey, Outcome, Stage, TokenKey

Position: TypeAlias = tuple[int, int, int]
"""Where an operation comes from in its source: (line, part within the line, operation)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happened to one operation: accepted, or rejected/failed with a code and why."""

    outcome: Outcome
    code: str = ""
    message: str = ""
    stage: Stage = Stage.API


ACCEPTED = Verdict(Outcome.ACCEPTED)

UNKNOWN = "outcome-unknown"
"""The code of a record whose request may or may not have been stored by CleverTap."""

OnWire = Callable[[], None]
"""Called when a request is about to be written to a connection (CleverTap may get it)."""


class Request(NamedTuple):
    """What a sender (a `model.Sender`) sends: an upload (`delete` is None) or a
    deletion by identity or CleverTap ID, of encoded records, with each record's profile
    key and whether it may be sent again after an unclear answer (see `client.upload`)."""

    delete: DeleteKey | None
    bodies: Sequence[bytes]
    keys: Sequence[ProfileKey | None]
    resend: Sequence[bool]


class Sender(Protocol):
    """Where requests go: CleverTap (`client.CleverTapClient`) or nowhere (the dry run's
    `run.DryRunSender`)."""

    requests: int
    retries: int

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        """One verdict per record of `request`, in order; `on_wire` is called when the
        request may reach CleverTap (see `client.OnWire`)."""


@dataclass(slots=True)
class Bulk:
    """A block's *plain* records that go to one lane, as columns, in input order: the
    run's process adds them to the lane's batches a slice at a time (`Planner.add_bulk`)
    instead of record by record, and keeps no object for each of them until one needs
    a report line (`Batch.owners_of`).

    A plain record has one operation, numbered 0: an upload with a profile key and no
    device token, without notes; no other record of its block writes to or deletes its
    profile, nor the device's whose profile it writes (`devices`) unless it is a plain
    record of the same lane, and no other record of its block has its messageId (so
    taking them after the block's other records changes no order CleverTap or the
    dedupe sees). It may have looked up device tokens the stage's set had already sent
    (`found`: each such record's index, those tokens, its line), if no other record of
    its block looks up one of them or writes their profile (`wire.token_profile`): the
    run checks them against its own set first (`Intake._take_bulk`).

    `runs`: the positions that came one after another (no other operation of the block
    between them, and no token passed over after them), each `[first, last]`, and
    `starts` the index of each run's first operation; both empty in a run without a
    state file (`Recipe.runs`), whose planner keeps no runs. `raws` only when the run writes
    lines (`Recipe.lines`); `ids`, `probes`, `days` (each record's dedupe entry, or
    None) only when it dedupes."""

    lane: int
    bodies: list[bytes] = field(default_factory=list)
    keys: list[ProfileKey] = field(default_factory=list)
    safe: list[bool] = field(default_factory=list)
    positions: list[tuple[str, Position]] = field(default_factory=list)
    runs: list[list[Position]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    raws: list[bytes | None] | None = None
    ids: list[int | None] | None = None
    probes: list[int] | None = None
    days: list[int | None] | None = None
    found: list[tuple[int, tuple[TokenKey, ...], bytes | None]] = field(default_factory=list)
    # The records that write a device's profile (`prepare.device_written`): each one's
    # index and that device. A link among them waits for nothing: the run checks first
    # (`Intake._take_bulk`), and marks its batch (`Planner.add_bulk`).
    devices: list[tuple[int, ProfileKey]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bodies)

    def split(self, keys: set[ProfileKey]) -> tuple[Bulk, Bulk]:
        """(its records of profiles not in `keys`, those of profiles in `keys`), each in
        order. A record that writes a device's profile (a link) touches two: if one is
        in `keys`, both are (the records of either go the same way, so the order of
        both profiles holds). A run of either never spans a record of the other."""
        if self.devices:
            keys = set(keys)
            grew = True
            while grew:
                grew = False
                for n, device in self.devices:
                    key = self.keys[n]
                    if (key in keys) != (device in keys):
                        keys |= {key, device}
                        grew = True
        devices = dict(self.devices)
        out = [n for n, key in enumerate(self.keys) if key in keys or devices.get(n) in keys]
        taken = set(out)
        kept = [n for n in range(len(self.keys)) if n not in taken]
        return self._pick(kept), self._pick(out)

    def _pick(self, picked: list[int]) -> Bulk:
        """Its records `picked` (indexes, rising): a run goes on only from one record to
        the next of its own run."""
        part = Bulk(
            self.lane,
            bodies=[self.bodies[n] for n in picked],
            keys=[self.keys[n] for n in picked],
            safe=[self.safe[n] for n in picked],
            positions=[self.positions[n] for n in picked],
        )
        if self.raws is not None:
            part.raws = [self.raws[n] for n in picked]
        if self.ids is not None and self.probes is not None and self.days is not None:
            part.ids = [self.ids[n] for n in picked]
            part.probes = [self.probes[n] for n in picked]
            part.days = [self.days[n] for n in picked]
        if self.found or self.devices:
            index = {n: i for i, n in enumerate(picked)}
            part.found = [(index[n], keys, raw) for n, keys, raw in self.found if n in index]
            part.devices = [(index[n], device) for n, device in self.devices if n in index]
        if not self.starts:  # no runs (see `Recipe.runs`): none for its parts either
            return part
        starts = set(self.starts)
        for at, n in enumerate(picked):
            position = self.positions[n][1]
            if at and picked[at - 1] == n - 1 and n not in starts:
                part.runs[-1][1] = position
            else:
                part.starts.append(at)
                part.runs.append([position, position])
        return part


def upload_body(bodies: Sequence[bytes]) -> bytes:
    """`{"d": [...]}` joined from encoded records."""
    return b'{"d":[' + b",".join(bodies) + b"]}"


def delete_body(key: DeleteKey, bodies: Sequence[bytes]) -> bytes:
    """`{"identity": [...]}` (or `guid`) joined from encoded strings."""
    return b'{"' + key.encode() + b'":[' + b",".join(bodies) + b"]}"


__all__ = [
    "ACCEPTED",
    "UNKNOWN",
    "Bulk",
    "OnWire",
    "Position",
    "Request",
    "Sender",
    "Verdict",
    "delete_body",
    "upload_body",
]
