"""Reading Segment exports: files, directories, S3 and GCS objects and stdin; NDJSON or
JSON; gzipped or not.

The format is found from the content, never the name: gzip by its magic bytes, then the
text. A file is one JSON document (an array, a `{"batch": [...]}` envelope, a single
message) only if it parses as one; anything else is NDJSON, read line by line, so a
damaged first line is one invalid record and every other line is still read.

Memory stays flat whatever the input: NDJSON is streamed, runs of blank lines are
counted rather than held, gzip is inflated a bounded chunk at a time (a gzip bomb cannot
blow up), and a line longer than `max_line_bytes` becomes one `line-too-long` record
without being held whole. A JSON document up to `max_line_bytes` is read whole; a larger
one (an array or envelope whose head reads as one) is read element by element
(`ctsync.documents`), and a break in it keeps every element before it. Nesting deeper
than `MAX_DEPTH` is a `too-deep` record before anything recursive (a mapper, orjson's
encoder) touches it.

Every record keeps its origin: the path, URL or `-`, and the 1-based line (for a JSON
document, the 1-based element index), with `part` numbering the messages of one line
that is an envelope.
"""

from __future__ import annotations

import os
import select
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol, cast

import orjson
from xxhash import xxh3_64_intdigest

from ctsync import documents, remote
from ctsync.errors import UsageError
from ctsync.records import Invalid, Message, Origin, Stage
from ctsync.sources import (
    DEFAULT_MAX_LINE_BYTES,
    GZIP_MAGIC,
    INFLATE_ERRORS,
    NONBLANK,
    SNIFF_BYTES,
    STDIN,
    UTF8_BOM,
    BucketObject,
    InputOptions,
    LocalFile,
    SkippedFile,
    Source,
    StandardInput,
    Stream,
    inflate,
    printable,
    selected,
    sniff,
)
from ctsync.summary import plural

_READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, *INFLATE_ERRORS)

PIPE_GRACE = 0.005
"""Seconds a pipe may take to bring more before what was read goes on without it."""
READ_BUFFER = 1 << 16  # bytes taken from the file (compressed, for gzip) per read
CHUNK = 1 << 16  # at most this many inflated bytes at once, whatever the gzip ratio
MAX_DEPTH = 100  # orjson encodes at most 254 levels; Python recursion is ~1000
_BLANK = b" \t\r\n\x0b\x0c"


@dataclass(slots=True)
class InputRecord:
    """One record as read: its origin, the original bytes, and the message or why not.

    `raw` is the input line without its line end (for NDJSON), or None for an element
    of a JSON document or of an envelope line. `partial` is True for the last line of a
    file that has no final newline: a writer may still be appending to it.
    """

    origin: Origin
    raw: bytes | None
    message: Message | None
    error: Invalid | None
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Span:
    """Where a block's bytes lie in a file that a worker process may read itself: the
    file at `path` if it is still the one the run opened (`device`, `inode`), `length`
    bytes from `offset`, whose XXH3 hash is `digest` (set as the block goes to a worker:
    `Block.lean`). The pipe to a worker then carries a few numbers instead of the bytes."""

    path: str
    device: int
    inode: int
    offset: int
    length: int
    digest: int = 0


@dataclass(frozen=True, slots=True)
class File:
    """A local file as a worker process finds it: by its path, if it is still the file
    with this device and inode."""

    path: str
    device: int
    inode: int


@dataclass(frozen=True, slots=True)
class Block:
    """Whole NDJSON lines of one input, to be decoded elsewhere (`--workers`): the
    lines after line `lineno` of `source`, each with its line end, except perhaps the
    last line of the input. `decode_block` reads them exactly as `read_source` would.
    `span`: where they lie in a file a worker may read itself (see `Span`)."""

    source: str
    lineno: int
    data: bytes
    limit: int
    span: Span | None = None

    def lean(self) -> Block:
        """This block as it travels to a worker: its span without its bytes, when it
        has a span (the worker reads them: `fetch`)."""
        if self.span is None:
            return self
        span = replace(self.span, digest=xxh3_64_intdigest(self.data))
        return Block(self.source, self.lineno, b"", self.limit, span)


