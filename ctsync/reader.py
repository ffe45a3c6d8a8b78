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

import itertools
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
READ_BUFFER = 1 << 18
DIRECTORY_SUFFIXES = (".json", ".jsonl", ".ndjson")


class InputFormat(StrEnum):
    NDJSON = "ndjson"
    DOCUMENT = "json"


@dataclass(slots=True)
class InputRecord:
    """One record as read: its origin, the original bytes, and the message or why not.

    `raw` is the input line without its line end (for NDJSON), or None for an element
    of a JSON document. `end` is the offset in the (decompressed) stream just past it.
    `partial` marks a last line without its final newline (its writer may not be done).
    """

    origin: Origin
    raw: bytes | None
    message: Message | None
    error: Invalid | None
    end: int = 0
    partial: bool = False


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


class OpenSource:
    """An opened input, read as decompressed chunks; counts the bytes taken from the file
    (compressed bytes for gzip) so progress can show how much is consumed."""

    def __init__(self, source: Source, stdin: IO[bytes] | None = None) -> None:
        self.source = source
        if source.path is None:
            if stdin is None and sys.stdin is None:  # `ctsync upload - <&-`
                raise UsageError("standard input is closed: give a file path, or pipe data in")
            self._raw = stdin if stdin is not None else sys.stdin.buffer
        else:
            self._raw = open(source.path, "rb")  # noqa: SIM115 - closed by close()
        self.consumed = 0

    def chunks(self) -> Iterator[bytes]:
        """The content, decompressed if it starts with gzip's magic bytes. Raises EOFError
        after the last whole chunk of a truncated gzip stream, zlib.error for a corrupt one."""
        first = self._read()
        if first[:2] != GZIP_MAGIC:
            while first:
                yield first
                first = self._read()
            return
        # Gzip members may be concatenated (as `cat a.gz b.gz` makes): one decoder each.
        decoder = zlib.decompressobj(wbits=31)
        data = first
        while data:
            out = decoder.decompress(data)
            if out:
                yield out
            while decoder.eof and decoder.unused_data:
                rest = decoder.unused_data
                decoder = zlib.decompressobj(wbits=31)
                out = decoder.decompress(rest)
                if out:
                    yield out
            data = self._read()
        if not decoder.eof:
            raise EOFError("truncated gzip stream")

    def _read(self) -> bytes:
        data = self._raw.read(READ_BUFFER)
        self.consumed += len(data)
        return data

    def close(self) -> None:
        if self.source.path is not None:
            self._raw.close()


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines with their line ends; the last one may lack it."""
    tail = b""
    for chunk in chunks:
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            yield part + b"\n"
    if tail:
        yield tail


def read_source(opened: OpenSource) -> Iterator[InputRecord]:
    """Every record of one opened input. Broken content becomes `InputRecord`s with an
    `error`; an unreadable stream ends the file early with one error record at line 0,
    after every whole record before the fault."""
    name = opened.source.name
    lines = _lines(opened.chunks())
    try:
        head = _head(lines)
        if _looks_like_document(head, lines):
            yield from _read_document(name, b"".join([*head, *lines]))
        else:
            yield from _read_ndjson(name, head, lines)
    except (OSError, EOFError, zlib.error) as exc:
        yield InputRecord(
            Origin(name, 0), None, None, Invalid("unreadable", _describe_io_error(exc), Stage.PARSE)
        )


def _describe_io_error(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the gzip stream is truncated; records after this point were not read"
    if isinstance(exc, zlib.error):
        return f"the gzip stream is corrupt ({exc}); records after this point were not read"
    return f"cannot read the file ({exc.__class__.__name__}: {exc})"


def _head(lines: Iterator[bytes]) -> list[bytes]:
    """The lines up to the first non-blank one (BOM removed): enough to tell the format."""
    head: list[bytes] = []
    for line in lines:
        if not head and line.startswith(UTF8_BOM):
            line = line[len(UTF8_BOM) :]
        head.append(line)
        if line.strip():
            break
    return head


def _looks_like_document(head: list[bytes], rest: Iterator[bytes]) -> bool:
    text = head[-1].strip() if head else b""
    if text.startswith(b"["):
        return True
    if not text.startswith(b"{"):
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # `{` that is not a whole line of JSON: a pretty-printed object, unless the line
        # closes like a record would (then it is one broken NDJSON line).
        return not text.endswith(b"}")
    if not (isinstance(value, dict) and _is_envelope(value)):
        return False
    # A one-line envelope is a document when nothing follows it; otherwise the file is
    # NDJSON whose lines happen to be envelopes, and each line is expanded in turn.
    following = next(rest, None)
    if following is None:
        return True
    head.append(following)
    return False


def _is_envelope(value: dict[str, Any]) -> bool:
    return isinstance(value.get("batch"), list) and "type" not in value


def _read_ndjson(name: str, head: list[bytes], lines: Iterator[bytes]) -> Iterator[InputRecord]:
    lineno = 0
    end = 0
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    for line in itertools.chain(head, lines):
        lineno += 1
        end += len(line)
        raw = line.rstrip(b"\r\n")
        if not raw or raw.isspace():
            continue
        origin = Origin(name, lineno)
        try:
            value = loads(raw)
        except decode_error as exc:
            partial = not line.endswith(b"\n")
            yield InputRecord(origin, raw, None, _parse_error(exc), end, partial)
            continue
        if type(value) is dict:
            if "batch" in value and _is_envelope(value):
                for part, element in enumerate(value["batch"]):
                    yield _element(Origin(name, lineno, part), None, element, end)
                continue
            yield InputRecord(origin, raw, value, None, end)
        else:
            yield InputRecord(origin, raw, None, _not_an_object(value), end)


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
