"""What an input is, shared by the reader and the bucket stores: a `Source` of one of
three kinds (`LocalFile`, `StandardInput`, `BucketObject`), each of which opens itself;
the files passed over (`SkippedFile`), the options that select inputs, the test that
tells an export from a stray file (`sniff`), and the protocol a bucket store follows.

    source.open()   # a `Stream` of the input's bytes (compressed as stored)

A leaf module (it imports no other ctsync module), so that `ctsync.reader`, which
collects bucket URLs through `ctsync.remote`, and `ctsync.remote`, which makes
`BucketObject`s and sniffs objects, both depend on it and not on each other.
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import re
import sys
import types
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol

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
BOM = "\ufeff"  # the same, decoded
DEFAULT_MAX_LINE_BYTES = 32 << 20  # far above what CleverTap takes in one record
SNIFF_BYTES = 1 << 16  # enough of a file to tell an export from a stray file
NONBLANK = re.compile(rb"[^ \t\r\n\x0b\x0c]")  # a byte that is not blank


class Stream(Protocol):
    """What reading needs of an opened input: its bytes, as stored (gzip or not)."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


ObjectReader = Stream
"""An opened bucket object (a store's `open`)."""


@dataclass(frozen=True, slots=True)
class Source:
    """One input: a file, a bucket object or stdin, with its size when known.

    Each kind is a subclass that opens itself (`open`) and says how it is known across
    runs (`state_key`). `Source(name, path, size, url=...)` makes the kind its fields
    describe: a `BucketObject` with a `url` (`s3://bucket/key` or `gs://bucket/key`,
    `version` its ETag or generation), else a `LocalFile` with a `path`, else a
    `StandardInput`. `max_line_bytes` and `store` travel with the source so whoever
    opens it reads it the same way.
    """

    name: str
    path: Path | None
    size: int | None
    url: str | None = None
    version: str | None = None
    max_line_bytes: int = field(default=DEFAULT_MAX_LINE_BYTES, compare=False, repr=False)
    store: ObjectStore | None = field(default=None, compare=False, repr=False)

    resumable: ClassVar[bool] = True
    """Whether `--state` can resume it (not stdin)."""
    grows: ClassVar[bool] = True
    """Whether a writer may still be appending to it (a bucket object is written whole:
    its last line without a newline is not left for the next run)."""

    def __new__(
        cls,
        name: str = "",
        path: Path | None = None,
        size: int | None = None,
        url: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Source:
        if cls is Source:  # the kind its fields describe
            kind = LocalFile if path is not None else StandardInput
            cls = BucketObject if url is not None else kind
        return object.__new__(cls)

    # The interface of every kind. (`Source(...)` always makes one of the kinds, so
    # these two are never called; the class is not an ABC so that `Source(...)` types.)

    @property
    def state_key(self) -> str:
        """What identifies this input across runs: the absolute resolved path of a file,
        the URL of an object, `-` for stdin."""
        raise NotImplementedError

    def open(self, stdin: IO[bytes] | None = None) -> Stream:
        """The input's bytes, from the start. `stdin` is what a `StandardInput` reads
        (a test's bytes, a terminal reader); the others ignore it. Raises OSError when
        the input cannot be opened."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class LocalFile(Source):
    """A file on this machine (`path`)."""

    @property
    def file(self) -> Path:
        """The file's path (a `LocalFile` always has one)."""
        assert self.path is not None, "a LocalFile has a path"
        return self.path

    @property
    def state_key(self) -> str:
        return printable(str(self.file.resolve()))

    def open(self, stdin: IO[bytes] | None = None) -> Stream:
        # Unbuffered: one read takes what is there. A named pipe is a file too, and a
        # buffered `read(n)` would wait for all n bytes, holding back the lines written.
        return open(self.file, "rb", buffering=0)  # the reader closes it


@dataclass(frozen=True, slots=True)
class StandardInput(Source):
    """Standard input (`-`), or a stream the caller hands to `open`; never closed by
    the reader, and never resumed."""

    resumable: ClassVar[bool] = False

    @property
    def state_key(self) -> str:
        return STDIN

    def open(self, stdin: IO[bytes] | None = None) -> Stream:
        if stdin is None:
            if sys.stdin is None:  # `ctsync upload - <&-` (`OpenSource` says so first)
                raise OSError(errno.EBADF, "standard input is closed")
            stdin = sys.stdin.buffer
        return _Borrowed(stdin)


def printable(name: str) -> str:
    """A file name as ctsync writes it (summary, report, state file): its bytes that are
    not UTF-8 (Python reads them as lone surrogates, which no JSON or SQLite text can
    hold) as `\\xff`. Distinct names stay distinct; the file is still opened by its
    path."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


def own_stdin() -> IO[bytes] | None:
    """Standard input through an unbuffered descriptor of its own (a `dup` of it), for
    a process whose run is the only reader of its stdin (the CLI); None when it has
    none. Not `sys.stdin.buffer`: a pipe is read on a thread of its own while it waits
    for a writer (`feed.Stepper`), and a process that ends then (SIGTERM) found that
    buffer's lock held, and aborted ("Fatal Python error: _enter_buffered_busy", exit
    134) instead of exiting as it says. (Bytes something read into that buffer before
    would be passed over: a library caller that read some passes its stream instead.)
    A raw read takes what is there, as `read1` does."""
    if sys.stdin is None:
        return None
    try:
        descriptor = os.dup(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):  # a stdin without one (a test's)
        return None
    return io.FileIO(descriptor, "rb")


@dataclass(frozen=True, slots=True)
class BucketObject(Source):
    """An object in an S3 or GCS bucket (`url`), read at its `version` through `store`."""

    grows: ClassVar[bool] = False

    @property
    def state_key(self) -> str:
        assert self.url is not None, "a BucketObject has a URL"
        return self.url

    @property
    def key(self) -> str:
        """The object's key in its bucket (`s3://bucket/key` -> `key`)."""
        return self.state_key.split("/", 3)[3]

    def open(self, stdin: IO[bytes] | None = None) -> Stream:
        assert self.store is not None, "a bucket source carries its store"
        return self.store.open(self)


class _Borrowed:
    """A stream the reader reads but does not own: closing it leaves it open. A read
    takes what is there (`read1`, when the stream has it): `sys.stdin.buffer.read(n)`
    waits for all n bytes of a pipe, or its end, holding back the lines written."""

    __slots__ = ("_read", "_stream")

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._read: Callable[[int], bytes] = getattr(stream, "read1", stream.read)

    def read(self, size: int, /) -> bytes:
        return self._read(size)

    def fileno(self) -> int:
        return self._stream.fileno()

    def close(self) -> None:
        pass


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
    cannot hold a message of it, and travels to the run, which skips the others.
    `text`: the inputs are lists, one value a line (`delete --from`), not exports: a
    folder's files and a prefix's objects are read whatever they hold, but empty ones
    (a folder of identity files was skipped whole, and its JSON files read as lists)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_empty: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    s3_endpoint_url: str | None = None
    window: TimeWindow | None = None
    text: bool = False


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

    def open(self, source: BucketObject) -> ObjectReader: ...
