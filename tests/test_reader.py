"""Reading exports: formats found by content, origins kept, bad content never fatal."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import orjson
import pytest

from ctsync.errors import UsageError
from ctsync.reader import InputRecord, OpenSource, Source, collect_sources, read_source

IDENTIFY = {"type": "identify", "userId": "u1", "traits": {"a": 1}}
TRACK = {"type": "track", "userId": "u2", "event": "Clicked"}


def read_bytes(data: bytes, name: str = "in.ndjson") -> list[InputRecord]:
    source = Source(name, None, None)
    return list(read_source(OpenSource(source, io.BytesIO(data))))


def ndjson(*messages: object) -> bytes:
    return b"".join(orjson.dumps(m) + b"\n" for m in messages)


def good(records: list[InputRecord]) -> list[tuple[int, object]]:
    return [(r.origin.line, r.message) for r in records if r.message is not None]


def test_ndjson_lines_keep_their_line_numbers_and_raw_bytes() -> None:
    records = read_bytes(ndjson(IDENTIFY) + b"\n\n" + ndjson(TRACK))
    assert good(records) == [(1, IDENTIFY), (4, TRACK)]
    assert records[0].raw == orjson.dumps(IDENTIFY)


def test_gzip_is_detected_by_magic_bytes_not_name() -> None:
    data = gzip.compress(ndjson(IDENTIFY, TRACK))
    assert good(read_bytes(data, "export.txt")) == [(1, IDENTIFY), (2, TRACK)]


@pytest.mark.parametrize(
    "document",
    [
        orjson.dumps([IDENTIFY, TRACK]),
        orjson.dumps([IDENTIFY, TRACK], option=orjson.OPT_INDENT_2),
        orjson.dumps({"batch": [IDENTIFY, TRACK]}),
        orjson.dumps({"batch": [IDENTIFY, TRACK], "sentAt": "x"}, option=orjson.OPT_INDENT_2),
    ],
    ids=["array", "pretty-array", "envelope", "pretty-envelope"],
)
def test_arrays_and_envelopes_number_elements(document: bytes) -> None:
    assert good(read_bytes(document)) == [(1, IDENTIFY), (2, TRACK)]
    assert good(read_bytes(gzip.compress(document))) == [(1, IDENTIFY), (2, TRACK)]


def test_a_single_pretty_printed_message() -> None:
    assert good(read_bytes(orjson.dumps(IDENTIFY, option=orjson.OPT_INDENT_2))) == [(1, IDENTIFY)]


def test_ndjson_lines_that_are_envelopes_are_expanded() -> None:
    data = orjson.dumps({"batch": [IDENTIFY]}) + b"\n" + orjson.dumps({"batch": [TRACK]}) + b"\n"
    assert good(read_bytes(data)) == [(1, IDENTIFY), (2, TRACK)]


def test_bom_crlf_and_blank_lines() -> None:
    data = (
        b"\xef\xbb\xbf"
        + orjson.dumps(IDENTIFY)
        + b"\r\n\r\n   \r\n"
        + orjson.dumps(TRACK)
        + b"\r\n"
    )
    assert good(read_bytes(data)) == [(1, IDENTIFY), (4, TRACK)]


def test_bad_lines_are_records_with_errors_and_neighbours_survive() -> None:
    data = (
        ndjson(IDENTIFY)
        + b'{"type": "track", broken}\n'
        + b"[1, 2]\n"
        + b"null\n"
        + b'{"name": "caf\xe9"}\n'
        + b'{"n": NaN}\n'
        + ndjson(TRACK)
    )
    records = read_bytes(data)
    assert good(records) == [(1, IDENTIFY), (7, TRACK)]
    errors = {r.origin.line: r.error for r in records if r.error is not None}
    assert sorted(errors) == [2, 3, 4, 5, 6]
    assert errors[2] is not None and errors[2].code == "malformed-json"
    assert errors[3] is not None and errors[3].code == "not-an-object"
    assert errors[4] is not None and "null" in errors[4].message
    assert errors[5] is not None and "UTF-8" in errors[5].message
    assert all(r.raw is not None for r in records if r.error is not None)


def test_integers_beyond_64_bits_are_read_as_numbers() -> None:
    # orjson (3.10 and later) reads them as floats rather than refusing them; CleverTap
    # stores numbers as floating point too, so nothing is lost that would have arrived.
    (record,) = read_bytes(b'{"type": "track", "big": 123456789012345678901234567890}\n')
    assert record.message is not None
    assert record.message["big"] == pytest.approx(1.2345678901234568e29)


def test_a_broken_document_is_read_line_by_line() -> None:
    # Not one JSON document, so NDJSON: each line is one record, the good one included.
    records = read_bytes(b'[\n {"type": "identify"}\n {oops}\n]\n')
    assert good(records) == [(2, {"type": "identify"})]
    assert [(r.origin.line, r.error.code) for r in records if r.error] == [
        (1, "malformed-json"),
        (3, "malformed-json"),
        (4, "malformed-json"),
    ]


def test_truncated_gzip_keeps_what_was_read_and_says_so() -> None:
    data = gzip.compress(ndjson(*[IDENTIFY] * 2000))
    records = read_bytes(data[: len(data) // 2])
    assert records[-1].origin.line == 0 and records[-1].error is not None
    assert "truncated" in records[-1].error.message
    assert len(good(records)) > 100


def test_directories_are_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.ndjson.gz").write_bytes(gzip.compress(ndjson(TRACK)))
    (tmp_path / "a.json").write_bytes(ndjson(IDENTIFY))
    (tmp_path / "notes.txt").write_text("not an export")
    names = [
        Path(s.name).relative_to(tmp_path).as_posix() for s in collect_sources([str(tmp_path)])
    ]
    assert names == ["a.json", "b/2.ndjson.gz"]


def test_stdin_is_dash_or_nothing() -> None:
    assert collect_sources([]) == [Source("-", None, None)]
    assert collect_sources(["-"]) == [Source("-", None, None)]


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        collect_sources([str(tmp_path / "missing.ndjson")])


def test_large_files_stream(tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson.gz"
    with gzip.open(path, "wb") as out:
        for i in range(20_000):
            out.write(orjson.dumps({"type": "track", "userId": f"u{i}", "event": "E"}) + b"\n")
    (source,) = collect_sources([str(path)])
    count = 0
    last = 0
    for record in read_source(OpenSource(source)):
        count += 1
        last = record.origin.line
    assert (count, last) == (20_000, 20_000)


# -- issue 9: format detection a damaged line cannot fool ----------------------------


DAMAGED_FIRST_LINES = [
    b'{"type":"identify","userId":"u0"',  # no closing brace
    b"[1,2",
    b"{",
    b"[",
]


@pytest.mark.parametrize("first", DAMAGED_FIRST_LINES)
def test_a_damaged_first_line_is_one_invalid_record_and_every_other_line_is_read(
    first: bytes,
) -> None:
    rest = [{"type": "identify", "userId": f"u{i}"} for i in range(1, 45)]
    for data in (first + b"\n" + ndjson(*rest), gzip.compress(first + b"\n" + ndjson(*rest))):
        records = read_bytes(data)
        assert len(records) == 45
        assert records[0].origin.line == 1 and records[0].error is not None
        assert records[0].raw == first
        assert good(records) == [(i + 1, m) for i, m in enumerate(rest, start=1)]


def test_a_file_is_one_document_only_if_it_parses_as_one() -> None:
    pretty = orjson.dumps([IDENTIFY, TRACK], option=orjson.OPT_INDENT_2)
    assert good(read_bytes(pretty)) == [(1, IDENTIFY), (2, TRACK)]
    # The same document with one more line after it is not one document any more.
    records = read_bytes(pretty + b"\n" + ndjson(TRACK))
    assert (records[-1].origin.line, records[-1].message) == (pretty.count(b"\n") + 2, TRACK)
    assert all(r.error is not None for r in records[:-1])


def test_one_line_envelopes_and_arrays_followed_by_lines_are_ndjson() -> None:
    envelope = orjson.dumps({"batch": [IDENTIFY, TRACK]})
    records = read_bytes(envelope + b"\n\n\n" + ndjson(TRACK))
    assert [(r.origin.line, r.origin.part, r.message) for r in records] == [
        (1, 0, IDENTIFY),
        (1, 1, TRACK),
        (4, 0, TRACK),
    ]
    # Alone (blank lines after it do not count), the envelope is the whole document.
    alone = read_bytes(envelope + b"\n" * 5000)
    assert [(r.origin.line, r.origin.part) for r in alone] == [(1, 0), (2, 0)]


def test_a_document_after_leading_blank_lines_reports_errors_on_true_lines() -> None:
    records = read_bytes(b"\n\n" + orjson.dumps([IDENTIFY, 7, TRACK]) + b"\n")
    assert good(records) == [(1, IDENTIFY), (3, TRACK)]
    assert records[1].error is not None and records[1].error.code == "not-an-object"


def test_a_document_larger_than_max_line_bytes_is_read_element_by_element() -> None:
    pretty = orjson.dumps([IDENTIFY] * 2000, option=orjson.OPT_INDENT_2)
    source = Source("big.json", None, None, max_line_bytes=1024)
    records = list(read_source(OpenSource(source, io.BytesIO(pretty))))
    assert good(records) == [(i, IDENTIFY) for i in range(1, 2001)]


def test_a_large_file_that_is_not_a_document_is_read_as_ndjson_and_says_why() -> None:
    # An array whose first element is broken: not a document, so every line is a record.
    broken = b"[\n" + b'  {"a": NaN},\n' * 200 + ndjson(IDENTIFY)
    source = Source("big.json", None, None, max_line_bytes=1024)
    records = list(read_source(OpenSource(source, io.BytesIO(broken))))
    assert records[0].error is not None
    assert "larger than --max-line-bytes" in records[0].error.message
    assert len(records) == 202 and good(records) == [(202, IDENTIFY)]


def test_redriving_dead_letters_that_start_with_a_damaged_line_reads_every_line(
    tmp_path: Path,
) -> None:
    from ctsync import api
    from ctsync.run import RunOptions

    export = tmp_path / "export.ndjson"
    lines = [b'{"type":"identify","userId":"u0"'] + [
        orjson.dumps({"type": "identify", "anonymousId": f"a{i}"}) for i in range(1, 45)
    ]
    export.write_bytes(b"\n".join(lines) + b"\n")
    failed = tmp_path / "failed.ndjson"
    first = api.upload(
        api.UploadJob(paths=[str(export)], outputs=api.Outputs(failed=failed), run=RunOptions())
    )
    assert (first.read, first.invalid.total()) == (45, 45)  # no userId: 523
    again = api.upload(api.UploadJob(paths=[str(failed)]))
    assert (again.read, again.invalid.total()) == (45, 45)
    assert dict(again.invalid) == {"malformed-json": 1, "523": 44}


# -- issue 9: flat memory and bounded time --------------------------------------------


def measure_peak(data_chunks: object, source: Source) -> tuple[list[InputRecord], int]:
    import tracemalloc

    tracemalloc.start()
    try:
        records = list(read_source(OpenSource(source, data_chunks)))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return records, peak


def gzip_of(pieces: list[tuple[bytes, int]]) -> bytes:
    """A gzip stream of each piece repeated its count, built without holding the whole."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = []
    for piece, count in pieces:
        block = piece * max(1, (1 << 20) // len(piece))
        for _ in range(count * len(piece) // len(block)):
            out.append(packer.compress(block))
        out.append(packer.compress(piece * (count % (len(block) // len(piece)) if count else 0)))
    out.append(packer.flush())
    return b"".join(out)


def test_a_gzip_bomb_of_newlines_is_read_in_constant_memory() -> None:
    bomb = gzip_of([(ndjson(IDENTIFY), 1), (b"\n", 256 << 20), (ndjson(TRACK), 1)])
    assert len(bomb) < 1 << 20  # 256 MiB unpacked
    records, peak = measure_peak(io.BytesIO(bomb), Source("bomb.gz", None, None))
    assert good(records) == [(1, IDENTIFY), (2 + (256 << 20), TRACK)]
    assert peak < 24 << 20  # one chunk's worth of lines; the old reader held them all


def test_a_line_longer_than_max_line_bytes_is_one_invalid_record_never_held_whole() -> None:
    data = ndjson(IDENTIFY) + b'{"blob": "' + b"x" * (40 << 20) + b'"}\n' + ndjson(TRACK)
    source = Source("long.ndjson", None, None, max_line_bytes=1 << 20)
    stream = io.BytesIO(data)
    del data
    records, peak = measure_peak(stream, source)
    assert good(records) == [(1, IDENTIFY), (3, TRACK)]
    (too_long,) = [r for r in records if r.error is not None]
    assert (too_long.origin.line, too_long.error.code) == (2, "line-too-long")  # type: ignore[union-attr]
    assert peak < 8 << 20


def test_an_overlong_first_line_loses_none_of_the_lines_after_it() -> None:
    """The first line over the limit, the next lines in the same read: each of them is
    still read, on its own line number (they were dropped with the first one)."""
    data = b'{"blob": "' + b"x" * 3000 + b'"}\n' + ndjson(IDENTIFY, TRACK)
    source = Source("long.ndjson", None, None, max_line_bytes=1024)
    records = list(read_source(OpenSource(source, io.BytesIO(data))))
    assert [(r.origin.line, r.error.code if r.error else None) for r in records] == [
        (1, "line-too-long"),
        (2, None),
        (3, None),
    ]
    assert good(records) == [(2, IDENTIFY), (3, TRACK)]


def test_reading_a_long_line_never_joins_it_whole() -> None:
    import tracemalloc

    # 128 MiB in one line, over the default limit (32 MiB): the old reader joined its
    # pieces again for every chunk read (quadratic: minutes, and the whole line in memory
    # at each join). One that passes over the rest of the line holds at most the limit
    # and a chunk, whatever the line's length: its peak allocation says so without a
    # clock.
    bomb = gzip_of([(b"x", 128 << 20), (b"\n", 1), (ndjson(TRACK), 1)])
    tracemalloc.start()
    try:
        records = read_bytes(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, f"{peak >> 20} MiB held while reading a 128 MiB line"
    assert [(r.origin.line, r.error.code if r.error else None) for r in records] == [
        (1, "line-too-long"),
        (2, None),
    ]


@pytest.mark.parametrize("depth", [101, 300, 1000, 5000])
def test_deep_nesting_is_one_too_deep_record(depth: int) -> None:
    deep = b'{"type":"identify","userId":"u","traits":' + b'{"a":' * depth + b"1" + b"}" * depth
    records = read_bytes(ndjson(IDENTIFY) + deep + b"}\n" + ndjson(TRACK))
    assert good(records) == [(1, IDENTIFY), (3, TRACK)]
    assert records[1].error is not None and records[1].error.code == "too-deep"
    if depth < 1000:  # deeper documents are past orjson's own limit: not one document
        in_array = read_bytes(b"[" + deep + b"}, " + orjson.dumps(TRACK) + b"]")
        assert [r.error.code if r.error else r.message for r in in_array] == ["too-deep", TRACK]


def test_nesting_up_to_the_limit_is_read() -> None:
    message = {"type": "identify", "userId": "u", "traits": {}}
    inner: dict[str, object] = message["traits"]  # type: ignore[assignment]
    for _ in range(98):  # message (1) + traits (2) + 98 more = 100 levels
        inner["a"] = {}
        inner = inner["a"]  # type: ignore[assignment]
    assert good(read_bytes(ndjson(message))) == [(1, message)]


# -- issue 9: positions the delivery core relies on -----------------------------------


def test_a_last_line_without_newline_is_partial() -> None:
    records = read_bytes(ndjson(IDENTIFY) + orjson.dumps(TRACK))
    assert [(r.origin.line, r.partial) for r in records] == [(1, False), (2, True)]
    cut = read_bytes(ndjson(IDENTIFY) + b'{"type": "tra')
    assert [(r.origin.line, r.partial, r.error is None) for r in cut] == [
        (1, False, True),
        (2, True, False),
    ]
    assert [r.partial for r in read_bytes(ndjson(IDENTIFY, TRACK))] == [False, False]
    assert [r.partial for r in read_bytes(orjson.dumps([IDENTIFY, TRACK]))] == [False, False]


def test_envelope_lines_number_their_messages_by_part() -> None:
    data = ndjson(TRACK) + orjson.dumps({"batch": [IDENTIFY, TRACK, 3]}) + b"\n"
    records = read_bytes(data)
    assert [(r.origin.line, r.origin.part) for r in records] == [(1, 0), (2, 0), (2, 1), (2, 2)]
    assert records[3].error is not None


def test_state_keys_and_the_same_file_named_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = tmp_path / "a.ndjson"
    export.write_bytes(ndjson(IDENTIFY))
    (tmp_path / "link.ndjson").symlink_to(export)
    monkeypatch.chdir(tmp_path)
    sources = collect_sources(["a.ndjson", "./a.ndjson", str(export), "link.ndjson", "."])
    assert [s.name for s in sources] == ["a.ndjson"]
    assert sources[0].state_key == str(export.resolve())
    assert (sources[0].url, sources[0].version) == (None, None)
    assert Source("-", None, None).state_key == "-"
    remote = Source("s3://b/k.gz", None, 3, url="s3://b/k.gz", version="e1")
    assert remote.state_key == "s3://b/k.gz"


# -- issue 9: directories as Segment writes them --------------------------------------


def segment_day(root: Path) -> Path:
    day = root / "segment-logs" / "src1" / "1700006400000"
    day.mkdir(parents=True)
    (day / "1700007000000.a1b2c3.gz").write_bytes(gzip.compress(ndjson(IDENTIFY)))
    (day / "1700008000000.d4e5f6.gz").write_bytes(gzip.compress(ndjson(TRACK)))
    (day / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (day / "users.csv").write_text("userId,plan\nu1,pro\n")
    (day / "_SUCCESS").write_bytes(b"")
    (day / "notes.gz").write_bytes(gzip.compress(b"hello\n"))
    return root / "segment-logs"


def test_segment_object_names_are_read_and_other_files_are_listed_as_skipped(
    tmp_path: Path,
) -> None:
    from ctsync.reader import collect_inputs

    logs = segment_day(tmp_path)
    inputs = collect_inputs([str(logs)])
    assert [Path(s.name).name for s in inputs.sources] == [
        "1700007000000.a1b2c3.gz",
        "1700008000000.d4e5f6.gz",
    ]
    reasons = {Path(s.name).name: s.reason for s in inputs.skipped}
    assert reasons.keys() == {".DS_Store", "users.csv", "_SUCCESS", "notes.gz"}
    assert reasons["_SUCCESS"] == "empty"
    assert "byte 0x00" in reasons[".DS_Store"]
    assert "starts with u" in reasons["users.csv"]
    assert "starts with h" in reasons["notes.gz"]
    assert any(".DS_Store: skipped" in note for note in inputs.notes())


def test_include_and_exclude_match_the_path_relative_to_the_argument(tmp_path: Path) -> None:
    from ctsync.reader import InputOptions

    logs = segment_day(tmp_path)
    only = collect_sources([str(logs)], InputOptions(include=("src1/*/1700007*",)))
    assert [Path(s.name).name for s in only] == ["1700007000000.a1b2c3.gz"]
    without = collect_sources([str(logs)], InputOptions(exclude=("*/1700007*",)))
    assert [Path(s.name).name for s in without] == ["1700008000000.d4e5f6.gz"]


def test_inputs_without_any_export_are_an_error_unless_allowed(tmp_path: Path) -> None:
    from ctsync.reader import InputOptions

    (tmp_path / "_SUCCESS").write_bytes(b"")
    with pytest.raises(UsageError, match=r"no input files in .*1 file skipped: not an export"):
        collect_sources([str(tmp_path)])
    assert collect_sources([str(tmp_path)], InputOptions(allow_empty=True)) == []
    # A file named on its own is read whatever it holds (a dead-letter file may start badly).
    (tmp_path / "odd.txt").write_bytes(b"42\n")
    assert [s.name for s in collect_sources([str(tmp_path / "odd.txt")])] == [
        str(tmp_path / "odd.txt")
    ]


def test_without_isal_gzip_is_read_the_same_with_zlib(tmp_path: Path) -> None:
    import subprocess
    import sys

    whole = gzip.compress(ndjson(IDENTIFY)) + gzip.compress(ndjson(TRACK))  # two members
    (tmp_path / "whole.gz").write_bytes(whole)
    (tmp_path / "cut.gz").write_bytes(whole[:-5])
    script = (
        "import sys; sys.modules['isal'] = None\n"
        "from pathlib import Path\n"
        "from ctsync import reader\n"
        "assert reader.inflate.__name__ == 'zlib'\n"
        "for name in sys.argv[1:]:\n"
        "    p = Path(name)\n"
        "    rs = reader.read_source(reader.OpenSource(reader.Source(name, p, None)))\n"
        "    print([(r.origin.line, r.error.code if r.error else r.message['type']) for r in rs])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "whole.gz"), str(tmp_path / "cut.gz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [
        "[(1, 'identify'), (2, 'track')]",
        "[(1, 'identify'), (2, 'track'), (0, 'unreadable')]",
    ]


def test_a_line_that_is_not_utf8_says_so() -> None:
    """orjson says "str is not valid UTF-8: surrogates not allowed" of a Latin-1 line:
    there are no surrogates in it (the walkthrough found the word misleading)."""
    latin1 = '{"type": "identify", "userId": "Zoë"}'.encode("latin-1")
    good = b'{"type": "identify", "userId": "u1"}'
    records = read_bytes(latin1 + b"\n" + good + b"\n")
    assert records[0].error is not None and records[0].error.code == "malformed-json"
    assert records[0].error.message == (
        "not valid JSON: the line is not UTF-8 text (JSON must be UTF-8: was the file "
        "written in another encoding, such as Latin-1?)"
    )
    assert records[1].message == {"type": "identify", "userId": "u1"}


def test_a_pipe_among_a_thousand_open_files_is_waited_for(tmp_path: Path) -> None:
    # `select` refuses descriptors from 1024 up: a run with many files open (a caller's,
    # or a folder of exports) crashed reading a pipe ("filedescriptor out of range").
    import resource

    from ctsync.reader import _ready

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"this system allows {hard} open files; the test needs {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    read, write = os.pipe()
    try:
        assert read >= 1024
        with open(read, "rb", buffering=0, closefd=False) as stream:
            assert _ready(stream, 0.01) is False  # nothing written
            os.write(write, b"{}\n")
            assert _ready(stream, 0.01) is True
    finally:
        for descriptor in (*held, read, write):
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
