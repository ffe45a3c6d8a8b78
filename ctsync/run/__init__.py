"""An upload run (`ctsync upload`, `ctsync delete`), as a house of small parts:

coordinator  UploadRun: the flow on one screen, reading and pacing
feed         what to read, in order, and what an earlier run left (--state)
stage        the record stage: one record in, one result out, in any process
workers      the worker processes that run the stage over blocks (--workers N)
wire         what the record stage hands the run: one result per record, plain ones in bulk
intake       results into the ledger and the planner's batches (one path)
dispatch     lanes of sealed batches, sent in order; the stop and its verdicts
accounts     verdicts into the ledger, held records, messageIds let go
checkpoint   the state file, written from the batches without an answer
options      RunOptions, and the flags the parts share
dry_run      the sender that sends nothing
deletions    `ctsync delete`'s records and mapper
"""

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctsync.run.coordinator import Observer, UploadRun
    from ctsync.run.deletions import deletion_mapper, deletion_records
    from ctsync.run.dry_run import DryRunSender
    from ctsync.run.options import RunOptions


def __getattr__(name: str) -> Any:
    """The names above, imported when first asked for: a worker process imports
    `ctsync.run.workers`, and with it this package, but never the coordinator (asyncio,
    the ledger, the planner: a third of a worker's start-up)."""
    # Import statements, not importlib: `python -X importtime` lists what they import.
    home: ModuleType
    if name in ("Observer", "UploadRun"):
        from ctsync.run import coordinator

        home = coordinator
    elif name in ("deletion_mapper", "deletion_records"):
        from ctsync.run import deletions

        home = deletions
    elif name == "DryRunSender":
        from ctsync.run import dry_run

        home = dry_run
    elif name == "RunOptions":
        from ctsync.run import options

        home = options
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(home, name)
    globals()[name] = value
    return value


__all__ = [
    "DryRunSender",
    "Observer",
    "RunOptions",
    "UploadRun",
    "deletion_mapper",
    "deletion_records",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
