"""The sender of a dry run: every request built as it would go out, none sent."""

from __future__ import annotations

from ctsync.ledger import Lines, output_error
from ctsync.model import ACCEPTED, OnWire, Request, Verdict, delete_body, upload_body


class DryRunSender:
    """Builds every request body as it would be sent, and sends nothing.
    With `output`, writes each request as one NDJSON line `{"method","path","body"}`."""

    def __init__(self, output: Lines | None = None) -> None:
        self._output = output
        self.requests = 0
        self.retries = 0

    async def send(self, request: Request, on_wire: OnWire | None = None) -> list[Verdict]:
        if request.delete is None:
            self._emit(b'"/1/upload"', upload_body(request.bodies))
        else:
            self._emit(b'"/1/delete/profiles.json"', delete_body(request.delete, request.bodies))
        return [ACCEPTED] * len(request.bodies)

    def _emit(self, path: bytes, body: bytes) -> None:
        self.requests += 1
        if self._output is not None:
            try:
                self._output.write(b'{"method":"POST","path":' + path + b',"body":' + body + b"}\n")
            except OSError as exc:
                raise output_error(self._output, "request output", exc) from None
