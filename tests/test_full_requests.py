"""Requests go out full (issue 20): uploads carry 1,000 records and deletions 100, except
the last of each kind, however the run's lanes split the stream: 3 profiles go in one
request, 2,500 in 3, 126 deletions in 100 + 26. Counted on the requests a dry run writes
with the default concurrency (15 lanes), against numbers worked out by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from ctsync.batching import Planner
from ctsync.ledger import Tracked
from ctsync.prepare import OpKind
from ctsync.records import Origin
from tests.helpers import clean_env

runner = CliRunner()


def requests_of(tmp_path: Path, lines: list[bytes], *flags: str) -> list[dict[str, Any]]:
    """The requests a dry-run upload of `lines` writes (`--workers 1`: one process)."""
    from ctsync.cli import app

    export, out = tmp_path / "export.ndjson", tmp_path / "requests.ndjson"
    export.write_bytes(b"".join(line + b"\n" for line in lines))
    result = runner.invoke(
        app,
        ["upload", str(export), "--dry-run", "--quiet", "--workers", "1", "--output", str(out),
         *flags],
        env=clean_env(),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def identify(user: str) -> bytes:
    return orjson.dumps({"type": "identify", "userId": user, "traits": {"plan": "pro"}})


def delete_user(user: str) -> bytes:
    return orjson.dumps({"type": "track", "event": "Delete User", "userId": user})


def sizes(requests: list[dict[str, Any]], path: str) -> list[int]:
    found = []
    for request in requests:
        if request["path"] == path:
            (records,) = request["body"].values()
            found.append(len(records))
    return found


@pytest.mark.parametrize(
    ("profiles", "expected"), [(3, [3]), (2500, [1000, 1000, 500]), (1000, [1000]), (1, [1])]
)
def test_profiles_go_in_full_requests(tmp_path: Path, profiles: int, expected: list[int]) -> None:
    requests = requests_of(tmp_path, [identify(f"u{n}") for n in range(profiles)])
    assert sizes(requests, "/1/upload") == expected


def test_126_deletions_go_in_100_and_26(tmp_path: Path) -> None:
    requests = requests_of(tmp_path, [delete_user(f"u{n}") for n in range(126)])
    assert sorted(sizes(requests, "/1/delete/profiles.json")) == [26, 100]
    ids = [i for r in requests for i in r["body"]["identity"]]
    assert sorted(ids) == sorted(f"u{n}" for n in range(126))  # each once


def test_full_requests_keep_each_profiles_order(tmp_path: Path) -> None:
    """Several writes of one profile, joined from the lanes' last batches: they reach the
    requests in input order (a later request never holds an earlier write)."""
    lines = []
    for round_ in range(4):
        for n in range(700):
            message = {"type": "identify", "userId": f"u{n}", "traits": {"round": round_}}
            lines.append(orjson.dumps(message))
    requests = requests_of(tmp_path, lines)
    assert sizes(requests, "/1/upload") == [1000, 1000, 800]
    seen: dict[str, list[int]] = {}
    for request in requests:  # the dry run writes requests in the order they are sent
        for record in request["body"]["d"]:
            seen.setdefault(record["identity"], []).append(record["profileData"]["round"])
    assert all(rounds == [0, 1, 2, 3] for rounds in seen.values())


def planned_sizes(count: int, lanes: int, kind: OpKind, limit: int) -> list[int]:
    planner = Planner(lanes=lanes, batch_size=1000)
    sealed = []
    for n in range(count):
        owner = Tracked(Origin("f", n + 1), b"", {}, 1)
        sealed += planner.add_encoded(kind, f"u{n}", b"{}", True, False, owner, "f", (n + 1, 0, 0))
    sealed += planner.flush(join=True)
    return [len(batch) for batch in sealed]


@given(count=st.integers(1, 5000), lanes=st.integers(1, 15))
def test_every_request_but_the_last_is_full(count: int, lanes: int) -> None:
    for kind, limit in ((OpKind.UPLOAD, 1000), (OpKind.DELETE_IDENTITY, 100)):
        found = planned_sizes(count, lanes, kind, limit)
        full, rest = divmod(count, limit)
        assert sorted(found, reverse=True) == [limit] * full + ([rest] if rest else [])


@pytest.mark.slow
def test_1_000_001_profiles_go_in_1001_requests() -> None:
    found = planned_sizes(1_000_001, 15, OpKind.UPLOAD, 1000)
    assert len(found) == 1001
    assert sorted(found, reverse=True) == [1000] * 1000 + [1]


def test_a_deletion_between_two_identifies_cuts_no_request_short(tmp_path: Path) -> None:
    """Identify, Delete User, identify again, for 200 users: the deletion must reach
    CleverTap between the two writes of its user, and no request is sent part full for
    it (it used to seal the lane's open batches at every such turn)."""
    lines = []
    for n in range(200):
        user = f"u{n}"
        first = {"type": "identify", "userId": user, "traits": {"round": 1}}
        again = {"type": "identify", "userId": user, "traits": {"round": 2}}
        lines += [orjson.dumps(first), delete_user(user), orjson.dumps(again)]
    requests = requests_of(tmp_path, lines)
    assert sizes(requests, "/1/upload") == [200, 200]
    assert sizes(requests, "/1/delete/profiles.json") == [100, 100]
    events: dict[str, list[str]] = {}
    for request in requests:  # in the order they were sent
        if request["path"] == "/1/upload":
            for record in request["body"]["d"]:
                events.setdefault(record["identity"], []).append(
                    f"round {record['profileData']['round']}"
                )
        else:
            for user in request["body"]["identity"]:
                events.setdefault(user, []).append("deleted")
    assert all(seen == ["round 1", "deleted", "round 2"] for seen in events.values())