def fetch(block: Block) -> Block | None:
    """A lean block (`Block.lean`) with its bytes read from its file, or None when they
    are not the bytes the run read (the file was rotated, deleted, cut short or
    rewritten since: the hash tells, at 11 GB/s) or cannot be read: the run then
    prepares the block from its own copy. A worker never reads what the run did not:
    a block read after a rewrite would mix the file's new lines with the run's old
    ones, and lose or repeat records."""
    span = block.span
    if span is None or block.data:
        return block
    try:
        fd = os.open(span.path, os.O_RDONLY)
    except OSError:  # gone since (renamed, deleted)
        return None
    try:
        found = os.fstat(fd)
        if (found.st_dev, found.st_ino) != (span.device, span.inode):
            return None  # another file by that name now (a log rotated)
        data = os.pread(fd, span.length, span.offset)
        while 0 < len(data) < span.length:  # (a read may return less than asked)
            more = os.pread(fd, span.length - len(data), span.offset + len(data))
            if not more:
                break
            data += more
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) != span.length or xxh3_64_intdigest(data) != span.digest:
        return None
    return Block(block.source, block.lineno, data, block.limit)


@dataclass(slots=True)
class Inputs:
    """The inputs of a run, the files scanned but not read (said in the summary), and
    how many files were passed over for being in day folders before `--since`."""

    sources: list[Source] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    passed_over: int = 0
    left_out: int = 0  # files in scanned folders that --include/--exclude left out

    def notes(self, limit: int = 10) -> list[str]:
        """The skipped files as summary notes: each, or past `limit` their count first,
        then the first `limit` (the summary shows 20 notes at most: a count after them
        was hidden, and 60 files skipped read as "... and 2 more notes")."""
        notes = [f"{s.name}: skipped, {s.reason}" for s in self.skipped[:limit]]
        if len(self.skipped) > limit:
            notes.insert(0, f"{len(self.skipped):,} files skipped; the first {limit} follow")
        if self.passed_over:
            notes.append(
                f"{plural(self.passed_over, 'file')} not read: in Segment day folders that "
                "end a day or more before --since, so none of their messages can be in the "
                "window"
            )
        return notes


class _Candidate(Protocol):
    def sniff(self) -> str | None: ...


def collect_sources(paths: Iterable[str], options: InputOptions = InputOptions()) -> list[Source]:
    """The sources `collect_inputs` finds (the skipped files left out)."""
    return collect_inputs(paths, options).sources


def collect_inputs(paths: Iterable[str], options: InputOptions = InputOptions()) -> Inputs:
    """Expand the command line's paths: `-` is stdin; a directory (or `s3://`/`gs://`
    prefix) is read recursively in sorted order, and each regular file in it whose
    content is an export (gzip magic, then `{` or `[` first) is an input; the others
    are listed as skipped. A file named on its own is always read. The same file named
    twice (`a`, `./a`, a link to it) is read once, where it first appears.

    Raises UsageError, before anything is read or sent, for a path that does not exist
    or cannot be read, a bucket that refuses access, or (without `allow_empty`) inputs
    that hold no export file at all.
    """
    inputs = Inputs()
    seen: set[str] = set()
    names = list(paths) or [STDIN]
    for name in names:
        found: Sequence[Source]
        if name == STDIN:
            found = [StandardInput(STDIN, None, None, max_line_bytes=options.max_line_bytes)]
        elif remote.is_url(name):
            found, skipped, passed_over = remote.collect(name, options)
            inputs.skipped += skipped
            inputs.passed_over += passed_over
        else:
            found = _local(name, options, inputs)
        for source in found:
            key = source.state_key
            if key in seen and key != STDIN:
                continue
            seen.add(key)
            inputs.sources.append(source)
    # A window that leaves out every file is what was asked for, not a mistaken path.
    if not inputs.sources and not options.allow_empty and not inputs.passed_over:
        passed = len(inputs.skipped)
        why = (
            ""
            if not passed
            else " (1 file skipped: not an export)"
            if passed == 1
            else f" ({passed:,} files skipped: not exports)"
        )
        if inputs.left_out:  # the filter, not the folder, may be what is wrong
            why += f" ({plural(inputs.left_out, 'file')} left out by --include/--exclude)"
        raise UsageError(
            f"no input files in {', '.join(names)}{why}; "
            "pass --allow-empty if an empty input is expected"
        )
    return inputs


