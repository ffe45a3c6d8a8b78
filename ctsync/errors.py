"""Exceptions that stop a run, grouped by what the person running ctsync should do.

    CtsyncError            anything that stops the run; its message is for people
     ├── UsageError        fix the command line, a path or a setting (exit 2)
     ├── OutputError       an output (report, dead letters, state) could not be written (exit 2)
     │    └── DiskFull     ... because its disk is full
     ├── AuthError         fix the account ID, passcode or region (exit 3)
     └── LockedError       another run holds the state file (exit 4)

Problems with single records are never exceptions: they are `Invalid` values, counted
and reported, and the run goes on. Any other exception is a bug: `ctsync.__main__`
turns it into one line, a file holding the traceback, and exit 70.
"""

from __future__ import annotations

from enum import IntEnum

from ctsync.summary import Summary


class ExitCode(IntEnum):
    """What `ctsync` exits with; documented in the README."""

    OK = 0
    INCOMPLETE = 1  # some records were invalid, rejected or failed
    USAGE = 2  # bad flag, missing credentials, unreadable file
    AUTH = 3  # CleverTap refused the credentials
    LOCKED = 4  # another run holds the state file
    CRASH = 70  # a bug in ctsync (EX_SOFTWARE): one line and a file with the traceback
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
    the run stops, since records it could no longer report must not be sent."""

    exit_code = ExitCode.USAGE


class DiskFull(OutputError):
    """An output or the state file could not be written because its disk is full: the
    records not sent are counted failed as `disk-full`."""


class AuthError(CtsyncError):
    """CleverTap answered 401: wrong account ID, passcode or region."""

    exit_code = ExitCode.AUTH


class LockedError(CtsyncError):
    """Another ctsync run holds the lock of the same state file."""

    exit_code = ExitCode.LOCKED
