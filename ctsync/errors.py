"""Every exception of ctsync, grouped by what the person running ctsync should do.

    CtsyncError              stops the run; its message is for people
     ├── UsageError          fix the command line, a path or a setting (exit 2)
     ├── OutputError         an output (report, dead letters, state) could not be written (exit 2)
     │    └── DiskFull       ... because its disk is full
     ├── AuthError           fix the account ID, passcode, region or endpoint (exit 3)
     ├── LockedError         another run holds the state file (exit 4)
     └── WorkerError         a worker process died (killed, out of memory): run again (exit 70)

    ValueError
     ├── MappingError        a mapping file cannot be used; said as a UsageError
     ├── DirectiveError      one of its values does not compile (MappingError names the file)
     └── TriggerSyntaxError  one of its triggers does not parse (MappingError names the file)
    OSError
     └── RemoteReadError     a bucket object could not be read to its end: that input ends
                             as unreadable, the run goes on

Signals within one module, never raised past it, are defined where they are caught:

    documents.Break, documents.NotADocument, documents._OutOfData
                             a large JSON document cannot be read on (a record says why)
    stopping._SignalDuringRead (BaseException)
                             Ctrl-C or SIGTERM during a blocking terminal read
    __main__.Terminated (BaseException)
                             SIGTERM outside a run, as KeyboardInterrupt is to Ctrl-C (there,
                             since importing this module takes too long before SIGTERM is handled)

Problems with single records are never exceptions: they are `Invalid` values, counted
and reported, and the run goes on. Any other exception is a bug: `ctsync.__main__`
turns it into one line, a file holding the traceback, and exit 70.
"""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path

from ctsync.summary import Summary


class ExitCode(IntEnum):
    """What `ctsync` exits with; documented in the README."""

    OK = 0
    INCOMPLETE = 1  # some records were invalid, rejected or failed
    USAGE = 2  # bad flag, missing credentials, unreadable file
    AUTH = 3  # CleverTap refused the credentials, or the address (403, 404, 405)
    LOCKED = 4  # another run holds the state file
    CRASH = 70  # a bug in ctsync (EX_SOFTWARE): one line and a file with the traceback
    CLOSED_PIPE = 141  # stdout's reader left (`| head`): 128 + SIGPIPE, as a shell says
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM


class CtsyncError(Exception):
    """Stops the run. `exit_code` says how the process ends; `summary`, given when the run
    had started, says how far it got (its counts add up). Every subclass keeps this
    constructor: the run re-raises an error with its summary as `type(exc)(message,
    summary=...)`."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class UsageError(CtsyncError):
    """A mistake in the command line, an input path or the configuration."""

    exit_code = ExitCode.USAGE


class OutputError(CtsyncError):
    """A report, dead-letter, request or state file could not be written (a full disk):
    the run stops, since records it could no longer report must not be sent.
    `before_request`: raised as a request was about to be written (the checkpoint that
    marks its batch sent), which then never left."""

    exit_code = ExitCode.USAGE
    before_request = False


class DiskFull(OutputError):
    """An output or the state file could not be written because its disk is full: the
    records not sent are counted failed as `disk-full`."""


class AuthError(CtsyncError):
    """CleverTap answered 401 (wrong account ID, passcode or region), or 403, 404 or 405
    (a wrong endpoint, an account without API access). `stored_nothing`:
    no attempt of the refused request may have stored a record (that answer came to the
    first that reached CleverTap), so its records are not sent, not of unknown outcome."""

    exit_code = ExitCode.AUTH
    stored_nothing = False
    status = 401  # the HTTP answer that stopped the run


class LockedError(CtsyncError):
    """Another ctsync run holds the lock of the same state file."""

    exit_code = ExitCode.LOCKED


class WorkerError(CtsyncError):
    """A worker process ended without finishing its block (killed, out of memory)."""

    exit_code = ExitCode.CRASH


class MappingError(ValueError):
    """A mapping file that cannot be used. The message names the file, the subscription
    and, for a trigger, the column."""

    def __init__(
        self,
        source: str,
        reason: str,
        *,
        subscription: str | None = None,
        column: int | None = None,
    ) -> None:
        where = source
        if subscription is not None:
            where += f": subscription {subscription!r}"
        if column is not None:
            where += f": trigger column {column}"
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.subscription = subscription
        self.column = column
        self.reason = reason


class DirectiveError(ValueError):
    """A mapping value that does not compile; `where` is its place, e.g. `profileData.email`."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


class TriggerSyntaxError(ValueError):
    """A trigger that does not parse; `column` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"column {column}: {message}")
        self.reason = message
        self.column = column


class RemoteReadError(OSError):
    """An object could not be read to its end (connection lost for good, rewritten)."""


def missing_folder(path: Path) -> str | None:
    """Why a file cannot be created at `path` for want of a folder: its own folder does
    not exist, or `path` is a link to a file in one that does not; None otherwise."""
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    if path.is_symlink() and not path.exists():
        return f"it links to {os.readlink(path)}, in a folder that does not exist"
    return None