def _local(name: str, options: InputOptions, inputs: Inputs) -> list[Source]:
    path = Path(name)
    window = options.window
    if path.is_dir():
        found: list[Source] = []
        for relative, file in _walk(path):
            if not selected(relative, options):
                inputs.left_out += 1
                continue
            if window is not None and window.passes_over(os.path.abspath(file)):
                inputs.passed_over += 1
                continue
            source = _file_source(file, options)
            # (a list of values, `text`: any file but an empty one)
            empty = "empty" if source.size == 0 else None
            reason = empty if options.text else sniff_file(file)
            if reason is None:
                found.append(source)
            else:
                inputs.skipped.append(SkippedFile(printable(str(file)), reason))
        return found
    if path.exists():
        if window is not None and window.passes_over(os.path.abspath(path)):
            inputs.passed_over += 1
            return []
        return [_file_source(path, options)]
    raise UsageError(f"{name}: no such file or directory")


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """Regular files under `root` (links to files included; linked directories are not
    followed, so a link loop cannot trap the scan), sorted by relative path."""
    files: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root, onerror=_walk_error):
        for name in names:
            file = Path(folder, name)
            if file.is_file():
                files.append((file.relative_to(root).as_posix(), file))
        dirs.sort()
    files.sort(key=lambda item: item[0])
    return iter(files)


def _walk_error(exc: OSError) -> None:
    raise UsageError(f"{exc.filename}: cannot read this directory ({exc.strerror})")


def _file_source(path: Path, options: InputOptions) -> LocalFile:
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied (cannot read this file)")
    size = path.stat().st_size
    return LocalFile(printable(str(path)), path, size, max_line_bytes=options.max_line_bytes)


