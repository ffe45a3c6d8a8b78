"""The record stage: one input record in, one `wire.Result` out (decode, map, convert,
validate, encode). The same code runs in the run's own process and in a worker process
(`ctsync.run.workers`): `--workers 1` is this stage run locally, not a second path.

A worker rebuilds the mapper and validator from a `Recipe` (module-level functions and
their arguments: a preset name, a mapping file's document, the options), never from a
pickled mapper. What a mapper remembers across records stays exact:

- device tokens sent once per run: a worker's stage keeps its own set and reports every
  lookup it made in it (`prepare` asks the set of each token record the mapper made).
  The run holds the one true set; when a worker's answer differs from it (another
  worker sent that token first, or an earlier record was not prepared in this run) the
  run prepares that record again itself, against the true set (`lookups_hold`), or
  leaves out the token records it sent already (`without_sent_tokens`). Neither a
  mapper's output nor its counters depend on that set, and an operation keeps its
  number (its place in the mapper's output) whichever tokens were left out.
- the counters of values left out and dates left as text: each block's counts come back
  with it and are added to the run's mapper (`add_counts`).
- records an earlier run finished (`--state`) are not mapped at all: the block carries
  the input's `Resume`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from ctsync.dedupe import entry
from ctsync.prepare import Skipped, ValidateMode, Validator, prepare
from ctsync.reader import Block, InputRecord, decode_block
from ctsync.records import Invalid, Mapper, TokenKey, counting
from ctsync.run.wire import (
    BULK_AT_LEAST,
    INVALID,
    NO_LOOKUPS,
    READY,
    SKIPPED,
    Counts,
    Lookups,
    Prepared,
    Result,
    WireOp,
    broken,
    done,
    gather,
    skip_runs,
    stub,
)

MapperFactory: TypeAlias = Callable[[set[TokenKey]], Mapper]
"""Builds a mapper that records the (objectId, token) pairs it sends in the given set."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to build the pure stage anywhere: picklable factories, not built functions."""

    mapper: MapperFactory
    validator: Callable[[], Validator | None]
    mode: ValidateMode = ValidateMode.STRICT
    dedupe: bool = False  # send each record's messageId key back (see ctsync.dedupe)
    # Send each record that goes to CleverTap back with its line: only the report and the
    # dead letters read it. The run sets it from its ledger (`Ledger.writes_lines`); a
    # run without them receives half the bytes from its workers and keeps no line in
    # memory for the records in flight.
    lines: bool = True
    # The run's upload lanes (`Planner.lanes`): with them a block's plain records come
    # back by lane (`wire.gather`); 0: record by record. The run sets it.
    lanes: int = 0
    bulk_from: int = BULK_AT_LEAST  # plain records a block needs to go in bulk (tests: 1)
    # Bulks with their runs of positions: only the state file reads them. A run without
    # one sets it False (its planner keeps no runs), and then unpickles half the bytes'
    # objects (measured: 0.78 against 0.38 microseconds a message, classic preset).
    runs: bool = True


