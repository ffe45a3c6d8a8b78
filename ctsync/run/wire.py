"""What the record stage hands the run: one result per input record, in input order.

The stage (`ctsync.run.stage.RecordStage`) runs in a worker process or in the run's own
process (`--workers 1`, small inputs, JSON documents, `ctsync delete`); the run takes
every result the same way, wherever it was made. This module owns the format at both
ends: the shapes below are the only ones the stage builds and the run reads.

A result is a plain tuple, not a named tuple: it crosses a process boundary once per
record, and pickling a named tuple costs four times a tuple's (measured: 1.4 against
0.2 microseconds a record to dump, 0.8 against 0.4 to load).

    (line, part, code, raw, a, b, lookups, key, probe, day)

- `line`, `part`: the record's place in its source (`Origin`).
- `code`: what became of it, which says what `a` and `b` hold:
    READY    a: its operations (`WireOp`s)   b: None, or `Notes` (warnings, fixes, stub)
    SKIPPED  a: the reason                   b: None
    INVALID  a: the `Invalid`                b: the message stub (for the report line)
    BROKEN   a: the `Invalid` (not a message: bad JSON, too deep, unreadable at line 0)
             b: whether it is the last line of a file without its final newline
    DONE     finished by an earlier run (`--state`): not prepared; a and b: None
    SKIPPED_RUN  records one after another that were all skipped (and need nothing
             else), as one result: a: how many by reason, b: how many; `line` and
             `part` are the last one's. Only in a block no earlier run touched.
- `raw`: the record's line (an array element's JSON when it had none); None for DONE,
  for SKIPPED unless the run may prepare it again (it has `lookups`), and for READY
  in a run that writes no report and no dead letters (`Recipe.lines`), unless it has
  `lookups`.
- `lookups`: the device-token lookups its mapping made, with their answers, when the
  stage keeps its own token set (see `ctsync.run.workers`); empty otherwise.
- BULK     the block's plain records, by lane (see `Bulk`), taken as one result at the
             end of its block: a: the `Bulk`s, b: how many records; `line` and `part`
             are the last one's. Only in a block no earlier run touched.
- `key`, `probe`, `day`: its messageId's dedupe entry (`ctsync.dedupe.Entry`), when
  the run dedupes and it has one and is not skipped (a message the mapping skips is
  counted under its reason, never as a copy: nothing is sent either way), or is skipped
  with token lookups (the run may prepare it again, and then send it); `key` and `day`
  None and `probe` 0 otherwise. Three fields, not a tuple: a tuple per record
  costs its unpickling.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

from ctsync.model import Bulk
from ctsync.prepare import KINDS, UPLOAD_CODE, Encoded, Op, ProfileKey, op_of
from ctsync.records import Invalid, Message, TokenKey
from ctsync.rules import Fix

READY: Final = 0
SKIPPED: Final = 1
INVALID: Final = 2
BROKEN: Final = 3
DONE: Final = 4
SKIPPED_RUN: Final = 5
BULK: Final = 6

Lookups: TypeAlias = tuple[tuple[TokenKey, bool], ...]
"""Each (objectId, token) looked up in the stage's set of tokens sent, and whether it
was there."""

WireOp: TypeAlias = Encoded
"""An operation as it crosses: `prepare.Encoded` (kind code, profile key, body, safe,
token, number, the key's `profile_hash`: computed by the stage, so the run's process
does not hash each key; the device whose profile it writes)."""

Notes: TypeAlias = tuple[list[str], list[Fix], Message]
"""A READY record's warnings (`--validate warn`), fixes (`--validate fix`), and the
stub of its message the report lines read."""

Result: TypeAlias = tuple[
    int, int, int, bytes | None, Any, Any, Lookups, int | None, int, int | None
]

Counts: TypeAlias = dict[str, dict[str, int]]
"""A mapper's counters for one block, by name (`dropped`, `dates`, `untimed`)."""

Prepared: TypeAlias = tuple[list[Result], Counts]
"""A block's results in order, and its mapper counts."""

NO_LOOKUPS: Lookups = ()
NO_LIST: list[Any] = []  # no warnings, no fixes (never changed)
STUB_KEYS: Final = ("messageId", "userId", "anonymousId")


def stub(message: Message) -> Message:
    """What a report line reads of a message (`ledger.report_line`)."""
    return {key: message[key] for key in STUB_KEYS if key in message}


def ops_of(wire: list[WireOp]) -> list[Op]:
    return [op_of(op) for op in wire]