def sniff_file(path: Path) -> str | None:
    """Why the file at `path` is not a Segment export, or None when it is one."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read this file ({exc.strerror})") from None
    return sniff(head)


class OpenSource:
    """An opened input, read as decompressed chunks; counts the bytes taken from the file
    (compressed bytes for gzip) so progress can show how much is consumed. `stdin` is
    what a `StandardInput` source reads (`Source.open`)."""

    def __init__(self, source: Source, stdin: IO[bytes] | None = None) -> None:
        self.source = source
        if isinstance(source, StandardInput) and stdin is None and sys.stdin is None:
            # `ctsync upload - <&-`: a mistake in the command line, not an unreadable file
            raise UsageError("standard input is closed: give a file path, or pipe data in")
        self._raw: Stream = source.open(stdin)
        self.consumed = 0
        self.drained = False
        # Whether a read may wait for a writer (a pipe, a terminal, a socket), and the
        # size of a regular file as it is opened (compressed, for gzip).
        self.may_wait, self.size = file_kind(self._raw)
        # How a worker process finds this file to read its bytes itself (`Span`): set
        # once the content shows it is not gzip, for a regular local file.
        self._file: File | None = None

    def position(self) -> tuple[File, int] | None:
        """(how a worker finds this very file, the offset of the next byte this reads),
        for a regular local file that is not gzip; None otherwise (a pipe, gzip, a
        bucket object: their bytes travel to the workers)."""
        if self._file is None:
            return None
        try:
            return self._file, os.lseek(self._raw.fileno(), 0, os.SEEK_CUR)  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            return None

    def _found(self) -> File | None:
        if self.may_wait or self.size is None or not isinstance(self.source, LocalFile):
            return None
        try:
            found = os.fstat(self._raw.fileno())  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            return None
        return File(os.path.abspath(self.source.file), found.st_dev, found.st_ino)

    def chunks(self) -> Iterator[bytes]:
        """The content, decompressed if it starts with gzip's magic bytes, in chunks of at
        most CHUNK bytes. Raises EOFError after the last whole chunk of a truncated gzip
        stream, zlib.error (or ISA-L's error) for a corrupt one."""
        first = self._read()
        while 0 < len(first) < 2:  # a pipe may hand over one byte: enough to tell gzip
            more = self._read()
            if not more:
                break
            first += more
        if first[:2] != GZIP_MAGIC:
            self._file = self._found()
            while first:
                yield first
                first = self._read()
            return
        yield from self._gunzip(first)

    def _gunzip(self, data: bytes) -> Iterator[bytes]:
        # Gzip members may be concatenated (as `cat a.gz b.gz` makes): one decoder each.
        # `max_length` bounds each inflated piece, so 1 MB of gzip cannot become 1 GB at once.
        decoder = inflate.decompressobj(wbits=31)
        started = bool(data)
        while True:
            if not data:
                data = self._read()
                if not data:
                    break
                started = True
            out = decoder.decompress(data, CHUNK)
            data = decoder.unconsumed_tail
            if out:
                yield out
            if decoder.eof:
                data = decoder.unused_data + data
                decoder = inflate.decompressobj(wbits=31)
                started = bool(data)
        if started and not decoder.eof:
            out = decoder.flush()
            if out:
                yield out
            raise EOFError("truncated gzip stream")

    def _read(self) -> bytes:
        data = self._raw.read(READ_BUFFER)
        while data is None:  # a descriptor another process made non-blocking: nothing yet
            _ready(self._raw, None)
            data = self._raw.read(READ_BUFFER)
        self.consumed += len(data)
        if self.may_wait and data:
            # A pipe: whether more comes at once (a read may take exactly what was
            # there, or less). A writer that is merely slower than this reader (zcat)
            # keeps it busy within `PIPE_GRACE`: its blocks stay whole.
            self.drained = not _ready(self._raw, PIPE_GRACE)
        else:  # a file: less than asked is its end
            self.drained = len(data) < READ_BUFFER
        return data

    def close(self) -> None:
        self._raw.close()


def _ready(stream: Stream, within: float | None) -> bool:
    """Whether a read of `stream` (one with a file descriptor) would not wait, now or
    within `within` seconds (None: waits until it would not). `poll`, not `select`:
    a process with a thousand files open has descriptors `select` refuses."""
    poller = select.poll()
    poller.register(stream.fileno(), select.POLLIN)  # type: ignore[attr-defined]
    return bool(poller.poll(None if within is None else within * 1000))


def file_kind(stream: object) -> tuple[bool, int | None]:
    """Whether a read of `stream` may wait for a writer (not a regular file), and the
    size of a regular file. A stream without a file descriptor (a bucket object, a
    test's bytes, a terminal's reader) does neither."""
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return False, None
    try:
        found = os.fstat(fileno())
    # (a borrowed stream whose own has no descriptor; io.UnsupportedOperation is both)
    except (AttributeError, OSError, ValueError):
        return False, None
    if stat.S_ISREG(found.st_mode):
        return False, found.st_size
    return True, None


def read_source(opened: OpenSource) -> Iterator[InputRecord]:
    """Every record of one opened input. Broken content becomes `InputRecord`s with an
    `error`; an unreadable stream ends the file early with one error record at line 0,
    after every whole record before the fault."""
    name = opened.source.name
    # Without `block_bytes` the reader makes records only.
    records = cast(
        Iterator[InputRecord], _Reader(name, opened.source.max_line_bytes).read(opened.chunks())
    )
    try:
        yield from records
    except _READ_ERRORS as exc:
        yield InputRecord(
            Origin(name, 0), None, None, Invalid("unreadable", _describe_io_error(exc), Stage.PARSE)
        )


def read_blocks(opened: OpenSource, block_bytes: int) -> Iterator[InputRecord | Block]:
    """`read_source`, with NDJSON handed over as `Block`s of whole lines of about
    `block_bytes` (`decode_block` turns each into its records); everything else (JSON
    documents, overlong lines, an unreadable stream) comes as records, in input order."""
    name = opened.source.name
    reader = _Reader(
        name, opened.source.max_line_bytes, block_bytes, lambda: opened.drained, opened.position
    )
    try:
        yield from reader.read(opened.chunks())
    except _READ_ERRORS as exc:
        yield InputRecord(
            Origin(name, 0), None, None, Invalid("unreadable", _describe_io_error(exc), Stage.PARSE)
        )


def decode_block(block: Block) -> Iterator[InputRecord]:
    """The records of a block, as `read_source` reads those lines."""
    return _Reader(block.source, block.limit)._ndjson(iter((block.data,)), block.lineno)


def _describe_io_error(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the gzip stream is truncated; records after this point were not read"
    if isinstance(exc, INFLATE_ERRORS):
        return f"the gzip stream is corrupt ({exc}); records after this point were not read"
    return f"cannot read the file ({exc.__class__.__name__}: {exc})"


def _block(
    name: str, lineno: int, data: bytes, limit: int, file: File | None, offset: int
) -> Block:
    """A block of whole lines; with its span when it starts at `offset` of `file`."""
    if file is None or offset < 0:
        return Block(name, lineno, data, limit)
    return Block(
        name, lineno, data, limit, Span(file.path, file.device, file.inode, offset, len(data))
    )


class _Reader:
    """Tells the format of one stream, then reads it."""

    def __init__(
        self,
        name: str,
        max_line_bytes: int,
        block_bytes: int = 0,
        drained: Callable[[], bool] = lambda: False,
        position: Callable[[], tuple[File, int] | None] = lambda: None,
    ) -> None:
        self.name = name
        self.limit = max_line_bytes
        self.block_bytes = block_bytes  # > 0: NDJSON goes out as blocks (`read_blocks`)
        self.drained = drained  # whether the input had nothing more waiting at the last read
        self.position = position  # `OpenSource.position`: for blocks' spans

    def _at(self, held: bytes | bytearray) -> tuple[File, int] | None:
        """Where in its file the bytes `held` start: those read and not yet handed on,
        the last read so far (see `OpenSource.position`)."""
        found = self.position()
        return None if found is None else (found[0], found[1] - len(held))

    def read(self, chunks: Iterator[bytes]) -> Iterator[InputRecord | Block]:
        # 1. Leading blank lines are counted, not kept (a stream of newlines is not held).
        first_chunk = next(chunks, b"").removeprefix(UTF8_BOM)
        lines_before, head = _skip_blank(first_chunk, chunks)
        if head is None:
            return  # nothing but blank lines
        if head.lstrip(_BLANK)[:1] not in (b"{", b"["):
            yield from self._lines(_prepend(head, chunks), lines_before, self._at(head))
            return
        # 2. The first line, when it is whole JSON on its own, tells the format.
        head, complete = _until_newline(head, chunks, self.limit)
        if not complete:  # longer than any record may be: a big document, or NDJSON from it on
            if documents.probe(head, self.limit):
                yield from self._big_document(head, chunks)
                return
            yield from self._lines(_prepend(head, chunks), lines_before, self._at(head))
            return
        first_line = head[: head.index(b"\n")] if b"\n" in head else head
        try:
            value = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(value) is dict and not _is_envelope(value):
                yield from self._lines(_prepend(head, chunks), lines_before, self._at(head))
                return
            # An envelope or array on one line is the document when nothing follows.
            newlines, following = _skip_blank(head[len(first_line) :], chunks)
            if following is None:
                yield from self._document_value(value, lines_before)
                return
            yield from self._ndjson(iter([first_line + b"\n"]), lines_before)
            yield from self._lines(
                _prepend(following, chunks), lines_before + newlines, self._at(following)
            )
            return
        # 3. Otherwise the whole stream is one document only if it parses as one.
        buffer = bytearray(head)
        del head
        while len(buffer) <= self.limit:
            chunk = next(chunks, None)
            if chunk is None:
                break
            buffer += chunk
        else:
            if documents.probe(buffer, self.limit):
                yield from self._big_document(buffer, chunks)
                return
            yield from self._ndjson(_slices(buffer, chunks), lines_before, big=True)
            return
        try:
            value = orjson.loads(buffer)
        except orjson.JSONDecodeError:
            # An array broken half way keeps the elements before the break, as a big one
            # does; NDJSON (a damaged first line included) is read line by line.
            if documents.probe(buffer, self.limit, whole=True):
                yield from self._big_document(buffer, iter(()))
                return
            yield from self._lines(_slices(buffer, iter(())), lines_before, self._at(buffer))
            return
        del buffer
        yield from self._document_value(value, lines_before)

    def _big_document(
        self, head: bytes | bytearray, chunks: Iterator[bytes]
    ) -> Iterator[InputRecord]:
        """A JSON array or envelope larger than the limit, element by element."""
        document = documents.Document(head, chunks, self.limit)
        del head
        name = self.name
        try:
            for index, element in document.elements():
                yield _element(Origin(name, index), None, element)
        except documents.Break as exc:
            yield InputRecord(
                Origin(name, document.index + 1), None, None, exc.invalid, exc.partial
            )
        except documents.NotADocument:  # after its head read as one: only a late `type`
            invalid = Invalid("malformed-json", "the JSON document is broken", Stage.PARSE)
            yield InputRecord(Origin(name, document.index + 1), None, None, invalid)

    def _document_value(self, value: Any, lines_before: int) -> Iterator[InputRecord]:
        name = self.name
        if isinstance(value, dict) and _is_envelope(value):
            value = value["batch"]
        elif isinstance(value, dict):
            yield _element(Origin(name, 1), None, value)
            return
        if not isinstance(value, list):
            yield InputRecord(Origin(name, 1), None, None, _not_an_object(value))
            return
        for index, element in enumerate(value, start=1):
            yield _element(Origin(name, index), None, element)

    def _lines(
        self, chunks: Iterator[bytes], lineno: int, at: tuple[File, int] | None = None
    ) -> Iterator[InputRecord | Block]:
        """NDJSON after line `lineno`: records, or blocks of lines with `block_bytes`
        (`at`: where `chunks` start in a file a worker may read, see `Span`)."""
        if self.block_bytes > 0:
            return self._blocks(chunks, lineno, at)
        return self._ndjson(chunks, lineno)

    def _blocks(
        self, chunks: Iterator[bytes], lineno: int, at: tuple[File, int] | None = None
    ) -> Iterator[InputRecord | Block]:
        """NDJSON cut into blocks of whole lines, for `decode_block` to read elsewhere.

        A block goes out when it is big enough, or when the input has nothing more
        waiting (a slow pipe, a person typing): lines are never held back for more.
        Only line ends are looked for here. A line longer than the limit is the same
        `line-too-long` record `_ndjson` makes, and is never held whole; the last line
        may lack its line end (the block's reader marks it partial). When the stream
        breaks (a truncated gzip), the whole lines before the fault still go out.
        """
        name, limit, target = self.name, self.limit, self.block_bytes
        pieces: list[bytes] = []  # not yet handed over; starts at the start of a line
        held = 0
        # Where `pieces` start in the file a worker may read (`Span`), when it may.
        file, offset = at if at is not None else (None, -1)
        chunks = iter(chunks)
        try:
            for chunk in chunks:
                pieces.append(chunk)
                held += len(chunk)
                if held < target and not self.drained():
                    continue
                data = b"".join(pieces)
                cut = data.rfind(b"\n") + 1
                if cut:
                    block = _block(name, lineno, data[:cut], limit, file, offset)
                    lineno += block.data.count(b"\n")
                    yield block
                    if offset >= 0:
                        offset += cut
                rest = data[cut:]
                pieces, held = [rest], len(rest)
                if held > limit:  # a line longer than any record may be: skip to its end
                    pieces, held = [], 0
                    lineno += 1
                    skipped = len(rest)
                    for chunk in chunks:
                        end = chunk.find(b"\n")
                        if end >= 0:
                            yield self._too_long(lineno)
                            rest = chunk[end + 1 :]
                            pieces, held = [rest], len(rest)
                            if offset >= 0:
                                offset += skipped + end + 1
                            break
                        skipped += len(chunk)
                    else:
                        yield self._too_long(lineno, partial=True)
                        return
        except _READ_ERRORS:
            data = b"".join(pieces)
            cut = data.rfind(b"\n") + 1
            if cut:
                yield _block(name, lineno, data[:cut], limit, file, offset)
            raise
        data = b"".join(pieces)
        if data:
            yield _block(name, lineno, data, limit, file, offset)

    def _ndjson(
        self, chunks: Iterator[bytes], lineno: int, *, big: bool = False
    ) -> Iterator[InputRecord]:
        """NDJSON, line by line. The hot path of every run: one split per chunk, one
        orjson call per line; runs of blank lines and overlong lines are never joined."""
        name = self.name
        limit = self.limit
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        pieces: list[bytes] = []  # the line being read, when it spans chunks
        held = 0  # bytes in `pieces`
        overlong = False  # the line being read is over the limit: skip to its end
        first = True
        for chunk in chunks:
            if not pieces and not overlong and chunk.isspace():
                lineno += chunk.count(b"\n")  # blank lines: counted, not split
                continue
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if not lines:  # no line ends here: the line goes on in the next chunk
                if not overlong:
                    held += len(tail)
                    if held > limit:
                        pieces, held, overlong = [], 0, True
                    else:
                        pieces.append(tail)
                continue
            if pieces or overlong:
                if overlong or held + len(lines[0]) > limit:
                    lineno += 1
                    yield self._too_long(lineno)
                    del lines[0]
                else:
                    pieces.append(lines[0])
                    lines[0] = b"".join(pieces)
                pieces, held, overlong = [], 0, False
            for line in lines:
                lineno += 1
                if len(line) > limit:
                    yield self._too_long(lineno)
                    continue
                raw = line[:-1] if line[-1:] == b"\r" else line
                if not raw or raw.isspace():
                    continue
                origin = Origin(name, lineno)
                try:
                    value = loads(raw)
                except decode_error as exc:
                    yield InputRecord(origin, raw, None, self._parse_error(exc, raw, first, big))
                    first = False
                    continue
                first = False
                if type(value) is dict:
                    if (raw.count(b"{") + raw.count(b"[")) > MAX_DEPTH and _too_deep(value):
                        yield InputRecord(origin, raw, None, _TOO_DEEP)
                    elif "batch" in value and _is_envelope(value):
                        for part, element in enumerate(value["batch"]):
                            yield _element(Origin(name, lineno, part), None, element)
                    else:
                        yield InputRecord(origin, raw, value, None)
                else:
                    yield InputRecord(origin, raw, None, _not_an_object(value))
            if tail:
                if len(tail) > limit:
                    pieces, held, overlong = [], 0, True
                else:
                    pieces, held = [tail], len(tail)
        if overlong:
            yield self._too_long(lineno + 1, partial=True)
        elif pieces:
            raw = b"".join(pieces)
            if raw and not raw.isspace():
                yield from self._last_line(raw.removesuffix(b"\r"), lineno + 1, first, big)

    def _last_line(self, raw: bytes, lineno: int, first: bool, big: bool) -> Iterator[InputRecord]:
        """The last line, without a final newline: read as any line, marked partial."""
        for record in self._ndjson(iter([raw + b"\n"]), lineno - 1, big=big and first):
            record.partial = True
            yield record

    def _too_long(self, lineno: int, partial: bool = False) -> InputRecord:
        return InputRecord(
            Origin(self.name, lineno),
            None,
            None,
            Invalid(
                "line-too-long",
                f"the line is longer than --max-line-bytes ({self.limit:,} bytes); it was not read",
                Stage.PARSE,
            ),
            partial,
        )

    def _parse_error(
        self, exc: orjson.JSONDecodeError, raw: bytes, first: bool, big: bool
    ) -> Invalid:
        if "depth" in exc.msg and (raw.count(b"{") + raw.count(b"[")) > MAX_DEPTH:
            return _TOO_DEEP
        if first and big:
            return Invalid(
                "malformed-json",
                f"not valid JSON: {exc.msg} (if this file is one JSON document, it is larger "
                f"than --max-line-bytes, {self.limit:,} bytes: write it as NDJSON, one message "
                "a line, e.g. with jq -c '.[]')",
                Stage.PARSE,
            )
        if "not valid UTF-8" in exc.msg:  # orjson adds "surrogates not allowed": misleading
            return Invalid(
                "malformed-json",
                "not valid JSON: the line is not UTF-8 text (JSON must be UTF-8: was the "
                "file written in another encoding, such as Latin-1?)",
                Stage.PARSE,
            )
        return Invalid("malformed-json", f"not valid JSON: {exc.msg}", Stage.PARSE)


def _prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from chunks


def _until_newline(head: bytes, chunks: Iterator[bytes], limit: int) -> tuple[bytes, bool]:
    """`head` extended until it holds a whole first line; False when the line is longer
    than `limit` (then `head` holds what was read)."""
    while b"\n" not in head:
        if len(head) > limit:
            return head, False
        more = next(chunks, None)
        if more is None:
            return head, True
        head += more
    return head, head.index(b"\n") <= limit


def _skip_blank(rest: bytes, chunks: Iterator[bytes]) -> tuple[int, bytes | None]:
    """The newlines in the blank bytes from `rest` on, and the rest of the stream from
    the start of the first line that is not blank (None when only blank lines follow).
    Blank bytes are counted, never kept."""
    newlines = 0
    for chunk in _prepend(rest, chunks):
        if not chunk or chunk.isspace():  # bytes.isspace: exactly the blank bytes, in C
            newlines += chunk.count(b"\n")
            continue
        found = NONBLANK.search(chunk)
        assert found is not None
        cut = chunk.rfind(b"\n", 0, found.start()) + 1
        return newlines + chunk.count(b"\n", 0, cut), chunk[cut:]
    return newlines, None


def _slices(buffer: bytearray, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`buffer` in CHUNK-sized pieces (never copied whole), then the rest of the stream."""
    for start in range(0, len(buffer), CHUNK):
        yield bytes(buffer[start : start + CHUNK])
    buffer.clear()
    yield from chunks


def _is_envelope(value: dict[str, Any]) -> bool:
    return isinstance(value.get("batch"), list) and "type" not in value


def _too_deep(value: Any) -> bool:
    """Whether `value` nests deeper than MAX_DEPTH, found without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if type(item) is dict else item
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


_TOO_DEEP = Invalid(
    "too-deep", f"the message nests deeper than {MAX_DEPTH} levels; it was not read", Stage.PARSE
)


def _element(origin: Origin, raw: bytes | None, element: Any) -> InputRecord:
    if type(element) is dict:
        if _too_deep(element):
            return InputRecord(origin, raw or _json_of(element), None, _TOO_DEEP)
        return InputRecord(origin, raw, element, None)
    return InputRecord(origin, raw or _json_of(element), None, _not_an_object(element))


def _json_of(element: Any) -> bytes | None:
    """An element that is no message, as its dead letter: its JSON, one line (None when
    it nests too deep even for orjson's encoder)."""
    try:
        return orjson.dumps(element)
    except orjson.JSONEncodeError:
        return None


def _not_an_object(value: Any) -> Invalid:
    kind = "null" if value is None else type(value).__name__
    return Invalid(
        "not-an-object", f"expected a JSON object (a Segment message), got {kind}", Stage.PARSE
    )


def text_lines(name: str, options: InputOptions = InputOptions()) -> Iterator[tuple[Origin, str]]:
    """The lines of a plain-text input (a file, bucket object or `-`), read like exports:
    gzip by content, a BOM and CRLF removed. Raises UsageError for what is not UTF-8, and
    for a folder with no file to read (without upload's hint: `--allow-empty` is its)."""
    sources = collect_inputs([name], replace(options, allow_empty=True, text=True)).sources
    if not sources:
        raise UsageError(f"no input files in {name}")
    for source in sources:
        opened = OpenSource(source)
        try:
            tail = b""
            number = 0
            for chunk in opened.chunks():
                *lines, tail = (tail + chunk).split(b"\n")
                for line in lines:
                    number += 1
                    yield Origin(source.name, number), _text(source.name, number, line)
            if tail:
                yield Origin(source.name, number + 1), _text(source.name, number + 1, tail)
        except _READ_ERRORS as exc:
            raise UsageError(f"{source.name}: {_describe_io_error(exc)}") from None
        finally:
            opened.close()


def _text(name: str, number: int, line: bytes) -> str:
    if number == 1:
        line = line.removeprefix(UTF8_BOM)
    try:
        return line.removesuffix(b"\r").decode()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}:{number}: not UTF-8 text ({exc.reason})") from None


def describe_where(origin: Origin) -> str:
    """`file:line`, with the message's place in an envelope line when it has one."""
    where = f"{origin.source}:{origin.line}"
    return f"{where} (message {origin.part + 1} of the line)" if origin.part else where


__all__: Sequence[str] = (
    "DEFAULT_MAX_LINE_BYTES",
    "STDIN",
    "Block",
    "BucketObject",
    "InputOptions",
    "InputRecord",
    "Inputs",
    "LocalFile",
    "OpenSource",
    "SkippedFile",
    "Source",
    "Span",
    "StandardInput",
    "collect_inputs",
    "collect_sources",
    "decode_block",
    "fetch",
    "read_blocks",
    "read_source",
)
