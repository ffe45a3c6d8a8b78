"""Running a sandbox: in the foreground (the CLI) or in a background thread (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TypeVar

from ._app import SandboxApp
from ._config import SandboxConfig
from ._http import serve_connection
from ._stats import SandboxStats
from ._store import SandboxStore

T = TypeVar("T")
STREAM_LIMIT = 1024 * 1024
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
# Reading millions of stored records through the Python API takes seconds.
READ_TIMEOUT_SECONDS = 300.0


class SandboxServer:
    """A listening sandbox inside a running event loop."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.app = SandboxApp(config, SandboxStore.open(config.db))
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.accepted = 0  # connections accepted since the start
        self.port = 0

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections; `port` is then the real port."""
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, limit=STREAM_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._connections.add(writer)
        self.accepted += 1
        try:
            await serve_connection(self.app, reader, writer)
        finally:
            self._connections.discard(writer)

    async def close(self) -> None:
        """Stop listening, abort open connections, close the database."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            await self._server.wait_closed()
            # Let the connection coroutines see their aborted transports and finish.
            await asyncio.sleep(0)
        self.app.store.close()


def serve(config: SandboxConfig, on_ready: Callable[[str], None]) -> None:
    """Run a sandbox in this thread until SIGINT or SIGTERM; `on_ready(url)` once bound."""

    async def main() -> None:
        server = SandboxServer(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await server.start()
            on_ready(server.url)
            await stop.wait()
        finally:
            await server.close()

    asyncio.run(main())


class Sandbox:
    """A sandbox running on its own thread and event loop (see `running_sandbox`)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: SandboxServer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ctsync-sandbox", daemon=True)

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:54321`."""
        return self._running().url

    @property
    def port(self) -> int:
        return self._running().port

    def start(self) -> None:
        """Start the thread and wait until the server listens (or failed to)."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            raise TimeoutError("the sandbox did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT_SECONDS)

    def stats(self) -> SandboxStats:
        """A snapshot of the counters and stored counts."""
        return self._call(lambda: self._running().app.stats())

    def reset(self) -> None:
        """Forget stored data and counters."""
        self._call(lambda: self._running().app.reset())

    def hold(self) -> None:
        """Hold the answers to CleverTap requests (counted in flight) until `release`:
        what a test waits on instead of seconds of latency."""
        self._call(lambda: self._running().app.hold_answers())

    def release(self) -> None:
        """Answer the held requests, and the later ones at once."""
        self._call(lambda: self._running().app.release_answers())

    def read(self, query: Callable[[SandboxStore], T]) -> T:
        """Run `query` on the sandbox's store and return its result.

        e.g. `sandbox.read(lambda store: store.events("u1"))`.
        """
        return self._call(lambda: query(self._running().app.store))

    def connections(self) -> int:
        """How many connections the sandbox has accepted since it started."""
        return self._call(lambda: self._running().accepted)

    def _call(self, function: Callable[[], T]) -> T:
        # The store and the counters belong to the server's thread: run there, wait here.
        self._running()
        assert self._loop is not None
        future: Future[T] = Future()

        def call() -> None:
            try:
                future.set_result(function())
            except BaseException as error:
                future.set_exception(error)

        self._loop.call_soon_threadsafe(call)
        return future.result(READ_TIMEOUT_SECONDS)

    def _running(self) -> SandboxServer:
        if self._server is None:
            raise RuntimeError("the sandbox is not running")
        return self._server

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                server = SandboxServer(self.config)
                await server.start()
                self._server = server
            except BaseException as error:
                self._error = error
                return
            finally:
                self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.close()

        asyncio.run(main())


@contextlib.contextmanager
def running_sandbox(config: SandboxConfig | None = None) -> Iterator[Sandbox]:
    """Run a sandbox in a background thread for the duration of a `with` block.

    The default configuration listens on an ephemeral port of 127.0.0.1 with an in-memory
    database and account `sandbox`/`sandbox`.
    """
    sandbox = Sandbox(config or SandboxConfig())
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()
