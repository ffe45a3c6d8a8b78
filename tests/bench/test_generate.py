"""The benchmark's generator: deterministic, valid Segment messages, the requested mix."""

from __future__ import annotations

import gzip
import io
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench.generate import (
    BAD_KINDS,
    BAD_LONG_IDENTITY,
    BAD_MALFORMED,
    BAD_NO_USER_ID,
    BAD_PHONE,
    MIX,
    SegmentExport,
    generate_file,
    write,
)

COUNT = 4000


def _bytes(count: int = COUNT, *, seed: int = 7) -> bytes:
    out = io.BytesIO()
    write(SegmentExport(count, seed=seed), out)
    return out.getvalue()


def test_the_same_arguments_give_the_same_bytes_and_another_seed_does_not() -> None:
    assert _bytes(seed=1) == _bytes(seed=1)
    assert _bytes(seed=1) != _bytes(seed=2)


def test_gzip_output_is_byte_identical_whatever_the_file_name(tmp_path: Path) -> None:
    first = generate_file(tmp_path / "a.ndjson.gz", 500, seed=3, compress=True)
    second = generate_file(tmp_path / "b.ndjson.gz", 500, seed=3, compress=True)
    data = (tmp_path / "a.ndjson.gz").read_bytes()
    assert data == (tmp_path / "b.ndjson.gz").read_bytes()
    assert first == second
    assert gzip.decompress(data) == _bytes(500, seed=3)
    assert not list(tmp_path.glob("*.partial"))


def test_every_line_is_a_segment_message_in_the_requested_mix() -> None:
    lines = _bytes().splitlines()
    assert len(lines) == COUNT
    kinds: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for line in lines:
        message = orjson.loads(line)
        for field in ("messageId", "anonymousId", "timestamp", "sentAt", "receivedAt"):
            assert isinstance(message[field], str) and message[field], field
        assert isinstance(message["context"]["library"]["name"], str)
        kind = message["type"]
        if message.get("event") == "Delete User":
            kind = "delete_user"
        kinds[kind] += 1
        if kind == "identify":
            users[message["userId"]] += 1
            traits = message["traits"]
            assert traits["phone"].startswith("+")
            assert len(traits) >= 9 and isinstance(traits["address"], dict)
        if kind in ("identify", "group", "alias", "delete_user"):
            assert 0 < len(message["userId"]) < 120
    for kind, share in MIX:
        assert abs(kinds[kind] / COUNT - share) < max(0.02, share / 2), kind
    assert users.most_common(1)[0][1] > 1, "identities repeat"


def test_bad_share_makes_each_kind_of_bad_record() -> None:
    export = SegmentExport(COUNT, seed=5, bad_share=0.2)
    lines = b"".join(export.lines()).splitlines()
    assert len(lines) == COUNT
    bad = sum(export.counts[kind] for kind in BAD_KINDS)
    assert bad == pytest.approx(0.2 * COUNT, rel=0.15)
    malformed = 0
    seen: Counter[str] = Counter()
    for line in lines:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            malformed += 1
            continue
        if message["type"] != "identify":
            continue
        if "userId" not in message:
            seen[BAD_NO_USER_ID] += 1
        elif len(message["userId"]) == 150:
            seen[BAD_LONG_IDENTITY] += 1
        elif not message["traits"]["phone"].startswith("+"):
            seen[BAD_PHONE] += 1
    seen[BAD_MALFORMED] = malformed
    assert seen == Counter({kind: export.counts[kind] for kind in BAD_KINDS})


def test_no_bad_records_by_default() -> None:
    export = SegmentExport(COUNT, seed=5)
    for line in export.lines():
        orjson.loads(line)
    assert not any(export.counts[kind] for kind in BAD_KINDS)


def test_skew_gives_one_user_that_share_of_the_messages_and_none_changes_nothing() -> None:
    def who(data: bytes) -> Counter[str]:
        messages = [orjson.loads(line) for line in data.splitlines()]
        return Counter(m.get("userId") or m["anonymousId"] for m in messages)

    out = io.BytesIO()
    write(SegmentExport(COUNT, seed=7, skew=0.1), out)
    (heavy, count), (_, second) = who(out.getvalue()).most_common(2)
    # One user in about a tenth of the messages (some of them anonymous), far above the rest.
    assert 0.07 * COUNT <= count <= 0.13 * COUNT and second < count / 10
    # Never deleted: each deletion of it would cost two round trips one after the other.
    messages = [orjson.loads(line) for line in out.getvalue().splitlines()]
    deleted = Counter(m.get("userId") for m in messages if m.get("event") == "Delete User")
    assert heavy not in deleted and deleted.total() > 0
    unskewed = io.BytesIO()
    write(SegmentExport(COUNT, seed=7, skew=0.0), unskewed)
    assert unskewed.getvalue() == _bytes()  # the same bytes as before there was a skew
    assert who(_bytes()).most_common(1)[0][1] < 0.01 * COUNT
