"""HTTP/1.1 with keep-alive over asyncio streams, parsed by h11.

One coroutine per connection reads requests one after another, hands each to the app and
writes the answer. `DROP` aborts the transport: the client sees its connection reset with
no answer, as when a load balancer gives up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

import h11

from ._app import Answer, Request, Response, fail

READ_SIZE = 256 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
_SERVER_HEADER = (b"server", b"ctsync-sandbox")
_JSON_HEADER = (b"content-type", b"application/json; charset=utf-8")

Handler = Callable[[Request], Awaitable[Answer]]


async def serve_connection(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer the requests of one connection until either side closes it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _read_request(conn, reader)
            if request is None:
                return
            if isinstance(request, Response):
                await _write(conn, writer, request)
                return
            answer = await handler(request)
            if not isinstance(answer, Response):
                writer.transport.abort()
                return
            await _write(conn, writer, answer)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (ConnectionError, h11.ProtocolError):
        writer.transport.abort()
    finally:
        writer.close()


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> Request | Response | None:
    """The next request; a 4xx `Response` when it cannot be read; None at the end."""
    head: h11.Request | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as error:
            return fail(error.error_status_hint, f"Bad request: {error}")
        if event is h11.NEED_DATA:
            data = await reader.read(READ_SIZE)
            if not data and head is None and conn.their_state is h11.IDLE:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY_BYTES:
                return fail(413, "Request body too large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            if head is None:
                return None
            return _request(head, b"".join(chunks))
        else:  # ConnectionClosed, or PAUSED after a protocol switch we never agree to
            return None


def _request(head: h11.Request, body: bytes) -> Request:
    target = urlsplit(head.target.decode("latin-1"))
    return Request(
        method=head.method.decode("ascii"),
        path=target.path,
        query=dict(parse_qsl(target.query)),
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers},
        body=body,
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
