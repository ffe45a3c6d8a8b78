"""`python -m ctsync` and the `ctsync` console script."""

from __future__ import annotations

import errno
import gc
import itertools
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from ctsync import __version__

# Nothing else of ctsync is imported before `main` handles SIGTERM (ctsync.errors alone
# takes 50 ms, with asyncio): each function imports what it needs.


class Terminated(BaseException):
    """SIGTERM outside a run (while starting, at a prompt): as KeyboardInterrupt is to
    Ctrl-C. A run handles both itself (see `api._until_signalled`)."""


def _run_ended() -> bool:
    stopping = sys.modules.get("ctsync.stopping")  # imported by every run
    return stopping is not None and bool(stopping.run_ended())


def _stop(signum: int, frame: FrameType | None) -> None:
    if _run_ended():
        return  # the run is over: its summary and the outputs' last lines come first
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


def _nothing_sent() -> str:
    """For a command that sends (upload, delete) stopped before its run handled the
    signal: that nothing went to CleverTap."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    return "; nothing was sent" if command in ("upload", "delete") else ""


def main() -> None:
    # First of all: the default action of SIGTERM ends the process with no word and no
    # exit status (importing the CLI takes half a second, a service manager may stop it
    # then). Before a run takes the signals over, they end ctsync at once; after it, the
    # process is ending anyway and the summary must not be cut short.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # A run allocates millions of short-lived dicts and no reference cycles worth
    # collecting early: rarer young-generation collections save ~7% of the CPU time
    # (measured on a 100k-message dry run).
    gc.set_threshold(50_000, 20, 100)
    try:
        _run_cli()
    except KeyboardInterrupt:  # Ctrl-C outside a run (while starting, at a prompt)
        _say(f"ctsync: interrupted (Ctrl-C){_nothing_sent()}")
        sys.exit(130)  # ExitCode.INTERRUPTED (ctsync.errors may not be imported yet)
    except Terminated:
        _say(f"ctsync: stopped by SIGTERM{_nothing_sent()}")
        sys.exit(143)  # ExitCode.TERMINATED
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            sys.exit(crash(exc))
        # What a command prints (`ctsync mappings show > FILE`) on a full disk: not a
        # bug. A run's own files say which they are where they are written.
        where = exc.filename or "standard output"
        _say(f"ctsync: cannot write {where}: the disk is full ({exc.strerror})")
        from ctsync.stderr import quiet_stdout

        quiet_stdout()  # its last flush, at exit, would fail again
        sys.exit(2)  # ExitCode.USAGE
    except Exception as exc:  # the last resort: a bug, never a person's mistake
        sys.exit(crash(exc))
    finally:
        if _run_ended():
            # Python's exit puts back the default action (death by SIGTERM, no exit
            # status) of any signal it handles, but leaves ignored ones ignored.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _run_cli() -> None:
    """The CLI, imported with SIGTERM and Ctrl-C held back by the kernel, which are acted
    on as soon as the import is done. Raised from the handler in the middle of a C
    extension's initialisation (orjson's, 20 ms after start), the exception crashed the
    interpreter with SIGSEGV, no word and no exit status, in half of the tries then."""
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            from ctsync.cli import app
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a held one is acted on now
    else:
        from ctsync.cli import app
    app(prog_name="ctsync")


def crash(exc: BaseException) -> int:
    """One line on stderr, the traceback in a file for the bug report; the exit code."""
    from ctsync.errors import ExitCode
    from ctsync.redact import redact, register

    # A dry run never reads the passcode, so it may not be registered: mask what was given.
    for given in (os.environ.get("CLEVERTAP_PASSCODE"), *_argv_passcodes()):
        if given:
            register(given.strip())
    where = _write_crash_file(exc)
    what = redact(f"{exc.__class__.__name__}: {exc}".splitlines()[0])[:300]
    saved = f"the traceback is in {where}" if where else "no traceback file could be written"
    _say(f"ctsync: unexpected error: {what}. This is a bug: please report this ({saved}).")
    return ExitCode.CRASH


def _write_crash_file(exc: BaseException) -> Path | None:
    from ctsync.redact import redact

    text = "".join(traceback.format_exception(exc))
    header = f"ctsync {__version__}, Python {sys.version.split()[0]}, argv {_argv()!r}\n"
    try:
        fd, name = tempfile.mkstemp(
            prefix=f"ctsync-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt"
        )
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as out:
            out.write(redact(header + text))
    except OSError:
        return None
    return Path(name)


def _argv_passcodes() -> list[str]:
    args = sys.argv[1:]
    found = [arg.partition("=")[2] for arg in args if arg.startswith("--passcode=")]
    found += [value for flag, value in itertools.pairwise(args) if flag == "--passcode"]
    return found


def _argv() -> list[str]:
    """The command line, with a `--passcode` value masked (it may not be registered yet)."""
    masked: list[str] = []
    for arg in sys.argv[1:]:
        if masked and masked[-1] == "--passcode":
            arg = "***"
        elif arg.startswith("--passcode="):
            arg = "--passcode=***"
        masked.append(arg)
    return masked


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # stderr closed or gone: nothing to tell
        pass


if __name__ == "__main__":
    main()
