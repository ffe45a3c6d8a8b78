"""How a run sends, and the flags its parts share."""

from __future__ import annotations

from dataclasses import dataclass

from ctsync.dedupe import DEFAULT_WINDOW_DAYS
from ctsync.ledger import Ledger
from ctsync.prepare import ValidateMode
from ctsync.settings import MAX_UPLOAD_BATCH, MAX_UPLOAD_CONCURRENCY


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    batch_size: int = MAX_UPLOAD_BATCH
    validate: ValidateMode = ValidateMode.STRICT
    # Requests in flight at most: one per lane (see batching). The client's limit may
    # allow fewer at a time (--concurrency auto after 429s).
    lanes: int = MAX_UPLOAD_CONCURRENCY
    window: int = 32  # sealed batches not yet answered, at most (backpressure)
    drain_timeout: float = 30.0  # on interruption, how long in-flight requests may finish
    retry_unknown: bool = False  # re-send records whose outcome is unknown (at-least-once)
    # messageId dedupe (see ctsync.dedupe): `api.upload` gives the run its `MessageIds`.
    dedupe: bool = True
    dedupe_window_days: float = DEFAULT_WINDOW_DAYS
    # Whether the planner remembers the profiles links merged, for the deletions that
    # may follow (`Planner.link`): a run whose mapper never deletes (the classic
    # preset) needs none of that memory.
    remember_links: bool = True


class Control:
    """What every part of a run reads and the coordinator decides: whether the run is
    stopping, what stopped it, and whether the state file is frozen (it holds what the
    next run needs: nothing more is written to it)."""

    __slots__ = ("fatal", "frozen", "ledger", "stopping")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.stopping = False
        self.fatal: BaseException | None = None
        self.frozen = False

    def fail(self, exc: BaseException) -> None:
        """The first error that stops the run is the one it ends with."""
        self.fatal = self.fatal or exc

    def check(self) -> None:
        """Raise what stopped the run: a part's error, or an output that failed."""
        if self.fatal is not None:
            raise self.fatal
        if self.ledger.output_error is not None:
            raise self.ledger.output_error
