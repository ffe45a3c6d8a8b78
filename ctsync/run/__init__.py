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

from ctsync.run.coordinator import Observer, UploadRun
from ctsync.run.deletions import deletion_mapper, deletion_records
from ctsync.run.dry_run import DryRunSender
from ctsync.run.options import RunOptions

__all__ = [
    "DryRunSender",
    "Observer",
    "RunOptions",
    "UploadRun",
    "deletion_mapper",
    "deletion_records",
]
