"""Reading Segment exports: files, directories and stdin; NDJSON or JSON; gzipped or not.

The format is found from the content, not the name: gzip by its magic bytes, then the
first non-blank byte. `[` starts a JSON array; `{` starts NDJSON unless the first line
is not a whole JSON value (a pretty-printed object or `{"batch": [...]}` envelope).
NDJSON is streamed line by line, so memory stays flat whatever the file size; a JSON
document is read whole (use NDJSON for large exports).

Every record keeps its origin: the path (or `-`) and the 1-based line, or the 1-based
element index inside an array or envelope.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson

from ctsync.errors import UsageError
from ctsync.records import Invalid, Message, Origin, Stage

STDIN = "-"
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
READ_BUFFER = 1 << 20
DIRECTORY_SUFFIXES = (".json", ".jsonl", ".ndjson")


class InputFormat(StrEnum):
    NDJSON = "ndjson"
    DOCUMENT = "json"


@dataclass(slots=True)
class InputRecord:
    """One record as read: its origin, the original bytes, and the message or why not.

    `raw` is the input line without its line end (for NDJSON), or None for an element
    of a JSON document. `end` is the offset in the (decompressed) stream just past it.
    """

    origin: Origin
    raw: bytes | None
    message: Message | None
    error: Invalid | None
    end: int = 0


@dataclass(frozen=True, slots=True)
class Source:
    """One input: a file path or stdin, with its size on disk when known."""

    name: str
    path: Path | None
    size: int | None


def collect_sources(paths: Iterable[str]) -> list[Source]:
    """Expand the command line's paths: `-` is stdin, a directory is read recursively in
    sorted order (files ending .json, .jsonl, .ndjson, optionally .gz).

    Raises UsageError for a path that does not exist or cannot be read, before anything
    is read or sent.
    """
    sources: list[Source] = []
    for name in paths or [STDIN]:
        if name == STDIN:
            sources.append(Source(STDIN, None, None))
            continue
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_export(p))
            sources.extend(_file_source(p) for p in found)
        elif path.exists():
            sources.append(_file_source(path))
        else:
            raise UsageError(f"{name}: no such file or directory")
    return sources


def _is_export(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(DIRECTORY_SUFFIXES)


def _file_source(path: Path) -> Source:
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied (cannot read this file)")
    return Source(str(path), path, path.stat().st_size)


class CountingReader(io.RawIOBase):
    """A raw stream that counts the bytes taken from the file (compressed bytes for gzip),
    so progress can show how much of the input is consumed."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.consumed += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class OpenSource:
    """An opened input: a buffered, decompressed byte stream and a byte counter."""

    def __init__(self, source: Source, stdin: IO[bytes] | None = None) -> None:
        self.source = source
        raw: IO[bytes]
        if source.path is None:
            raw = stdin if stdin is not None else sys.stdin.buffer
        else:
            raw = open(source.path, "rb")  # noqa: SIM115 - closed by close()
        self.counter = CountingReader(raw)
        buffered = io.BufferedReader(self.counter, READ_BUFFER)
        self.gzipped = buffered.peek(2)[:2] == GZIP_MAGIC
        self.stream: io.BufferedReader[Any] = (
            io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"), READ_BUFFER)
            if self.gzipped
            else buffered
        )

    def close(self) -> None:
        if self.source.path is not None:
            self.stream.close()


def read_source(opened: OpenSource) -> Iterator[InputRecord]:
    """Every record of one opened input. Broken content becomes `InputRecord`s with an
    `error`; only an unreadable stream ends the file early (with one error record)."""
    name = opened.source.name
    try:
        first = _first_line(opened.stream)
        if _looks_like_document(first, opened.stream):
            yield from _read_document(name, first + opened.stream.read())
        else:
            yield from _read_ndjson(name, first, opened.stream)
    except (OSError, EOFError, zlib.error) as exc:
        yield InputRecord(
            Origin(name, 0), None, None, Invalid("unreadable", _describe_io_error(exc), Stage.PARSE)
        )


def _describe_io_error(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the gzip stream is truncated; records after this point were not read"
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return f"the gzip stream is corrupt ({exc}); records after this point were not read"
    return f"cannot read the file ({exc.__class__.__name__}: {exc})"


def _first_line(stream: io.BufferedReader) -> bytes:
    """The first non-blank line (BOM removed), with any blank lines before it kept so
    that line numbers stay right."""
    lines = []
    while True:
        line = stream.readline()
        lines.append(line)
        if not line or line.strip():
            break
    head = b"".join(lines)
    return head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head


def _looks_like_document(first: bytes, rest: io.BufferedReader) -> bool:
    text = first.lstrip()
    if text.startswith(b"["):
        return True
    if not text.startswith(b"{"):
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # `{` that is not a whole line of JSON: a pretty-printed object, unless the line
        # closes like a record would (then it is one broken NDJSON line).
        return not text.rstrip().endswith(b"}")
    # A one-line envelope is a document when nothing follows it; otherwise the file is
    # NDJSON whose lines happen to be envelopes, and each line is expanded in turn.
    return isinstance(value, dict) and _is_envelope(value) and not rest.peek(1)


def _is_envelope(value: dict[str, Any]) -> bool:
    return isinstance(value.get("batch"), list) and "type" not in value


def _read_ndjson(name: str, first: bytes, stream: io.BufferedReader) -> Iterator[InputRecord]:
    lineno = 0
    end = 0
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    for line in _chain_first(first, stream):
        lineno += 1
        end += len(line)
        raw = line.rstrip(b"\r\n")
        if not raw or raw.isspace():
            continue
        origin = Origin(name, lineno)
        try:
            value = loads(raw)
        except decode_error as exc:
            yield InputRecord(origin, raw, None, _parse_error(exc), end)
            continue
        if type(value) is dict:
            if "batch" in value and _is_envelope(value):
                for element in value["batch"]:
                    yield _element(origin, None, element, end)
                continue
            yield InputRecord(origin, raw, value, None, end)
        else:
            yield InputRecord(origin, raw, None, _not_an_object(value), end)


def _chain_first(first: bytes, stream: io.BufferedReader) -> Iterator[bytes]:
    # The first non-blank line may carry blank lines before it: yield them one by one.
    if first:
        *blank, last = first.split(b"\n")
        for line in blank:
            yield line + b"\n"
        if last:
            yield last
    yield from stream


def _read_document(name: str, data: bytes) -> Iterator[InputRecord]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield InputRecord(Origin(name, exc.lineno), None, None, _parse_error(exc), len(data))
        return
    if isinstance(value, dict) and _is_envelope(value):
        value = value["batch"]
    elif isinstance(value, dict):
        yield InputRecord(Origin(name, 1), None, value, None, len(data))
        return
    if not isinstance(value, list):
        yield InputRecord(Origin(name, 1), None, None, _not_an_object(value), len(data))
        return
    for index, element in enumerate(value, start=1):
        yield _element(Origin(name, index), None, element, len(data))


def _element(origin: Origin, raw: bytes | None, element: Any, end: int) -> InputRecord:
    if type(element) is dict:
        return InputRecord(origin, raw, element, None, end)
    return InputRecord(origin, raw, None, _not_an_object(element), end)


def _parse_error(exc: orjson.JSONDecodeError) -> Invalid:
    return Invalid("malformed-json", f"not valid JSON: {exc.msg}", Stage.PARSE)


def _not_an_object(value: Any) -> Invalid:
    kind = "null" if value is None else type(value).__name__
    return Invalid(
        "not-an-object", f"expected a JSON object (a Segment message), got {kind}", Stage.PARSE
    )
