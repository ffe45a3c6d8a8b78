"""HTTP/1.1 with keep-alive over asyncio streams, parsed by h11.

One coroutine per connection reads requests one after another, hands each to the app and
writes the answer. `DROP` aborts the transport: the client sees its connection reset with
no answer, as when a load balancer gives up.

A request refused before it was read whole (431 for headers over `MAX_HEADER_BYTES`, 413
as soon as its `Content-Length` is over `MAX_BODY_BYTES`, 400 for what is not HTTP) is
answered at once; the connection is then closed for writing and what the client still
sends is read and dropped for a moment (a lingering close), so that it reads the answer
instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import h11

from ._app import Admission, Answer, Request, RequestHead, Response, fail

READ_SIZE = 256 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024  # the request line and headers together
LINGER_SECONDS = 5.0
_SERVER_HEADER = (b"server", b"ctsync-sandbox")
_JSON_HEADER = (b"content-type", b"application/json; charset=utf-8")
_HEADERS_TOO_LARGE = fail(
    431, f"Request header fields too large (at most {MAX_HEADER_BYTES:,} bytes)"
)


class Handler(Protocol):
    """What answers requests (`SandboxApp`)."""

    def admit(self, head: RequestHead) -> Admission | None: ...

    def release(self, admission: Admission | None) -> None: ...

    async def handle(self, request: Request, admission: Admission | None) -> Answer: ...


async def serve_connection(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer the requests of one connection until either side closes it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        while True:
            head = await _read_head(conn, reader)
            if head is None:
                return
            refusal = head if isinstance(head, Response) else _too_large(head)
            if refusal is not None:
                await _write(conn, writer, refusal)
                await _linger(reader, writer)
                return
            assert isinstance(head, RequestHead)
            admission = handler.admit(head)
            try:
                body = await _read_body(conn, reader)
                if body is None:
                    return
                if isinstance(body, Response):  # too large once read, or not HTTP
                    answer: Answer = body
                else:
                    answer = await handler.handle(Request(head, body), admission)
            finally:
                # Released before writing: once the answer is on its way the client may
                # send its next request, which must not find this one still counted.
                handler.release(admission)
            if not isinstance(answer, Response):
                writer.transport.abort()
                return
            await _write(conn, writer, answer)
            if isinstance(body, Response):
                await _linger(reader, writer)
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (ConnectionError, h11.ProtocolError):
        writer.transport.abort()
    finally:
        writer.close()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """h11's next event, reading from the client as it needs; a 4xx `Response` if the
    request cannot be read; None when the client closed an idle connection."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as error:
            if error.error_status_hint == 431:
                return _HEADERS_TOO_LARGE
            return fail(error.error_status_hint, f"Bad request: {error}")
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_SIZE)
        if not data and conn.their_state is h11.IDLE:
            return None
        conn.receive_data(data)


async def _read_head(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> RequestHead | Response | None:
    """The next request's head; a 4xx `Response` if it cannot be read; None at the end."""
    while True:
        event = await _next_event(conn, reader)
        if event is None or isinstance(event, Response):
            return event
        if isinstance(event, h11.Request):
            # h11 refuses a head that grows past the limit while it arrives in pieces,
            # not one that arrived whole in one read: the same limit for both.
            size = len(event.method) + len(event.target) + 12
            size += sum(len(name) + len(value) + 4 for name, value in event.headers)
            return _HEADERS_TOO_LARGE if size > MAX_HEADER_BYTES else _head(event)
        else:  # ConnectionClosed, or PAUSED after a protocol switch we never agree to
            return None


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes | Response | None:
    """The current request's body; a 4xx `Response` if it cannot be read; None at the end."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, reader)
        if event is None or isinstance(event, Response):
            return event
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY_BYTES:
                return fail(413, f"Request body too large (at most {MAX_BODY_BYTES:,} bytes)")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            return None


def _too_large(head: RequestHead) -> Response | None:
    """413 for a body announced over the limit: answered before a byte of it is read."""
    length = head.headers.get("content-length")  # h11 checked that it is a number
    if length is not None and int(length) > MAX_BODY_BYTES:
        return fail(413, f"Request body too large (at most {MAX_BODY_BYTES:,} bytes)")
    return None


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an answer to a request not read whole: close for writing, then drop what the
    client still sends until it closes, for at most LINGER_SECONDS. Closing with unread
    data would reset the connection, and the client could lose the answer."""
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(READ_SIZE):
                pass


def _head(event: h11.Request) -> RequestHead:
    target = urlsplit(event.target.decode("latin-1"))
    return RequestHead(
        method=event.method.decode("ascii"),
        path=target.path,
        query=dict(parse_qsl(target.query)),
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers},
    )


async def _write(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
    headers = [_SERVER_HEADER, _JSON_HEADER, (b"content-length", str(len(response.body)).encode())]
    if conn.their_state is not h11.DONE:
        # The request was not read to its end: say so and close rather than resync.
        headers.append((b"connection", b"close"))
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    assert data is not None
    body = conn.send(h11.Data(data=response.body))
    end = conn.send(h11.EndOfMessage())
    writer.write(data + (body or b"") + (end or b""))
    await writer.drain()