def done(line: int, part: int) -> Result:
    return (line, part, DONE, None, None, None, NO_LOOKUPS, None, 0, None)


def broken(line: int, part: int, raw: bytes | None, error: Invalid, partial: bool) -> Result:
    return (line, part, BROKEN, raw, error, partial, NO_LOOKUPS, None, 0, None)


def skip_runs(results: list[Result]) -> list[Result]:
    """`results` with each run of plain SKIPPED results (no token lookups) as one
    SKIPPED_RUN: half of an export is skipped, and the run's process then takes such a
    stretch in one step instead of one per record."""
    out: list[Result] = []
    reasons: dict[str, int] | None = None
    count = 0
    last: Result | None = None
    for result in results:
        if result[2] == SKIPPED and not result[6]:
            if reasons is None:
                reasons, count = {}, 0
            reason = result[4]
            reasons[reason] = reasons.get(reason, 0) + 1
            count += 1
            last = result
            continue
        if reasons is not None:
            assert last is not None
            out.append(
                (last[0], last[1], SKIPPED_RUN, None, reasons, count, NO_LOOKUPS, None, 0, None)
            )
            reasons = None
        out.append(result)
    if reasons is not None:
        assert last is not None
        out.append((last[0], last[1], SKIPPED_RUN, None, reasons, count, NO_LOOKUPS, None, 0, None))
    return out


BULK_AT_LEAST: Final = 64
"""Plain records in a block below which it goes record by record (nothing to gain)."""


def gather(
    results: list[Result],
    source: str,
    lanes: int,
    *,
    lines: bool,
    dedupe: bool,
    at_least: int = BULK_AT_LEAST,
    runs: bool = True,
) -> list[Result]:
    """`results` (one block's, in order) with its plain records (see `Bulk`) taken out
    into one BULK result at the end; `results` as they are when the block has fewer
    than `at_least`, or two records with one messageId."""
    # Profiles some record that is not plain writes or deletes, or may write: a record
    # with token lookups the run finds wrong is prepared again (`Intake._take_result`),
    # and may then send a token to that token's profile (the objectId's, `token_profile`).
    held: set[ProfileKey] = set()
    looked: set[TokenKey] = set()  # tokens some record that is not plain looks up
    plain: list[tuple[int, Result]] = []  # (its operation's place in the block, result)
    devices = False  # some plain record writes a device's profile (`prepare.device_written`)
    seq = 0  # operations of the block so far
    for result in results:
        lookups = result[6]
        if result[2] != READY:
            if lookups:
                _look(lookups, held, looked)
                if any(found for _, found in lookups):
                    seq += 1  # it passed a token over: no run of positions may cover it
            continue
        ops = result[4]
        if len(ops) == 1 and result[5] is None and all(found for _, found in lookups):
            op = ops[0]
            if op[0] == UPLOAD_CODE and op[1] is not None and not op[4] and op[5] == 0:
                plain.append((seq, result))
                devices = devices or op[7] is not None
                # A record whose token the run sent already ends its run of positions:
                # none may cover its token's (a run resumed without that token's sender
                # would send it again).
                seq += 2 if lookups else 1
                continue
        for op in ops:
            if op[1] is not None:
                held.add(op[1])
            if op[7] is not None:
                held.add(op[7])
        if lookups:
            _look(lookups, held, looked)
        seq += len(ops)
    if len(plain) < max(1, at_least):
        return results
    ids = [result[7] for result in results if result[7] is not None]
    if len(set(ids)) != len(ids):
        return results
    if devices:
        # A link (a device's profile written by a user's record) goes in its user's
        # lane: a device whose profile plain records of two lanes write keeps its order
        # only if they are planned one by one.
        held |= _spread(plain, lanes)
    if held or looked:
        plain, out = _apart(plain, held, looked)
        if out:
            # The records taken out order against the rest in turn: if one of them
            # holds back another plain record, the block goes as it is.
            more_held = {result[4][0][1] for _, result in out}
            more_held |= {result[4][0][7] for _, result in out if result[4][0][7] is not None}
            more_looked: set[TokenKey] = set()
            for _, result in out:
                _look(result[6], more_held, more_looked)
            if not plain or _apart(plain, more_held, more_looked)[1]:
                return results
    kept = {id(result) for _, result in plain}
    rest = [result for result in results if id(result) not in kept]
    by_lane: dict[int, list[tuple[int, Result]]] = {}
    for each in plain:
        lane = each[1][4][0][6] % lanes
        found = by_lane.get(lane)
        if found is None:
            by_lane[lane] = [each]
        else:
            found.append(each)
    bulks = [_bulk(lane, mine, source, lines, dedupe, runs) for lane, mine in by_lane.items()]
    last = plain[-1][1]
    rest.append((last[0], last[1], BULK, None, bulks, len(plain), NO_LOOKUPS, None, 0, None))
    return rest


