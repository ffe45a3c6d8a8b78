"""What an input is, shared by the reader and the bucket stores: a `Source`, the files
passed over (`SkippedFile`), the options that select inputs, the test that tells an
export from a stray file (`sniff`), and the protocol a bucket store follows.

A leaf module (it imports no other ctsync module), so that `ctsync.reader`, which
collects bucket URLs through `ctsync.remote`, and `ctsync.remote`, which makes
`Source`s and sniffs objects, both depend on it and not on each other.
"""

from __future__ import annotations

import fnmatch
import re
import types
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

inflate: types.ModuleType = zlib
try:  # ISA-L inflates gzip about twice as fast as zlib; zlib where it is not installed
    from isal import isal_zlib

    inflate = isal_zlib
except ImportError:  # pragma: no cover - depends on the installed extras
    pass
INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, inflate.error)

STDIN = "-"
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 32 << 20  # far above what CleverTap takes in one record
SNIFF_BYTES = 1 << 16  # enough of a file to tell an export from a stray file
NONBLANK = re.compile(rb"[^ \t\r\n\x0b\x0c]")  # a byte that is not blank


@dataclass(frozen=True, slots=True)
class Source:
    """One input: a file, a bucket object or stdin, with its size when known.

    `url` is `s3://bucket/key` or `gs://bucket/key` for an object (None for a file and
    stdin) and `version` its ETag (S3) or generation (GCS). `max_line_bytes` and `store`
    travel with the source so whoever opens it reads it the same way.
    """

    name: str
    path: Path | None
    size: int | None
    url: str | None = None
    version: str | None = None
    max_line_bytes: int = field(default=DEFAULT_MAX_LINE_BYTES, compare=False, repr=False)
    store: ObjectStore | None = field(default=None, compare=False, repr=False)

    @property
    def state_key(self) -> str:
        """What identifies this input across runs: the absolute resolved path of a file,
        the URL of an object, `-` for stdin."""
        if self.url is not None:
            return self.url
        if self.path is not None:
            return str(self.path.resolve())
        return STDIN


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file (or object) inside a scanned directory or prefix that is not an export."""

    name: str
    reason: str


class TimeWindow(Protocol):
    """`--since`/`--until`, as inputs and runs use it (`ctsync.window.Window`)."""

    def holds(self, ms: int) -> bool:
        """Whether a message stamped `ms` (epoch milliseconds) is in the window."""
        ...

    def passes_over(self, path: str) -> bool:
        """Whether no message of the file at `path` can be in the window."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class InputOptions:
    """How command-line paths become inputs. `include`/`exclude` are globs (fnmatch,
    `*` also matches `/`) against the path relative to the directory or prefix named.
    `window` (`--since`/`--until`) passes over the files of Segment day folders that
    cannot hold a message of it, and travels to the run, which skips the others."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_empty: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    s3_endpoint_url: str | None = None
    window: TimeWindow | None = None


def selected(relative: str, options: InputOptions) -> bool:
    """Whether a file at `relative` (inside a scanned directory) passes --include/--exclude."""
    if options.include and not any(fnmatch.fnmatchcase(relative, g) for g in options.include):
        return False
    return not any(fnmatch.fnmatchcase(relative, g) for g in options.exclude)


def sniff(head: bytes) -> str | None:
    """Why content starting with `head` is not an export, or None when it is one: gzip is
    looked into; then the first byte that is not blank (after a BOM) must be `{` or `[`.
    A damaged gzip counts as an export, so that reading it says what is wrong."""
    if head[:2] == GZIP_MAGIC:
        try:
            head = inflate.decompressobj(wbits=31).decompress(head, SNIFF_BYTES)
        except INFLATE_ERRORS:
            return None
    head = head.removeprefix(UTF8_BOM)
    found = NONBLANK.search(head)
    if found is None:
        return "empty" if len(head) < SNIFF_BYTES else None
    first = head[found.start() : found.start() + 1]
    if first in (b"{", b"["):
        return None
    shown = first.decode() if 0x20 < first[0] < 0x7F else f"byte 0x{first[0]:02x}"
    return f"not a Segment export (JSON starts with {{ or [; this starts with {shown})"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, size and version (ETag or generation)."""

    key: str
    size: int
    version: str


class ObjectStore(Protocol):
    """One bucket, as the reader needs it."""

    scheme: str
    bucket: str

    def stat(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def head(self, info: ObjectInfo, size: int) -> bytes: ...

    def open(self, source: Source) -> ObjectReader: ...


class ObjectReader(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...