class RecordStage:
    """The record stage of one run in one process: decode, map, convert, validate and
    encode, one input record in, one `wire.Result` out. The same code runs in a worker
    process and in the run's own process.

    Built `from_recipe` (in a worker, and in the run's own process), it keeps its own
    set of tokens sent and reports each lookup (see the module's docstring), and its
    counters go back with each block (`counts`). Built on a bare mapper (a run given no
    recipe, `ctsync delete`), the mapper's own token set and counters are used as they
    are."""

    def __init__(
        self,
        mapper: Mapper,
        validator: Validator | None,
        mode: ValidateMode,
        *,
        dedupe: bool,
        log: list[tuple[TokenKey, bool]] | None = None,
        counted: bool = False,
        stubs: bool = False,
        lines: bool = True,
        lanes: int = 0,
        bulk_from: int = BULK_AT_LEAST,
        runs: bool = True,
    ) -> None:
        self.mapper = mapper
        self.tokens = counting(mapper).tokens  # asked of its token records (`prepare`)
        self.validator = validator if mode is not ValidateMode.OFF else None
        self.mode = mode
        self.dedupe = dedupe
        self._log: list[tuple[TokenKey, bool]] = [] if log is None else log
        self._counted = counted  # the mapper's counters go back with each block
        # Every READY record carries its message's stub: its raw line is not its JSON
        # (a deletion's identity), so the report cannot read the message from it.
        self._stubs = stubs
        self._lines = lines  # a READY record's line goes back (see `Recipe.lines`)
        self._lanes = lanes  # plain records come back by lane (see `Recipe.lanes`)
        self._bulk_from = bulk_from
        self._runs = runs  # bulks carry their runs of positions (see `Recipe.runs`)

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RecordStage:
        mapper = recipe.mapper(set())
        validator = recipe.validator() if recipe.mode is not ValidateMode.OFF else None
        return cls(
            mapper,
            validator,
            recipe.mode,
            dedupe=recipe.dedupe,
            log=counting(mapper).tokens.watch(),  # each token lookup and its answer
            counted=True,
            lines=recipe.lines,
            lanes=recipe.lanes,
            bulk_from=recipe.bulk_from,
            runs=recipe.runs,
        )

    def block(self, block: Block, resume: Any) -> Prepared:
        """Every record of `block`, prepared; and the mapper's counts for the block. In a
        block no earlier run touched (`resume` None), runs of skipped records come as
        one result each, and its plain records as one (`wire.gather`)."""
        record = self.record
        results = [record(each, resume) for each in decode_block(block)]
        if resume is None:
            if self._lanes:
                results = gather(
                    results,
                    block.source,
                    self._lanes,
                    lines=self._lines,
                    dedupe=self.dedupe,
                    at_least=self._bulk_from,
                    runs=self._runs,
                )
            results = skip_runs(results)
        return results, self.counts()

    def record(self, record: InputRecord, resume: Any) -> Result:
        """One record, prepared (or passed over: an earlier run finished it)."""
        origin = record.origin
        line, part = origin.line, origin.part
        if (
            resume is not None
            and not resume.untouched(line, part)
            and not resume.touches(line, part)
        ):
            return done(line, part)
        message = record.message
        if message is None:
            assert record.error is not None
            return broken(line, part, record.raw, record.error, record.partial)
        prepared = prepare(message, self.mapper, self.validator, self.mode, self.tokens)
        lookups = NO_LOOKUPS
        raw = record.raw
        log = self._log
        if log:
            lookups = tuple(log)
            log.clear()
            if raw is None:
                raw = orjson.dumps(message)
        if isinstance(prepared, Skipped) and not lookups:
            return (line, part, SKIPPED, None, prepared.reason, None, lookups, None, 0, None)
        # Its messageId's entry only now: a skipped message needs none (half of an
        # export), and mapping reads the message without changing it; unless the run
        # may prepare it again, and then send it (`wire.gather` then keeps a copy of it
        # out of bulk).
        key = day = None
        probe = 0
        if self.dedupe:
            found = entry(message)
            if found is not None:
                key, probe, day = found
        if isinstance(prepared, Skipped):  # with lookups: its line too
            return (line, part, SKIPPED, raw, prepared.reason, None, lookups, key, probe, day)
        if isinstance(prepared, Invalid):
            if raw is None:  # an element of a document or envelope: its JSON is its line
                raw = orjson.dumps(message)
            return (line, part, INVALID, raw, prepared, stub(message), lookups, key, probe, day)
        if not (self._lines or lookups):  # nothing will read it (the run may need it again)
            raw = None
        elif raw is None:
            raw = orjson.dumps(message)
        notes = None
        if prepared.warnings or prepared.fixes or self._stubs:
            notes = (prepared.warnings, prepared.fixes, stub(message))
        return (line, part, READY, raw, prepared.ops, notes, lookups, key, probe, day)

    def counts(self) -> Counts:
        """The mapper's counters since the last call (then cleared); none when they are
        the run's own."""
        return counting(self.mapper).counters.take() if self._counted else {}


def add_counts(mapper: Mapper, counts: Counts) -> None:
    """Add a block's counters to the main process's mapper (read at the end of a run)."""
    counting(mapper).counters.add(counts)


def lookups_hold(tokens: set[TokenKey], lookups: Lookups) -> bool:
    """Whether a stage's token lookups got the answers the run's set of tokens sent
    gives now (a token one record looks up twice is found the second time)."""
    added: list[TokenKey] = []
    for key, found in lookups:
        if (key in tokens or key in added) != found:
            return False
        if not found:
            added.append(key)
    return True


def without_sent_tokens(
    ops: list[WireOp], lookups: Lookups, tokens: set[TokenKey]
) -> tuple[list[WireOp], Lookups] | None:
    """A READY record's operations and lookups as the run's set of tokens gives them, when
    they differ from the stage's only by device tokens the run sent already and the
    stage's set had not seen (another worker sent them first: the common case, with
    several workers, of a token seen again): their token records left out, the others
    as they were (an operation's number never depends on the tokens sent,
    `prepare.unsent`). None when that is not all it takes, and the record must be
    prepared again: a token the stage found sent and the run did not send, a token
    looked up twice, or nothing left to send."""
    keys = [key for key, _ in lookups]
    if len(set(keys)) != len(keys):
        return None
    if any(found and key not in tokens for key, found in lookups):
        return None
    missing = iter([key for key, found in lookups if not found])
    kept: list[WireOp] = []
    for op in ops:
        # The token records are those of the lookups not found, in the order looked up.
        if op[4] and next(missing, None) in tokens:
            continue
        kept.append(op)
    if not kept or len(kept) == len(ops):
        return None
    return kept, tuple((key, found or key in tokens) for key, found in lookups)


def tokens_sent(lookups: Lookups) -> list[TokenKey]:
    """The tokens a record's operations send: those its lookups did not find."""
    return [key for key, found in lookups if not found]


__all__ = [
    "MapperFactory",
    "Recipe",
    "RecordStage",
    "add_counts",
    "lookups_hold",
    "tokens_sent",
    "without_sent_tokens",
]
