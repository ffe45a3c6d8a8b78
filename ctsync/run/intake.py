"""The run's one intake: every result of the record stage, wherever it was made, taken in
input order into the ledger and the planner's batches.

Most records come in bulk (`_take_bulk`): a block's plain records, by lane, claimed and
added to their batches a slice at a time, after the block's other records (see
`wire.Bulk`). Of the others, most take the short way (`Intake.take`): sent or skipped,
nothing for the report, no token the run's set disagrees on, nothing an earlier run
settled. The rest take the long way (`_take_result`): resumed (`--state`), left for the
next run, a copy of a message already sent, prepared again against the run's tokens, or
written to the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import orjson

from ctsync.batching import NO_MESSAGE, Planner
from ctsync.dedupe import DUPLICATE_MESSAGE_ID, Group, MessageIds
from ctsync.ledger import Tracked
from ctsync.model import UNKNOWN, Position, Verdict
from ctsync.prepare import Op, ProfileKey, ValidateMode
from ctsync.reader import InputRecord
from ctsync.records import Message, Origin, Outcome, Stage, counting
from ctsync.run.accounts import Accounts
from ctsync.run.dispatch import Dispatcher
from ctsync.run.feed import Feed
from ctsync.run.options import Control, RunOptions
from ctsync.run.stage import (
    Recipe,
    RecordStage,
    lookups_hold,
    tokens_sent,
    without_sent_tokens,
)
from ctsync.run.wire import (
    BROKEN,
    BULK,
    DONE,
    INVALID,
    KINDS,
    READY,
    SKIPPED,
    SKIPPED_RUN,
    UPLOAD_CODE,
    Bulk,
    Result,
    WireOp,
    notes_of,
    ops_of,
)
from ctsync.state import Progress, Resume, Seen

YIELD_EVERY = 32
"""Records taken between two looks at the event loop (see `Coordinator.pace`)."""

UNKNOWN_EARLIER = Verdict(
    Outcome.FAILED,
    UNKNOWN,
    "on the wire when an earlier run stopped: CleverTap may or may not have stored it, so it "
    "was not sent again (use --retry-unknown to send such records again)",
    Stage.TRANSPORT,
)


class Intake:
    """Results in, operations planned into batches (handed to the dispatcher as they
    seal), every record read counted once."""

    def __init__(
        self,
        *,
        accounts: Accounts,
        planner: Planner,
        dispatcher: Dispatcher,
        feed: Feed,
        control: Control,
        options: RunOptions,
        pace: Callable[[], Awaitable[None]],
        ids: MessageIds | None,
        tokens: set[tuple[str, str]],
        recipe: Recipe | None,
    ) -> None:
        self._accounts = accounts
        self._ledger = accounts.ledger
        self._planner = planner
        self._dispatcher = dispatcher
        self._feed = feed
        self._control = control
        self._options = options
        self._pace = pace
        self._ids = ids
        # The run's device tokens sent: a record's tokens join it when it is planned; a
        # stage's lookups that disagree with it are prepared again here (`_again`).
        self._tokens = tokens
        self._recipe = recipe
        self._again: RecordStage | None = None
        self._gap = False  # positions were passed over since the last operation planned
        self._source: str | None = None  # the source of the last results taken
        self.last_line = 0  # of the last result taken (its line, or element, in `_source`)
        self.taken = 0  # records taken
        self._look_at = YIELD_EVERY  # ... when the pace is next asked for
        self.resumed: Counter[str] = Counter()  # done / resent / unknown, for the notes

    @property
    def source(self) -> str | None:
        """The source of the last results taken."""
        return self._source

    async def take(
        self, source: str, progress: Progress | None, results: list[Result], settled: bool
    ) -> None:
        """Results of the record stage for `source`, in order. `settled`: an earlier run
        settled some of their positions (every record then takes the long way). This loop
        runs in the run's process for every record, and its cost bounds what more worker
        processes can give."""
        group = progress.key if progress is not None else None
        if source != self._source:  # a new source: runs of positions start afresh
            self._source = source
            self._gap = True
            self._accounts.groups[source] = group
        take = self._take_result
        summary = self._ledger.summary
        skipped = summary.skipped
        plan = self._plan_new
        dispatcher = self._dispatcher
        control = self._control
        window = self._options.window
        ids = self._ids
        # A block with plain records taken in bulk (its last result) is taken in one
        # step: no turn of the event loop, no checkpoint, no stop in the middle of it,
        # since its other records are taken first though some came later in the input
        # (a state file written in between would call the bulk ones read).
        whole = bool(results) and results[-1][2] == BULK
        if whole and _deletes_a_link(results, self._planner):
            results = _in_input_order(results)
            whole = False
        for result in results:
            line, part, code, raw, a, b, lookups, key, probe, day = result
            if whole:  # bulk records may lie between this one and the one before
                self._gap = True
            if code == SKIPPED_RUN:
                summary.read += b
                for reason, count in a.items():  # a third of `Counter.update`'s cost
                    skipped[reason] += count
                if progress is not None:
                    progress.position = (line, part)
                self.taken += b - 1  # and one below
            elif code == BULK:
                summary.read += b
                if progress is not None and progress.position < (line, part):
                    progress.position = (line, part)
                self._take_bulk(source, a, group, progress)
                self.taken += b - 1  # and one below
            elif settled or lookups or b is not None:
                take(source, result, progress)
            elif code == READY:
                summary.read += 1
                if progress is not None:
                    progress.position = (line, part)
                if key is None or ids is None:
                    plan(source, line, part, raw, NO_MESSAGE, a, key, day, group)
                elif ids.claim(key, probe, day, group):  # a copy of a message sent
                    skipped[DUPLICATE_MESSAGE_ID] += 1
                    # No pending span may cover a copy: a resumed run would send it.
                    self._gap = True
                else:
                    plan(source, line, part, raw, NO_MESSAGE, a, key, day, group, True)
            elif code == SKIPPED:
                summary.read += 1
                skipped[a] += 1
                if progress is not None:
                    progress.position = (line, part)
            else:
                take(source, result, progress)
            # The pace only when it has something to do: a coroutine per record costs.
            self.taken += 1
            if whole:
                continue
            if dispatcher.queued >= window or self.taken >= self._look_at:
                self._look_at = self.taken + YIELD_EVERY
                await self._pace()
            else:
                control.check()
            if control.stopping:  # after the take: no record read is left unaccounted
                self.last_line = line
                return
        if results:  # the block's last line: a BULK result's is its last plain record's
            self.last_line = max(result[0] for result in results)
        if whole:
            self._look_at = self.taken + YIELD_EVERY
            await self._pace()

    def _take_bulk(
        self, source: str, bulks: list[Bulk], group: Group, progress: Progress | None
    ) -> None:
        """A block's plain records (`wire.Bulk`), after its other records: claimed (the
        dedupe), then added to their lanes a slice at a time. Any that is a copy of a
        message sent makes its block's records go one by one instead; so do the records
        of a profile that waits for a deletion. A device token the stage found sent and
        the run did not send (its sender was a copy, or invalid) makes them all take the
        long way, in input order, as if they had come one by one."""
        tokens = self._tokens
        for bulk in bulks:
            for _, keys, _ in bulk.found:
                for token in keys:
                    if token not in tokens:
                        self._the_long_way(source, bulks, progress)
                        return
        ids = self._ids
        copies: set[int] = set()
        if ids is not None:
            for bulk in bulks:
                if bulk.ids is None or bulk.probes is None or bulk.days is None:
                    continue
                for n in ids.claim_all(bulk.ids, bulk.probes, bulk.days, group):
                    copies.add(bulk.ids[n])  # type: ignore[arg-type]  # a copy has an id
        planner = self._planner
        enqueue = self._dispatcher.enqueue
        deferred = planner.deferred
        moved = planner.moved
        remember = ids is not None
        for bulk in bulks:
            if copies:  # rare: every record of the block one by one
                self._one_by_one(source, bulk, copies, group)
                continue
            waiting: set[ProfileKey] = set()
            if deferred or moved:
                profiles = set(bulk.keys)
                profiles.update(device for _, device in bulk.devices)
                waiting = deferred.keys() & profiles
                # A device a link moved to this very lane goes on in bulk: its profile
                # writes mark their batch (`Bulk.devices`), its events need no order
                # against them. A user a joined flush moved does not.
                waiting.update(
                    p
                    for p in moved.keys() & profiles
                    if moved[p].lane != bulk.lane or not isinstance(p, tuple)
                )
            if bulk.devices:
                waiting |= planner.waits(bulk)
            # Those profiles' records wait for a deletion's answer, or follow a link's
            # lane, or are links that wait for another lane (`Planner.add_encoded`).
            if waiting:
                bulk, wait = bulk.split(waiting)
                self._one_by_one(source, wait, copies, group)
                if not bulk.bodies:
                    continue
            sealed = planner.add_bulk(bulk, remember)
            if sealed:
                enqueue(sealed)

    def _the_long_way(self, source: str, bulks: list[Bulk], progress: Progress | None) -> None:
        """A block's plain records, each taken as the result it was before `wire.gather`
        took it out (`_take_result`: its lookups checked, prepared again if they do not
        hold), in input order. They were counted read in bulk: each counts as it goes."""
        results = sorted(_unbulked(bulks), key=lambda result: (result[0], result[1]))
        self._ledger.summary.read -= len(results)
        for result in results:
            self._gap = True  # each its own run of positions (see `_one_by_one`)
            self._take_result(source, result, progress)
        self._gap = True

    def _one_by_one(self, source: str, bulk: Bulk, copies: set[int], group: Group) -> None:
        """Plain records of one lane, each planned as a record of its own (claimed
        already): copies are skipped, and a profile that waits for a deletion waits."""
        skipped = self._ledger.summary.skipped
        raws, ids, days = bulk.raws, bulk.ids, bulk.days
        devices = dict(bulk.devices)
        for n, (_, (line, part, number)) in enumerate(bulk.positions):
            key = None if ids is None else ids[n]
            # Each its own run of positions: the block's other records, some between
            # these in the input, were planned before them.
            self._gap = True
            if key is not None and key in copies:
                skipped[DUPLICATE_MESSAGE_ID] += 1
                continue
            op: WireOp = (
                UPLOAD_CODE,
                bulk.keys[n],
                bulk.bodies[n],
                bulk.safe[n],
                False,
                number,
                None,
                devices.get(n),
            )
            raw = None if raws is None else raws[n]
            day = None if days is None else days[n]
            self._plan_new(source, line, part, raw, NO_MESSAGE, [op], key, day, group, True)
        self._gap = True

    def _take_result(self, source: str, result: Result, progress: Progress | None) -> None:
        line, part, code, raw, a, b, lookups, key, _, day = result
        resume = None
        if progress is not None:
            if code == BROKEN and b and a.code == "malformed-json" and self._feed.may_grow(source):
                self._feed.left_for_next_run(Origin(source, line, part))
                return
            done, resume = self._resume_at(line, part, progress)
            if done:
                return
        ledger = self._ledger
        again = bool(lookups) and not lookups_hold(self._tokens, lookups)
        if again and code == READY and b is None:  # most often: leave out tokens sent
            trimmed = without_sent_tokens(a, lookups, self._tokens)
            if trimmed is not None:
                a, lookups = trimmed
                again = False
        if again:
            # The stage's set of tokens sent differs from the run's (another worker sent
            # one first, or a record before this one was a copy or refused, so its tokens
            # were never sent): prepare the record again here, against the run's set. Its
            # messageId's entry too: a message skipped has none, one sent has one.
            assert raw is not None
            record = InputRecord(Origin(source, line, part), raw, orjson.loads(raw), None)
            result = self._stage_again().record(record, None)
            code, a, b, lookups, key, day = (
                result[2], result[4], result[5], result[6], result[7], result[9]
            )  # fmt: skip
            # It maps against the run's set, which takes the tokens it sends: take them
            # back, as for any record, they count as sent once it is planned (below).
            self._tokens.difference_update(tokens_sent(lookups))
        if (
            key is not None
            and code != SKIPPED  # never counted as a copy: nothing is sent either way
            and resume is None
            and self._ids is not None
            and self._ids.seen(key)
        ):
            ledger.read()
            ledger.skip(DUPLICATE_MESSAGE_ID)
            self._gap = True  # no pending span may cover a copy: a resumed run would send it
            return
        if code != READY:
            if self._done_before(resume):
                return
        elif lookups:
            # A record's tokens count as sent once it is planned, never before: a copy or
            # a refused record sends none, and a later record sends them instead.
            self._tokens.update(tokens_sent(lookups))
        ledger.read()
        if code == SKIPPED:
            ledger.skip(a)
        elif code == READY:
            warnings, fixes, stub = notes_of(result)
            group = progress.key if progress is not None else None
            origin = Origin(source, line, part)
            if resume is not None:  # the earlier run that read it counted and reported these
                self._plan_resumed(origin, raw, stub, ops_of(a), resume, key, day, group)
                return
            for warning in warnings:
                ledger.summary.warnings[warning] += 1
            for fix in fixes:
                ledger.fixed(origin, stub, fix.field, fix.code, fix.message)
            self._plan_new(source, line, part, raw, stub, a, key, day, group)
        elif code == INVALID:
            ledger.invalid(Origin(source, line, part), raw, b, a)
        elif code == BROKEN:
            ledger.invalid(Origin(source, line, part), raw, None, a)
        else:
            assert code != DONE, "the stage passed over a record this run must read"
            raise AssertionError(f"unknown result code {code}")
        if lookups and any(found for _, found in lookups):
            # It passed over a token the run sent already (after its last operation, or
            # its only one: a skip). No run of positions may cover that token's number:
            # a resumed run lacks the tokens of the records it does not read again, and
            # would send it. (`_plan_new` leaves a gap for a token between operations.)
            self._gap = True

    def _resume_at(self, line: int, part: int, progress: Progress) -> tuple[bool, Resume | None]:
        """(whether an earlier run finished this record, its resume if it left some of it)"""
        where = (line, part)
        resume: Resume | None = progress.resume
        assert resume is not None
        if resume.untouched(line, part):
            resume = None
        elif not resume.touches(line, part):
            progress.position = max(progress.position, where)
            self.resumed["done"] += 1
            self._gap = True
            return True, None
        progress.position = max(progress.position, where)
        return False, resume

    def _done_before(self, resume: Resume | None) -> bool:
        """Whether a record with nothing to send (skipped, invalid) was read again only
        because it lies among the positions of a batch an earlier run left pending: that
        run counted and reported it, so this one must not again."""
        if resume is None:
            return False
        self.resumed["done"] += 1
        return True

    def _stage_again(self) -> RecordStage:
        # Not the run's own mapper: the stage's block counts (dropped values, dates left
        # as text) already hold this record's, and they do not depend on the token set, so
        # counting its second preparation too would count it twice. This stage's counts
        # are never read; it maps against the run's token set, and reports its lookups.
        if self._again is None:
            recipe = self._recipe
            assert recipe is not None, "only a stage built from a recipe reports lookups"
            validator = recipe.validator() if recipe.mode is not ValidateMode.OFF else None
            mapper = recipe.mapper(self._tokens)
            log = counting(mapper).tokens.watch()
            dedupe = self._ids is not None  # its messageId's entry (see `_take_result`)
            self._again = RecordStage(mapper, validator, recipe.mode, dedupe=dedupe, log=log)
        return self._again

    def _plan_new(
        self,
        source: str,
        line: int,
        part: int,
        raw: bytes | None,
        message: Message,
        ops: list[WireOp],
        key: int | None,
        day: int | None,
        group: Group,
        claimed: bool = False,
    ) -> None:
        """A record none of whose operations an earlier run settled: every one goes to
        its batch. `message` may be just what the report reads of it when `raw` is given.
        `claimed`: its messageId is remembered already (`MessageIds.claim`)."""
        dedupe = None
        if key is not None and self._ids is not None:  # its copies are duplicates from now on
            dedupe = key
            if not claimed:
                self._ids.remember(key, day, group)
        tracked = Tracked(Origin(source, line, part), raw, message, len(ops), dedupe)
        add = self._planner.add_encoded
        enqueue = self._dispatcher.enqueue
        previous = -1
        for kind, profile, body, safe, token, index, hashed, device in ops:
            # A number passed over (a device token the run sent already): no run of
            # positions may cover it, or a resumed run would send that token again.
            gap = self._gap or index != previous + 1
            sealed = add(
                KINDS[kind], profile, body, safe, token, tracked, source,
                (line, part, index), gap, hashed, device,
            )  # fmt: skip
            self._gap = False
            previous = index
            if sealed:
                enqueue(sealed)

    def _plan_resumed(
        self,
        origin: Origin,
        raw: bytes | None,
        message: Message,
        ops: list[Op],
        resume: Resume,
        dedupe_key: int | None,
        day: int | None,
        group: Group,
    ) -> None:
        """A record an earlier run left pending: only some operations are still to do."""
        source = origin.source
        enqueue = self._dispatcher.enqueue
        planned: list[tuple[Op, bool]] = []  # (operation, sent before: may be stored)
        known: list[tuple[Position, Verdict]] = []  # verdicts without a report line yet
        for op in ops:
            position = (origin.line, origin.part, op.number)
            seen = resume.seen(position)
            if seen is Seen.DONE:
                continue
            if seen is Seen.SETTLED:
                span = resume.span(position)
                assert span is not None and span.verdict is not None
                outcome, code, text, stage = span.verdict
                known.append((position, Verdict(Outcome(outcome), code, text, Stage(stage))))
            elif seen is Seen.UNKNOWN and not (op.safe or self._options.retry_unknown):
                self.resumed["unknown"] += 1
                known.append((position, UNKNOWN_EARLIER))
            else:
                planned.append((op, seen is Seen.UNKNOWN))
        dedupe = None
        if dedupe_key is not None and self._ids is not None:
            # An earlier run planned it: it is no copy of itself.
            self._ids.remember(dedupe_key, day, group)
            dedupe = dedupe_key
        tracked = Tracked(origin, raw, message, len(planned) + len(known), dedupe)
        for position, verdict in known:
            self._accounts.settle(tracked, source, position, verdict)
        previous = -1
        for op, resent in planned:
            position = (origin.line, origin.part, op.number)
            # A settled position just before this one: no run of positions may cross it.
            gap = self._gap or op.number != previous + 1
            self.resumed["resent"] += resent
            enqueue(self._planner.add(op, tracked, source, position, gap))
            self._gap = False
            previous = op.number
        # Settled positions, or a token passed over, may end the record.
        self._gap = True


def _unbulked(bulks: list[Bulk]) -> list[Result]:
    """The plain records of `bulks`, each the result it was before `wire.gather` took it
    out, lane by lane (not in input order)."""
    results: list[Result] = []
    for bulk in bulks:
        found = {n: (keys, raw) for n, keys, raw in bulk.found}
        devices = dict(bulk.devices)
        raws, ids, probes, days = bulk.raws, bulk.ids, bulk.probes, bulk.days
        for n, (_, (line, part, number)) in enumerate(bulk.positions):
            keys, raw = found.get(n, ((), None if raws is None else raws[n]))
            op: WireOp = (
                UPLOAD_CODE, bulk.keys[n], bulk.bodies[n], bulk.safe[n], False, number,
                None, devices.get(n),
            )  # fmt: skip
            results.append((
                line, part, READY, raw, [op], None, tuple((key, True) for key in keys),
                None if ids is None else ids[n], 0 if probes is None else probes[n],
                None if days is None else days[n],
            ))  # fmt: skip
    return results


def _deletes_a_link(results: list[Result], planner: Planner) -> bool:
    """Whether a block taken in bulk (its last result) may delete a profile an earlier
    block's link merged with others (`Planner.link`: the stage's `wire.gather` sees only
    its block): it deletes a profile of a group, or links one to a profile it deletes
    (a link of such a profile is never plain). Its plain records are planned after its
    other records, so one of that group's plain records would then be planned after a
    deletion that came later in the input, and wait for its answer: the block goes in
    input order instead."""
    linked = planner.linked
    if not linked:
        return False
    deletes = False
    touched: set[ProfileKey] = set()  # profiles its deletions and links name
    for result in results[:-1]:
        if result[2] == READY:
            for op in result[4]:
                if op[0] != UPLOAD_CODE:
                    deletes = True
                    touched.add(op[1])
                elif op[7] is not None and op[7] != op[1]:
                    touched.update((op[1], op[7]))
    return deletes and not touched.isdisjoint(linked)


def _in_input_order(results: list[Result]) -> list[Result]:
    """A block taken in bulk as if `wire.gather` had left it as it was: its plain records
    back among the others, in input order."""
    *others, bulk = results
    return sorted([*others, *_unbulked(bulk[4])], key=lambda result: (result[0], result[1]))
