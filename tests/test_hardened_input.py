"""Hostile input never crashes a run or loses a neighbour; property-based checks of the
reader and the timestamp rule."""

from __future__ import annotations

import asyncio
import io
import string
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ctsync.ledger import Ledger
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import OpenSource, Source, read_source
from ctsync.run import DryRunSender, UploadRun
from ctsync.timestamps import convert_object, iso_to_epoch
from tests.helpers import assert_accounted, examples

GOOD = orjson.dumps({"type": "identify", "userId": "u", "traits": {"a": 1}}) + b"\n"


def run_dry(data: bytes) -> tuple[int, int, int]:
    run = UploadRun(
        [Source("-", None, None)],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=DryRunSender(),
        ledger=Ledger(),
        stdin=io.BytesIO(data),
    )
    summary = asyncio.run(run.run())
    assert_accounted(summary)
    return summary.read, summary.accepted, summary.invalid.total()


def test_each_kind_of_bad_line_is_one_invalid_record_between_good_ones() -> None:
    bad_lines = [
        b"\xff\xfe not utf-8",
        b'{"type": "identify", "userId": "u", "x": NaN}',
        b'{"x": Infinity}',
        b"[" * 5000 + b"]" * 5000,  # deeper than any parser's limit
        b'{"truncated": ',
        b"null",
        b"42",
        b'"a string"',
    ]
    data = GOOD + b"".join(line + b"\n" + GOOD for line in bad_lines)
    assert run_dry(data) == (1 + 2 * len(bad_lines), 1 + len(bad_lines), len(bad_lines))


def test_lines_of_many_megabytes_are_read() -> None:
    big = {"type": "identify", "userId": "big", "traits": {"blob": "x" * 8_000_000}}
    data = GOOD + orjson.dumps(big) + b"\n" + GOOD
    assert run_dry(data) == (3, 3, 0)


def test_duplicate_keys_keep_the_last_value_and_null_traits_are_empty() -> None:
    data = b'{"type": "identify", "userId": "a", "userId": "b", "traits": null}\n'
    (record,) = read_source(OpenSource(Source("-", None, None), io.BytesIO(data)))
    assert record.message == {"type": "identify", "userId": "b", "traits": None}
    assert run_dry(data) == (1, 1, 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=examples(200), derandomize=True)
@given(
    st.lists(
        st.one_of(
            st.dictionaries(
                st.text(max_size=8).filter(lambda k: k != "batch"), json_values, max_size=5
            ).map(orjson.dumps),
            st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
            # damaged lines that start like a document or a message
            st.sampled_from([b"[", b"{", b"[1,2", b'{"type":"identify","userId":"u0"', b"]"]),
        ),
        max_size=30,
    )
)
def test_every_non_blank_line_is_exactly_one_record_with_its_line_number(
    lines: list[bytes],
) -> None:
    data = b"\n".join(lines) + b"\n"
    records = list(read_source(OpenSource(Source("f", None, None), io.BytesIO(data))))
    try:
        orjson.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        pass
    else:
        return  # the whole file parses as one JSON document: a different contract
    # A UTF-8 BOM opening the file is not content.
    blank = [
        not line.removeprefix(b"\xef\xbb\xbf" if i == 1 else b"").strip()
        for i, line in enumerate(lines, start=1)
    ]
    expected = [i for i, empty in enumerate(blank, start=1) if not empty]
    assert [r.origin.line for r in records] == expected
    for record in records:
        assert (record.message is None) != (record.error is None)


@settings(max_examples=examples(300), derandomize=True)
@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    st.sampled_from(["", "Z", "+00:00", "-08:00", "+0530"]),
    st.integers(0, 3),
)
def test_iso_conversion_agrees_with_datetime_arithmetic(
    moment: datetime, suffix: str, digits: int
) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = moment.microsecond // 10 ** (6 - digits) if digits else 0
    if digits:
        text += f".{fraction:0{digits}d}"
    text += suffix
    offset = {"": 0, "Z": 0, "+00:00": 0, "-08:00": -480, "+0530": 330}[suffix]
    naive = moment.replace(microsecond=fraction * 10 ** (6 - digits) if digits else 0)
    aware = naive.replace(tzinfo=UTC) - timedelta(minutes=offset)
    expected = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    assert iso_to_epoch(text) == expected


@settings(derandomize=True)
@given(st.text(alphabet=string.printable, max_size=30))
def test_strings_that_are_not_iso_dates_pass_through(text: str) -> None:
    converted = convert_object({"k": text})["k"]
    assert converted == text or isinstance(converted, int)
    if isinstance(converted, int):
        assert text[4] == "-" and text[7] == "-"


def identify_with(user_id: bytes) -> bytes:
    return b'{"type": "identify", "userId": ' + user_id + b', "traits": {"a": 1}}\n'


def identities_sent(data: bytes) -> tuple[list[str], dict[str, int]]:
    sender = DryRunSender(requests := io.BytesIO())
    run = UploadRun(
        [Source("-", None, None)],
        mapper=build_preset(Preset.ACTIONS, MappingOptions()),
        sender=sender,
        ledger=Ledger(),
        stdin=io.BytesIO(data),
    )
    summary = asyncio.run(run.run())
    assert_accounted(summary)
    bodies = [orjson.loads(line)["body"] for line in requests.getvalue().splitlines()]
    return [r["identity"] for body in bodies for r in body["d"]], dict(summary.invalid)


def test_numeric_identities_are_exact_decimal_strings_or_invalid() -> None:
    data = b"".join(
        identify_with(x)
        for x in (
            b"42",
            b"-7",
            b"18446744073709551615",  # 2**64 - 1: still exact
            b"123456789012345678901234567890",  # beyond 64 bits: orjson makes it a float
            b"123456789012345678901234567891",
            b"12.5",
            b"12.0",
            b"1e3",
        )
    )
    sent, invalid = identities_sent(data)
    assert sorted(sent) == sorted(["42", "-7", "18446744073709551615"])  # (by lane)
    assert invalid == {"523": 5}  # never two users rounded into one profile


def test_identity_of_refuses_python_integers_beyond_64_bits() -> None:
    from ctsync.options import identity_of
    from ctsync.records import Invalid

    assert identity_of(2**64 - 1, "userId") == "18446744073709551615"
    assert identity_of(-(2**63), "userId") == str(-(2**63))
    assert isinstance(identity_of(2**64, "userId"), Invalid)
    assert isinstance(identity_of(-(2**63) - 1, "userId"), Invalid)
    assert isinstance(identity_of(1.0, "userId"), Invalid)


def test_deep_traits_are_one_invalid_record_and_the_run_goes_on() -> None:
    def deep(levels: int) -> bytes:
        return (
            b'{"type": "identify", "userId": "deep", "traits": '
            + b'{"a": ' * levels
            + b"1"
            + b"}" * levels
            + b"}\n"
        )

    data = GOOD + deep(300) + GOOD + deep(1000) + GOOD + deep(1100) + GOOD
    assert run_dry(data) == (7, 4, 3)
