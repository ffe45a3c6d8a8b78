"""How a run stops: what it waits for when asked to, and standard input at a terminal.

The first Ctrl-C or SIGTERM stops reading and lets the requests in flight finish (see
`api._until_signalled`); `SendCounter` knows how many there are, and a `StopObserver`
(the CLI's display) is told. A read of stdin from a terminal blocks in read(2), where
asyncio's signal handlers cannot run: `TerminalStdin` makes Ctrl-C end that read.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import IO, Any, Protocol, runtime_checkable

from ctsync.ledger import Verdict
from ctsync.model import OnWire, Request, Sender
from ctsync.run.dispatch import WaitsForPermits

_ended = False


def run_ended() -> bool:
    """Whether a run of this process has ended (see `mark_run_ended`)."""
    return _ended


def mark_run_ended() -> None:
    """A run has ended: what is left is its summary and closing the outputs, which a
    late Ctrl-C or SIGTERM must not cut short (`ctsync.__main__` then ignores them)."""
    global _ended
    _ended = True


@runtime_checkable
class StopObserver(Protocol):
    """An observer that also wants to know what is sent and when a run is stopping
    (the CLI's progress display and its stop notice)."""

    def sending(self, counter: SendCounter) -> None: ...

    def stopping(self, signal_name: str, counter: SendCounter, deadline: float) -> None:
        """The first Ctrl-C or SIGTERM: the run waits for `counter.in_flight` requests
        until `deadline` (time.monotonic()); a second signal stops it at once."""


class SendCounter:
    """A sender that counts what it puts on the wire: the records sent (or, in a dry
    run, encoded) and the requests still waiting for an answer."""

    def __init__(self, inner: Sender) -> None:
        self._inner = inner
        self.records = 0
        # Requests without their final answer (on the wire, waiting for a connection or
        # between retries): what a stopping run waits for.
        self.in_flight = 0

    @property
    def requests(self) -> int:
        return self._inner.requests

    @requests.setter
    def requests(self, value: int) -> None:
        self._inner.requests = value

    @property
    def retries(self) -> int:
        return self._inner.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self._inner.retries = value

    def stop_waiting(self) -> None:
        """Requests waiting for a permit end unsent (see `run.dispatch.WaitsForPermits`)."""
        if isinstance(self._inner, WaitsForPermits):
            self._inner.stop_waiting()

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        self.records += len(request.bodies)
        self.in_flight += 1
        try:
            return await self._inner.send(request, on_wire)
        finally:
            self.in_flight -= 1


class _SignalDuringRead(BaseException):
    """Raised inside a blocking terminal read by Ctrl-C or SIGTERM."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum)
        self.signum = signum


class TerminalStdin:
    """Standard input when it is a terminal. Lines are taken as they are typed (a
    buffered read would wait for 256 KiB), and Ctrl-C or SIGTERM ends the input: the
    run's own handler, which cannot run while the reader blocks, then stops the run as
    anywhere else."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._ended = False
        self.stop_requested: Callable[[], bool] = lambda: False
        self.on_signal: Callable[[signal.Signals], None] | None = None
        # Stop signals that arrived (seen by a Python-level handler) and that were acted
        # on (`on_signal` called). A signal between two reads reaches asyncio, whose loop
        # acts on it only when it next turns, which a reader about to block prevents: the
        # reader acts on it itself, and asyncio's later call for it is passed over.
        self._arrived: list[signal.Signals] = []
        self._acted = 0

    def note_signal(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler of the stop signals while a run reads this terminal
        (asyncio's own does nothing: its loop learns of a signal through its wakeup fd
        and calls `dispatch`)."""
        self._arrived.append(signal.Signals(signum))

    def dispatch(self, signum: int) -> None:
        """Act on each stop signal once, whoever sees it first (asyncio or the reader)."""
        if self._acted < len(self._arrived) and self.on_signal is not None:
            self._acted += 1
            self.on_signal(signal.Signals(signum))

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        self.note_signal(signum, frame)
        raise _SignalDuringRead(signal.Signals(signum))

    def read(self, size: int = -1) -> bytes:
        if self._ended or self.stop_requested():
            return b""
        if self.on_signal is None:  # no run handles signals: Ctrl-C raises KeyboardInterrupt
            return read_terminal(self._fd, size if size > 0 else 1 << 16)
        # For the time of the read only, a signal goes to a Python-level handler that
        # raises, which ends the read(2) it interrupted (PEP 475 would retry it), and
        # not to asyncio's wakeup fd, whose handler could run only after the read.
        previous: dict[signal.Signals, Any] = {}
        wakeup = -1
        data = b""
        try:
            for signum in _STOP_SIGNALS:
                previous[signum] = signal.signal(signum, self._raise)
            wakeup = signal.set_wakeup_fd(-1)
            if self._acted < len(self._arrived):  # came since the last read: act now
                self.dispatch(self._arrived[self._acted])
            else:
                data = read_terminal(self._fd, size if size > 0 else 1 << 16)
        except _SignalDuringRead as stop:
            data = b""
            self.dispatch(stop.signum)  # what the run's own handler does (run.stop())
        finally:
            signal.set_wakeup_fd(wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if not data:
            self._ended = True
        return data


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def read_terminal(fd: int, size: int) -> bytes:
    """`os.read(fd, size)` on a terminal, that a signal interrupts whenever it comes.

    A plain read(2) misses a signal that lands after Python last looked for signals and
    before the read starts: its Python-level handler waits for the read to end, that is
    for the next line typed. Seen under load as a Ctrl-C at the `delete` question, or
    at `mappings check FILE -`, that did nothing (3 runs in 60). So the wait is a
    select() on the terminal and on a pipe that the C-level handler of every signal
    writes to (`signal.set_wakeup_fd`): a signal at any moment wakes it, and its
    Python-level handler (KeyboardInterrupt, or the run's own) runs before the read."""
    if threading.current_thread() is not threading.main_thread():
        return os.read(fd, size)  # signals are handled on the main thread only
    wake, woken = os.pipe()
    try:
        os.set_blocking(wake, False)
        os.set_blocking(woken, False)
        previous = signal.set_wakeup_fd(woken, warn_on_full_buffer=False)
        try:
            while True:
                ready, _, _ = select.select([fd, wake], [], [])
                if wake in ready:
                    with contextlib.suppress(OSError):
                        os.read(wake, 512)
                    # The handler is due: Python runs it at its next check, the loop's
                    # jump back (KeyboardInterrupt ends the wait there).
                if fd in ready:
                    return os.read(fd, size)
        finally:
            signal.set_wakeup_fd(previous)
    finally:
        os.close(wake)
        os.close(woken)


def terminal_stdin() -> IO[bytes] | None:
    """`TerminalStdin` when stdin is a terminal read on the main thread, else None
    (the reader then uses sys.stdin.buffer)."""
    stream = sys.stdin
    if stream is None or not stream.isatty():
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    return TerminalStdin(stream.fileno())  # type: ignore[return-value]
