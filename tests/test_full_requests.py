"""Requests go out full (issue 20): uploads carry 1,000 records and deletions 100, except
the last of each kind, however the run's lanes split the stream: 3 profiles go in one
request, 2,500 in 3, 126 deletions in 100 + 26. Counted on the requests a dry run writes
with the default concurrency (15 lanes), against numbers worked out by hand."""

from __future__ import annotations

import random
from collections import Counter
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


def rounds(requests: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What each user met, in the order the requests were sent: its identifies' `round`
    trait, and its deletions."""
    met: dict[str, list[str]] = {}
    for request in requests:
        if request["path"] == "/1/upload":
            for record in request["body"]["d"]:
                met.setdefault(record["identity"], []).append(
                    f"round {record['profileData']['round']}"
                )
        else:
            for user in request["body"]["identity"]:
                met.setdefault(user, []).append("deleted")
    return met


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
    assert all(seen == ["round 1", "deleted", "round 2"] for seen in rounds(requests).values())


def test_profiles_deleted_twice_in_a_row_cut_few_requests_short(tmp_path: Path) -> None:
    """Identify, Delete User, identify, Delete User, identify, for 200 users: each second
    deletion comes while the first waits. Each used to go alone, with its user's writes
    before it: a request of one id and an upload part full for every user (an export
    with 3% deletions sent 434 of 520 deletion requests under 100 ids, and took 5 times
    its dry run against a sandbox at 100 ms). 400 deletions fit in 4 requests; the order
    of each user's writes and deletions holds."""
    lines = []
    for n in range(200):
        user = f"u{n}"
        for round_ in (1, 2, 3):
            lines.append(
                orjson.dumps({"type": "identify", "userId": user, "traits": {"round": round_}})
            )
            if round_ < 3:
                lines.append(delete_user(user))
    requests = requests_of(tmp_path, lines)
    # Each round's writes wait for the deletions before them: a request each.
    assert sizes(requests, "/1/upload") == [200, 200, 200]
    assert sizes(requests, "/1/delete/profiles.json") == [100, 100, 100, 100]
    expected = ["round 1", "deleted", "round 2", "deleted", "round 3"]
    assert rounds(requests) == {f"u{n}": expected for n in range(200)}


def test_links_after_anonymous_writes_cut_no_request_short(tmp_path: Path) -> None:
    """--link-anonymous, the common shape of an export: each visitor's anonymous
    identify, and 50 messages later the identify that names them. Each link must reach
    CleverTap after its device's write, which sits in another lane's open batch: it
    takes that write into its own lane instead of sending that batch part full (4,000
    records went in 476 requests so; the minimum is 4, and each of 15 lanes may end part
    full). The device's profile still sees both writes in input order."""
    lines = []
    for n in range(2050):
        for kind, who in (("anonymous", n), ("named", n - 50)):
            if 0 <= who < 2000:
                message = {"type": "identify", "anonymousId": f"d{who}", "traits": {"s": kind}}
                if kind == "named":
                    message["userId"] = f"u{who}"
                lines.append(orjson.dumps(message))
    requests = requests_of(tmp_path, lines, "--preset", "classic", "--link-anonymous")
    assert sum(sizes(requests, "/1/upload")) == 4000
    assert len(requests) <= 4 + 15
    seen: dict[str, list[str]] = {}
    for request in requests:  # in the order they were sent (a dry run sends one at a time)
        for record in request["body"]["d"]:
            seen.setdefault(record["objectId"], []).append(record["profileData"]["s"])
    assert all(writes == ["anonymous", "named"] for writes in seen.values())


def test_links_of_shared_devices_cut_fewer_requests_short(tmp_path: Path) -> None:
    """--link-anonymous with 100 devices shared by 2,000 users, half the identifies
    anonymous: a device's latest write is often another user's link, which cannot be
    taken out of its lane. When the new link's user has nothing without an answer, the
    link goes after it in that lane instead of sending it part full: 106 requests,
    against 543 when every such link sealed. Each device's and user's writes stay in
    input order (a dry run sends one request at a time)."""
    rng = random.Random(5)
    lines = []
    expected: dict[str, list[int]] = {}
    for n in range(4000):
        message: dict[str, Any] = {"type": "identify", "anonymousId": f"d{rng.randrange(100)}"}
        message["traits"] = {"n": n}
        expected.setdefault(message["anonymousId"], []).append(n)
        if rng.random() < 0.5:
            message["userId"] = f"u{rng.randrange(2000)}"
            expected.setdefault(message["userId"], []).append(n)
        lines.append(orjson.dumps(message))
    requests = requests_of(tmp_path, lines, "--preset", "classic", "--link-anonymous")
    assert len(requests) <= 200
    landed: dict[str, list[int]] = {}
    for request in requests:
        for record in request["body"]["d"]:
            data = record["profileData"]
            for name in (record.get("objectId"), data.get("Identity")):
                if name is not None:
                    landed.setdefault(name, []).append(data["n"])
    assert landed == expected


@given(
    ops=st.lists(st.tuples(st.integers(0, 8), st.booleans()), min_size=1, max_size=400),
    lanes=st.integers(1, 3),
    limit=st.integers(1, 60),
    skips=st.sets(st.integers(1, 400)),
)
def test_the_last_batches_join_full_side_by_side_and_in_order(
    ops: list[tuple[int, bool]], lanes: int, limit: int, skips: set[int]
) -> None:
    """The lanes' open batches joined at the end, with repeated profiles, device tokens
    and positions passed over (skipped records): every operation once; a profile's
    operations in input order; two joined batches share a profile only when it has more
    operations than a request holds (otherwise they go out side by side); every batch
    but the last holds at least `limit` less the most operations of one profile; and no
    run of positions a batch records for the state file spans another batch's position
    (a resumed run would skip it, or send it twice)."""
    planner = Planner(lanes=lanes, batch_size=limit)
    sealed = []
    line = 0
    for user, token in ops:
        line += 1
        while line in skips:  # a skipped record: a position no batch holds
            line += 1
        key = ("guid", f"o{user}") if token else f"u{user}"
        owner = Tracked(Origin("f", line), b"", {}, 1)
        position = (line, 0, 0)
        sealed += planner.add_encoded(OpKind.UPLOAD, key, b"{}", True, token, owner, "f", position)
    joined = planner.flush(join=True)
    every = [position[0] for batch in sealed + joined for _, position in batch.positions]
    assert len(every) == len(set(every)) == len(ops)
    per_key = Counter(("guid", f"o{u}") if t else f"u{u}" for u, t in ops)
    for batch in joined:
        assert len(batch) <= limit and batch.tokens <= 100
    for n, batch in enumerate(joined):
        for other in joined[n + 1 :]:
            shared = batch.keyset & other.keyset
            assert all(per_key[key] > limit for key in shared), shared
            if shared:
                assert other.lane == batch.lane  # one behind the other
    if all(not t for _, t in ops):
        biggest = max(per_key.values())
        for batch in joined[:-1]:
            assert len(batch) >= min(limit, limit - biggest + 1)
    seen: dict[object, list[int]] = {}
    for batch in sorted(sealed + joined, key=lambda b: b.seq):
        for profile, (_, position) in zip(batch.keys, batch.positions, strict=True):
            seen.setdefault(profile, []).append(position[0])
    assert all(positions == sorted(positions) for positions in seen.values())
    owner_of = {position[0]: b.seq for b in sealed + joined for _, position in b.positions}
    for batch in sealed + joined:
        for first, last in batch.runs["f"]:
            inside = [owner_of[n] for n in range(first[0], last[0] + 1) if n in owner_of]
            assert set(inside) == {batch.seq}, (first, last)


def test_a_joined_batch_records_no_run_over_a_profile_that_went_to_the_next() -> None:
    """Lane A's last batch has 3 operations, lane B's 4 in a row: c1, b1, b1, c2. Joined
    5 to a request, the first takes A's 3, then c1 and c2 (b1's 2 no longer fit), and
    the next takes b1's 2. The first must not record lines 5 to 8 as one run: a kill
    after its answer would leave b1's lines 6 and 7 settled in the state file, unsent."""
    planner = Planner(lanes=2, batch_size=5)
    lane_a = [f"a{n}" for n in range(50) if planner.lane_of(f"a{n}") == 0]
    lane_b = [f"b{n}" for n in range(50) if planner.lane_of(f"b{n}") == 1]
    a1, c1, b1, c2 = lane_a[0], lane_b[0], lane_b[1], lane_b[2]
    for line, key in enumerate([a1, a1, a1, c1, b1, b1, c2], 2):  # line 1: skipped
        owner = Tracked(Origin("f", line), b"", {}, 1)
        planner.add_encoded(OpKind.UPLOAD, key, b"{}", True, False, owner, "f", (line, 0, 0))
    first, second = planner.flush(join=True)
    assert [p[0] for _, p in first.positions] == [2, 3, 4, 5, 8]
    assert [p[0] for _, p in second.positions] == [6, 7]
    assert [[a[0], b[0]] for a, b in first.runs["f"]] == [[2, 4], [5, 5], [8, 8]]
    assert [[a[0], b[0]] for a, b in second.runs["f"]] == [[6, 7]]
    assert first.lane != second.lane  # no profile in common: side by side