def _apart(
    plain: list[tuple[int, Result]], held: set[ProfileKey], looked: set[TokenKey]
) -> tuple[list[tuple[int, Result]], list[tuple[int, Result]]]:
    """(the records of `plain` that touch no profile of `held` and look up no token of
    `looked` nor one of a profile of `held` (a record prepared again may send it), the
    others)."""
    kept: list[tuple[int, Result]] = []
    out: list[tuple[int, Result]] = []
    for each in plain:
        result = each[1]
        op = result[4][0]
        touches = (
            op[1] in held
            or (op[7] is not None and op[7] in held)
            or any(key in looked or token_profile(key) in held for key, _ in result[6])
        )
        (out if touches else kept).append(each)
    return kept, out


def _spread(plain: list[tuple[int, Result]], lanes: int) -> set[ProfileKey]:
    """The devices whose profiles plain records of more than one lane write (a device's
    own record, a link: `prepare.device_written`). Its events need no order against
    them (they carry their own time)."""
    seen: dict[ProfileKey, int] = {}
    spread: set[ProfileKey] = set()
    for _, result in plain:
        op = result[4][0]
        device = op[7]
        if device is not None and seen.setdefault(device, op[6] % lanes) != op[6] % lanes:
            spread.add(device)
    return spread


def _look(lookups: Lookups, held: set[ProfileKey], looked: set[TokenKey]) -> None:
    """A record that is not plain looked these tokens up: theirs, and their profiles."""
    for key, _ in lookups:
        looked.add(key)
        held.add(token_profile(key))


def token_profile(key: TokenKey) -> ProfileKey:
    """The profile a device token record writes: its objectId's (`prepare.profile_key`)."""
    return ("guid", str(key[0]))


def _bulk(
    lane: int,
    plain: list[tuple[int, Result]],
    source: str,
    lines: bool,
    dedupe: bool,
    runs: bool = True,
) -> Bulk:
    """One lane's plain records, as columns (a comprehension each: a tenth of an append
    per record and column). Its runs (unless `runs` is False: see `Recipe.runs`):
    records whose operations came one after another in the block."""
    results = [result for _, result in plain]
    ops = [result[4][0] for result in results]
    positions = [(source, (result[0], result[1], 0)) for result in results]
    bulk = Bulk(
        lane,
        bodies=[op[2] for op in ops],
        keys=[op[1] for op in ops],
        safe=[op[3] for op in ops],
        positions=positions,
    )
    if runs:
        seqs = [n for n, _ in plain]
        starts = [0, *(n for n in range(1, len(seqs)) if seqs[n] != seqs[n - 1] + 1)]
        ends = [*starts[1:], len(seqs)]
        bulk.starts = starts
        bulk.runs = [
            [positions[a][1], positions[b - 1][1]] for a, b in zip(starts, ends, strict=True)
        ]
    if lines:
        bulk.raws = [result[3] for result in results]
    bulk.found = [
        (n, tuple(key for key, _ in result[6]), result[3])
        for n, result in enumerate(results)
        if result[6]
    ]
    bulk.devices = [(n, op[7]) for n, op in enumerate(ops) if op[7] is not None]
    if dedupe:
        bulk.ids = [result[7] for result in results]
        bulk.probes = [result[8] for result in results]
        bulk.days = [result[9] for result in results]
    return bulk


def notes_of(result: Result) -> Notes:
    """A READY result's notes (none: empty lists and an empty stub)."""
    notes: Notes | None = result[5]
    return notes if notes is not None else (NO_LIST, NO_LIST, {})


__all__ = [
    "BROKEN",
    "BULK",
    "BULK_AT_LEAST",
    "DONE",
    "INVALID",
    "KINDS",
    "READY",
    "SKIPPED",
    "SKIPPED_RUN",
    "UPLOAD_CODE",
    "Bulk",
    "Counts",
    "Lookups",
    "Notes",
    "Prepared",
    "Result",
    "WireOp",
    "broken",
    "done",
    "gather",
    "notes_of",
    "ops_of",
    "skip_runs",
    "stub",
    "token_profile",
]
