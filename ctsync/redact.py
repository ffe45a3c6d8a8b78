"""One redaction step for every text ctsync writes: the passcode never leaves the process.

A passcode is registered when a `Secret` is made from it. From then on `redact` replaces
it, and the forms it takes when something echoes it back (URL-encoded, in a Python repr
of str or bytes, JSON-escaped), with `***`. The summary, the report, dead letters, the
error line, the crash file and re-raised exceptions all pass through here; the CLI's
stderr console writes through `RedactingText`.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import IO, Any

import orjson

MASK = "***"

_lock = threading.Lock()
_forms: tuple[str, ...] = ()  # longest first, so a longer form is masked whole
_byte_forms: tuple[bytes, ...] = ()


def _variants(secret: str) -> set[str]:
    """The ways a proxy, an exception or a log can spell the secret."""
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
        orjson.dumps(secret).decode()[1:-1],
    }
    return {form for form in forms if form}


def register(secret: str) -> None:
    """Mask `secret` (and its encoded forms) in everything written from now on."""
    global _forms, _byte_forms
    if not secret:
        return
    with _lock:
        forms = set(_forms) | _variants(secret)
        _forms = tuple(sorted(forms, key=len, reverse=True))
        _byte_forms = tuple(form.encode("utf-8", "surrogateescape") for form in _forms)


def forget_all() -> None:
    """Drop every registered secret (between runs in one process: tests, a new job)."""
    global _forms, _byte_forms
    with _lock:
        _forms = ()
        _byte_forms = ()


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for form in _forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def redact_bytes(data: bytes) -> bytes:
    """`data` with every registered secret replaced by `***`."""
    for form in _byte_forms:
        if form in data:
            data = data.replace(form, MASK.encode())
    return data


def redact_exception(exc: BaseException) -> BaseException:
    """`exc` with its message redacted in place (its args), for re-raising."""
    if _forms and exc.args:
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
    return exc


class RedactingText:
    """A text stream that redacts every write: the CLI's stderr goes through it."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        # isatty, fileno, flush, encoding...: the wrapped stream's own
        return getattr(self._stream, name)
