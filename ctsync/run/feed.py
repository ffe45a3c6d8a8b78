"""What a run reads, in order: each source opened in turn, what an earlier run left of
it (`--state`), and the steps to take between sources."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from functools import partial
from typing import IO, TypeAlias

from ctsync.reader import Block, InputRecord, OpenSource, Source, read_blocks
from ctsync.records import Invalid, Origin, Stage
from ctsync.state import Progress, StateFile
from ctsync.summary import Routine, Summary

Item: TypeAlias = InputRecord | Block | Callable[[], None]
"""What reading yields: a record, a block of NDJSON lines, or a step to take when every
item before it is taken (a note, the end of an input)."""


class Feed:
    """The sources of a run, read one after another."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        summary: Summary,
        checkpoint: Callable[[], None],
        stdin: IO[bytes] | None = None,
        state: StateFile | None = None,
    ) -> None:
        self._sources = sources
        self._summary = summary
        self._checkpoint = checkpoint
        self._stdin = stdin
        self._state = state
        # With --state: the inputs this run reads and has not settled, by source name.
        self.inputs: dict[str, Progress] = {}
        self._objects: set[str] = set()  # bucket objects read this run (never appended to)
        self._incomplete: set[str] = set()  # inputs whose last line is left for the next run
        self._current: OpenSource | None = None
        self._consumed_before = 0  # bytes of the sources already finished

    @property
    def consumed(self) -> int:
        """Bytes read so far (compressed, for gzip), for the progress display."""
        current = self._current.consumed if self._current is not None else 0
        return self._consumed_before + current

    def items(self, block_bytes: int) -> Generator[tuple[Item, Progress | None], None, None]:
        """Every source in order, with steps between sources: NDJSON as blocks of lines
        of about `block_bytes`, anything else as records."""
        seen: set[str] = set()
        for source in self._sources:
            progress = self._state.open_input(source) if self._state is not None else None
            if progress is not None:
                if progress.resume.note:
                    yield partial(self._summary.notes.append, progress.resume.note), None
                if progress.key in seen:  # the same file named twice: read it once
                    continue
                seen.add(progress.key)
                if progress.resume.skip_all:
                    # (a cron over a bucket prefix meets every earlier object again: counted
                    # in one line, not named)
                    yield self._finished_earlier, None
                    continue
                yield partial(self.inputs.__setitem__, source.name, progress), None
            try:
                opened = OpenSource(source, self._stdin)
            except OSError as exc:
                why = f"cannot open the file ({exc.strerror or exc})"
                unreadable = Invalid("unreadable", why, Stage.PARSE)
                yield InputRecord(Origin(source.name, 0), None, None, unreadable), None
                continue
            self._current = opened
            if not source.grows:
                self._objects.add(source.name)
            try:
                for item in read_blocks(opened, block_bytes):
                    yield item, progress
            finally:
                self._consumed_before += opened.consumed
                self._current = None
                opened.close()
            if progress is not None:
                yield partial(self._finished, source.name, progress), None

    def may_grow(self, source: str) -> bool:
        """Whether a writer may still be appending to `source` (a bucket object never)."""
        return source not in self._objects

    def left_for_next_run(self, origin: Origin) -> None:
        """A last line without its newline that does not parse: its writer may not be
        done. It is left for the next run (with --state)."""
        self._incomplete.add(origin.source)
        self._summary.notes.append(
            f"{origin.source}:{origin.line}: the last line is incomplete "
            "(no final newline, not valid JSON); left for the next run"
        )

    def _finished_earlier(self) -> None:
        self._summary.routine[Routine.FINISHED_EARLIER] += 1

    def _finished(self, name: str, progress: Progress) -> None:
        if name not in self._incomplete:
            progress.finished_reading = True
            self._checkpoint()
