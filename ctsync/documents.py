"""JSON documents larger than `--max-line-bytes`, read message by message.

A file that is one JSON array of messages, or a `{"batch": [...]}` envelope, is read an
element at a time, whatever its size: only the element being read (at most
`--max-line-bytes`) and the chunk it sits in are held. Each element is decoded by
orjson, as every NDJSON line is, so numbers, duplicate keys, NaN, invalid UTF-8 and
lone surrogates read exactly alike in every format; its origin is its 1-based index
in the array, as for a small document, so the report, dead letters and `--state`
name it the same way.

How an element is found: orjson parses from the element's first byte and stops at the
first byte after a complete value ("unexpected content after document"); the bytes up to
there are the element, parsed again to get its value. The window handed to orjson starts
at 4 KiB and doubles until it holds the element (never more than the limit), so a
typical message costs two parses of its own bytes and nothing of the rest of the file.

A document that breaks half way (truncated, damaged) keeps every element before the
break; the break is one `malformed-json` record at the index of the element that could
not be read, and nothing after it is read (where the next element starts cannot be
known). `probe` tells whether a buffered head reads as such a document at all, so a
file whose head does not (NDJSON with a damaged first line) is still read line by line;
a file small enough to be read whole that does not parse is a document broken half way
when it breaks after the `,` following its first element and holds a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

import orjson

from ctsync.records import Invalid, Stage

WINDOW: Final = 1 << 12  # bytes handed to orjson first; doubled while an element is longer
PROBE_BYTES: Final = 1 << 20  # at most this much of a file's head is probed
_BLANK: Final = re.compile(rb"[ \t\r\n]*+")


class Break(Exception):
    """The document cannot be read on from here: why, and whether the file merely ends
    early (a writer may still be appending)."""

    def __init__(self, invalid: Invalid, partial: bool = False) -> None:
        super().__init__(invalid.message)
        self.invalid = invalid
        self.partial = partial


class NotADocument(Exception):
    """The head is not an array or envelope of messages (an object with a `type`)."""


class _OutOfData(Exception):
    """Probing: the head ended before anything went wrong."""


class Document:
    """One JSON array or envelope being read from `head`, then `chunks`."""

    def __init__(
        self, head: bytes | bytearray, chunks: Iterator[bytes], limit: int, *, probe: bool = False
    ) -> None:
        self._buf = head if isinstance(head, bytearray) else bytearray(head)  # taken, not copied
        self._chunks = chunks
        self._limit = limit
        self._probe = probe
        self._eof = False
        self._pos = 0
        self.index = 0  # the 1-based index of the last element read
        self.reading = 0  # the 1-based index of the element being read (or last read)
        self.objects = 0  # the elements read that are JSON objects (messages, maybe)
        self.closed = False  # the array or envelope was read to its end

    def elements(self) -> Iterator[tuple[int, Any]]:
        """(index, value) of every element. Raises `Break` where the document breaks,
        `NotADocument` when it is an object that is not an envelope."""
        first = self._next()
        if first == b"[":
            self._pos += 1
            yield from self._array()
        elif first == b"{":
            self._pos += 1
            yield from self._envelope()
        else:
            raise NotADocument
        self.closed = True
        if self._next():
            raise self._break("there is more after the end of the document")

    def _envelope(self) -> Iterator[tuple[int, Any]]:
        seen_batch = False
        if self._next() == b"}":
            raise NotADocument
        while True:
            key = self._value()
            if type(key) is not str or self._next() != b":":
                raise NotADocument if not seen_batch else self._break("the envelope is broken")
            self._pos += 1
            if key == "batch" and not seen_batch and self._next() == b"[":
                self._pos += 1
                seen_batch = True
                yield from self._array()
            elif key in ("type", "batch") and not seen_batch:
                raise NotADocument  # a message, or a batch that is not an array
            else:
                self._value()  # sentAt, context, writeKey ...: not needed
            after = self._next()
            if after == b"}":
                self._pos += 1
                break
            if after != b",":
                raise NotADocument if not seen_batch else self._break("the envelope is broken")
            self._pos += 1
        if not seen_batch:
            raise NotADocument

    def _array(self) -> Iterator[tuple[int, Any]]:
        if self._next() == b"]":
            self._pos += 1
            return
        while True:
            self.reading = self.index + 1
            value = self._value()
            self.index += 1
            if type(value) is dict:
                self.objects += 1
            yield self.index, value
            after = self._next()
            if after == b"]":
                self._pos += 1
                return
            if after != b",":
                raise self._break(f"expected , or ] after element {self.index:,}", ends=not after)
            self._pos += 1

    def _break(self, why: str, *, ends: bool = False, code: str | None = None) -> Break:
        where = f"element {self.index + 1:,}"
        if ends:
            text = f"the file ends inside the JSON document, at {where}"
        else:
            text = f"the JSON document breaks at {where} ({why})"
        invalid = Invalid(
            code or "malformed-json", f"{text}; nothing after it was read", Stage.PARSE
        )
        return Break(invalid, ends)

    def _next(self) -> bytes:
        """The next byte that is not blank (b"" at the end), without taking it."""
        while True:
            self._pos = _BLANK.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return bytes(self._buf[self._pos : self._pos + 1])
            if not self._more():
                return b""

    def _more(self) -> bool:
        """Append the next chunk; False at the end of the input."""
        if self._eof:
            return False
        chunk = next(self._chunks, None)
        if chunk is None:
            if self._probe:
                raise _OutOfData
            self._eof = True
            return False
        if self._pos > len(self._buf) // 2:  # drop what was read, now and then
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += chunk
        return True

    def _value(self) -> Any:
        """The JSON value at the read position, which moves past it."""
        start = self._pos
        window = min(WINDOW, self._limit + 1)
        while True:
            end = min(start + window, len(self._buf))
            while end < len(self._buf) and self._buf[end] & 0xC0 == 0x80:
                end -= 1  # never cut a UTF-8 character: orjson would call it invalid
            data = self._buf[start:end]
            whole, found, at = _first_value(data)
            if whole:
                # A number the window cuts may go on ("12" of "123"); anything else is whole.
                if at < len(data) or type(found) in (dict, list, str) or end < len(self._buf):
                    self._pos = start + at
                    return found
            elif at < len(data) - 4:  # wrong before the window's end: broken here
                raise self._break(found, code="too-deep" if "depth" in found else None)
            # The window may cut the value: widen it, reading on if need be.
            if end - start > self._limit:
                raise Break(
                    Invalid(
                        "line-too-long",
                        f"element {self.index + 1:,} of the JSON document is longer than "
                        f"--max-line-bytes ({self._limit:,} bytes); nothing from it on was read",
                        Stage.PARSE,
                    )
                )
            if end == len(self._buf):
                if not self._more():
                    if whole:  # a number that ends the file
                        self._pos = start + at
                        return found
                    raise self._break(found, ends=True)
                start = self._pos  # reading on may have dropped what was read before
            window *= 2


def _first_value(data: bytearray) -> tuple[bool, Any, int]:
    """(True, the first JSON value in `data`, where it ends) or (False, why not, where
    it went wrong), in bytes. orjson says where the content after a value starts, in
    characters, and checks all of `data` is UTF-8 before it reads any of it."""
    try:
        return True, orjson.loads(data), len(data)
    except orjson.JSONDecodeError as exc:
        # Only what is needed: the exception itself, kept in a local, would make a cycle
        # (it -> its traceback -> this frame -> it) holding `data` and a copy of it as
        # text until the garbage collector runs, which ctsync makes rare (__main__): a
        # 300 MB array then peaked at 676 MB.
        message, pos = exc.msg, exc.pos
    if "UTF-8" in message:
        try:
            bytes(data).decode()
        except UnicodeDecodeError as bad:
            if bad.start > 0:  # a value may end before the bad byte
                before = _first_value(data[: bad.start])
                if before[0]:
                    return before
            return False, message, bad.start
    cut = _byte_offset(data, pos)
    if 0 < cut < len(data):
        try:  # a complete value, then what follows it
            return True, orjson.loads(data[:cut]), cut
        except orjson.JSONDecodeError:
            pass
    return False, message, cut


def _byte_offset(data: bytes | bytearray, chars: int) -> int:
    """Where in `data` (UTF-8) the `chars`-th character starts."""
    if data[:chars].isascii():
        return chars
    return len(bytes(data).decode("utf-8", "ignore")[:chars].encode())


def probe(head: bytes | bytearray, limit: int, *, whole: bool = False) -> bool:
    """Whether the first `limit` bytes of `head` (the start of a file; at most a MiB of
    it) read as the start of a JSON array or envelope holding at least one whole element,
    or as an array or envelope of messages that breaks after the separator that follows
    its first element (`broke_after_separator`). With `whole`, `head` is all of a file
    that does not parse: its end is a break too (the file ends early).

    NDJSON whose first line is damaged breaks within its first two lines, before any
    separator: the line after it is a whole value with no `,` before it."""
    document = Document(head[: min(limit, PROBE_BYTES)], iter(()), limit, probe=True)
    try:
        for _ in document.elements():
            pass
    except _OutOfData:
        return broke_after_separator(document) if whole else document.index > 0
    except Break:
        return broke_after_separator(document)
    except NotADocument:
        return False
    return True


def broke_after_separator(document: Document) -> bool:
    """Whether a document that broke had read a message and the `,` after its first
    element, and broke before its end: an array of messages broken half way, whose
    elements before the break are kept, rather than NDJSON whose first line opens an
    array (`[`, `[1,2`) or a whole document with more lines after it."""
    return document.reading >= 2 and document.objects > 0 and not document.closed
