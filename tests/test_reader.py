"""Reading exports: formats found by content, origins kept, bad content never fatal."""

from __future__ import annotations

import gzip
import io
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


def test_a_broken_document_is_one_error_with_its_line() -> None:
    records = read_bytes(b'[\n {"type": "identify"},\n {oops}\n]\n')
    assert len(records) == 1
    assert records[0].error is not None and records[0].origin.line == 3


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
