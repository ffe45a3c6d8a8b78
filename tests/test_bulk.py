"""Plain records in bulk (`wire.gather`, `Planner.add_bulk`, `Batch.owners_of`): a
block's uploads that nothing else in the block orders against go to their lanes a slice
at a time, after the block's other records, with no object per record.

Against the same records taken one by one (the path the delivery model checks): the
same records reach CleverTap, each profile's in input order; the same report and dead
letters, refusals included; the same counts. And `gather` itself against a model that
only reads the block's results."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ctsync.batching import Batch, Planner
from ctsync.dedupe import MessageIds, window_ms
from ctsync.ledger import Tracked
from ctsync.model import Bulk
from ctsync.prepare import OpKind, ProfileKey, profile_hash
from ctsync.reader import Source
from ctsync.records import Origin
from ctsync.run import DryRunSender
from ctsync.run.stage import Recipe
from ctsync.run.wire import BULK, INVALID, READY, SKIPPED, Result, gather
from ctsync.run.workers import WorkerPool, Workers
from tests.helpers import examples
from tests.test_workers import PRESETS, Refusing, exports, recipe_for, run_source

NEVER = 10**9


def one_run(
    export: Path | list[Path],
    built: Recipe,
    block_bytes: int,
    refuse: bool,
    dedupe: bool,
    pool: WorkerPool | None = None,
) -> tuple[bytes, list[bytes], list[bytes], dict[str, Any]]:
    """A run in one process, or with the two workers of `pool`: (requests, report lines,
    dead letters, summary)."""
    exports = export if isinstance(export, list) else [export]
    sources = [Source(str(e), e, e.stat().st_size, max_line_bytes=1024) for e in exports]
    ids = MessageIds.temporary(window_ms(30)) if dedupe else None
    try:
        requests, report, failed, summary, _ = run_source(
            sources,
            built,
            built.mode.value,
            Workers(
                count=1 if pool is None else 2,
                recipe=built,
                block_bytes=block_bytes,
                start_after=0,
                pool=pool,
            ),
            sender=Refusing if refuse else DryRunSender,
            message_ids=ids,
        )
    finally:
        if ids is not None:
            ids.close()
    del summary["requests"]
    return requests, sorted(report.splitlines()), sorted(failed.splitlines()), summary


def profile_of(record: dict[str, Any]) -> str:
    """The profile a record orders against (the README): its identity; the identity a
    linking profile write names (`--link-anonymous`, alias); else its objectId."""
    if record.get("identity") is not None:
        return str(record["identity"])
    data = record.get("profileData")
    if isinstance(data, dict) and data.get("Identity") is not None:
        return str(data["Identity"])
    return f"guid:{record.get('objectId')}"


def sent(requests: bytes) -> tuple[Counter[bytes], dict[str, list[bytes]]]:
    """Every record sent (uploads and deletions), and each profile's in the order sent."""
    records: Counter[bytes] = Counter()
    by_profile: dict[str, list[bytes]] = {}
    for line in requests.splitlines():
        request = orjson.loads(line)
        body = request["body"]
        if request["path"] == "/1/upload":
            for record in body["d"]:
                encoded = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
                records[encoded] += 1
                by_profile.setdefault(profile_of(record), []).append(encoded)
        else:
            for key, values in body.items():
                for value in values:
                    encoded = orjson.dumps(["delete", key, value])
                    records[encoded] += 1
                    who = str(value) if key == "identity" else f"guid:{value}"
                    by_profile.setdefault(who, []).append(encoded)
    return records, by_profile


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=exports(),
    preset=st.sampled_from(PRESETS),
    validate=st.sampled_from(["strict", "fix", "warn"]),
    block_bytes=st.integers(1, 3000),
    refuse=st.booleans(),
)
@example(  # a1's token, then its alias to u1, then a1's anonymous profile: in that order
    data=b"\n".join([
        b'{"type":"identify","userId":"u1","anonymousId":"a1","messageId":"m0",'
        b'"context":{"device":{"token":"tok-1","type":"android"}}}',
        b'{"type":"page","userId":"u2","messageId":"m3"}',
        b'{"type":"alias","userId":"u1","previousId":"a1","messageId":"m4"}',
        b'{"type":"identify","userId":"","anonymousId":"a1","messageId":"m2"}',
    ]),
    preset="classic",
    validate="strict",
    block_bytes=1,
    refuse=False,
)  # fmt: skip
def test_plain_records_in_bulk_give_what_they_give_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    preset: str,
    validate: str,
    block_bytes: int,
    refuse: bool,
) -> None:
    """With refusals (their report lines and dead letters come from the records' columns),
    or with the messageId dedupe (a copy in a later block is skipped either way). Not both:
    whether a copy read after a refusal is sent depends on when the refusal came."""
    export = tmp_path_factory.mktemp("bulk") / "export.ndjson"
    export.write_bytes(data)
    built = recipe_for(preset, validate)
    dedupe = not refuse
    alone = one_run(export, replace(built, bulk_from=NEVER), block_bytes, refuse, dedupe)
    bulk = one_run(export, replace(built, bulk_from=1), block_bytes, refuse, dedupe)
    assert sent(bulk[0]) == sent(alone[0]), "other records, or a profile's in another order"
    for line in bulk[0].splitlines():  # no request over its size (`batch_size=3`)
        body = orjson.loads(line)["body"]
        assert all(len(values) <= 3 for values in body.values()), body
    assert bulk[1] == alone[1], "the report differs"
    assert bulk[2] == alone[2], "the dead letters differ"
    assert bulk[3] == alone[3], "the counts differ"


def test_a_refused_plain_record_is_reported_with_its_line_and_its_copy_sent_later(
    tmp_path: Path,
) -> None:
    """Records refused from batches filled in bulk: each report line names the record's
    own file and line, each dead letter is its own line, and its messageId is let go (its
    copy in a later file is sent, and refused again), while an accepted one's copy is
    skipped."""
    lines = [
        orjson.dumps(
            {
                "type": "identify",
                "messageId": f"m{n}",
                "userId": f"u{n}",
                "timestamp": "2024-05-01T12:00:00Z",
                "traits": {"plan": f"p{n}"},
            }
        )
        for n in range(40)
    ]
    files = [tmp_path / "1.ndjson", tmp_path / "2.ndjson"]  # the copies in a later block
    for path in files:
        path.write_bytes(b"\n".join(lines) + b"\n")
    built = replace(recipe_for("actions", "strict"), bulk_from=1)
    requests, report, failed, summary = one_run(files, built, 10**6, True, True)
    reported = [orjson.loads(line) for line in report]
    refused = {entry["line"] for entry in reported if entry["source"] == str(files[0])}
    assert refused and len(refused) < 40, "the test needs some refused and some accepted"
    assert summary["read"] == 80
    # A copy read once its first was refused is sent (and refused again); one read while
    # its first was still in a batch not yet answered is skipped, as documented.
    again = {entry["line"] for entry in reported if entry["source"] == str(files[1])}
    assert again and again <= refused, (again, refused)
    assert len(reported) == len(refused) + len(again)
    for entry in reported:
        assert entry["messageId"] == f"m{entry['line'] - 1}"
        assert entry["identity"] == f"u{entry['line'] - 1}"
    expected = [lines[line - 1] for line in sorted(refused) + sorted(again)]
    assert sorted(failed) == sorted(expected)
    assert summary["skipped_by_reason"] == {"duplicate-message-id": 40 - len(again)}
    records, _ = sent(requests)
    assert sum(records.values()) == 40 + len(again)


def _message(number: int, kind: str = "track", **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": kind,
        "messageId": f"m{number}",
        "userId": "u1",
        "anonymousId": "a1",
        "timestamp": "2024-05-01T12:00:00Z",
    }
    if kind == "track":
        message["event"] = "Viewed"
    message.update(extra)
    return message


DEVICE = {"device": {"token": "tok-1", "type": "android"}}


@pytest.mark.parametrize(
    ("first", "why"),
    [
        # The stage sent the token with an identify that then failed validation.
        ([_message(1, "identify", traits={"email": "not-an-email"}, context=DEVICE)], "invalid"),
        # ... with a copy of a message sent before (the run skips the copy).
        ([_message(1), _message(1, context=DEVICE)], "copy"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_token_the_stage_found_sent_but_the_run_did_not_goes_with_the_next_record(
    tmp_path: Path, first: list[dict[str, Any]], why: str, workers: int, worker_pool: WorkerPool
) -> None:
    """The stage's own set says a device token went out already, so the next records
    with it look plain; the run's set says it did not (its first record was invalid, or
    a copy the run skipped). Those records, in bulk, are taken the long way: the token
    goes out once, with the first of them, as when they come one by one."""
    later = [_message(n, context=DEVICE) for n in range(2, 6)]
    lines = [*first, *later]
    exports = [tmp_path / "1.ndjson", tmp_path / "2.ndjson"]  # two blocks, in this order
    for export, messages in zip(exports, (first, later), strict=True):
        export.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    built = recipe_for("classic", "strict")
    alone = one_run(exports, replace(built, bulk_from=NEVER), 1, False, True)
    pool = worker_pool if workers == 2 else None
    bulk = one_run(exports, replace(built, bulk_from=1), 1, False, True, pool)
    assert bulk[0].count(b'"tokenData":{"id":"tok-1"') == 1
    assert sent(bulk[0]) == sent(alone[0])
    assert bulk[1:] == alone[1:]
    counts = bulk[3]
    assert counts["read"] == len(lines) and counts["accepted"] == len(lines) - 1
    assert (counts["invalid"], counts["skipped"]) == ((1, 0) if why == "invalid" else (0, 1))


def _write(tmp_path: Path, files: list[list[dict[str, Any]]]) -> list[Path]:
    paths = []
    for n, messages in enumerate(files, 1):
        path = tmp_path / f"{n}.ndjson"
        path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
        paths.append(path)
    return paths


@pytest.mark.parametrize("preset", ["classic", "mapping"])
@pytest.mark.parametrize("why", ["invalid", "copy"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_token_sent_the_long_way_keeps_its_place_on_the_anonymous_profile(
    tmp_path: Path, preset: str, why: str, workers: int, worker_pool: WorkerPool
) -> None:
    """The record whose token the stage found sent writes only its identity's profile;
    the run did not send that token (its first sender was invalid, or a copy), so the
    record takes the long way and sends the token to the anonymousId's profile
    (guid:a1). A later record of its block writes guid:a1 too: it must come after the
    token, as when the records come one by one. (Found by an adversarial review.)"""
    if why == "invalid":
        first = [_message(1, "identify", traits={"email": "not-an-email"}, context=DEVICE)]
    else:
        first = [_message(1), _message(1, context=DEVICE)]
    # The first sender in two files: with two workers, the stage that prepares the last
    # file has most likely prepared one of them (its set has the token).
    poison = [first, [{**m, "messageId": "p" + m["messageId"]} for m in first]]
    anonymous = _message(3, context={"device": {"token": "tok-2", "type": "android"}})
    del anonymous["userId"]  # guid:a1, with a token of its own: not plain
    exports = _write(tmp_path, [*poison, [_message(2, context=DEVICE), anonymous]])
    built = recipe_for(preset, "strict")
    alone = one_run(exports, replace(built, bulk_from=NEVER), 10**6, False, True)
    pool = worker_pool if workers == 2 else None
    bulk = one_run(exports, replace(built, bulk_from=1), 10**6, False, True, pool)
    assert sent(bulk[0]) == sent(alone[0]), "guid:a1's records in another order"
    assert bulk[1:] == alone[1:]


@pytest.mark.parametrize("preset", ["classic", "mapping"])
def test_a_record_prepared_again_in_the_run_keeps_its_place_on_the_anonymous_profile(
    tmp_path: Path, preset: str
) -> None:
    """One block: a plain write of guid:a1, then an invalid record that sent tok-1 in the
    stage's set only, then a record the stage found tok-1 sent for (not plain: the
    invalid one looked tok-1 up). The run prepares the last one again, and it sends
    tok-1 to guid:a1: after the plain write, which came first. (Found by an adversarial
    review; it failed before plain records could have token lookups too.)"""
    plain = _message(1, "identify", traits={})
    del plain["userId"]
    invalid = _message(2, "identify", traits={"email": "not-an-email"}, context=DEVICE)
    lines = [plain, {**invalid, "userId": "u2"}, _message(3, "identify", traits={}, context=DEVICE)]
    exports = _write(tmp_path, [lines])
    built = recipe_for(preset, "strict")
    alone = one_run(exports, replace(built, bulk_from=NEVER), 10**6, False, False)
    bulk = one_run(exports, replace(built, bulk_from=1), 10**6, False, False)
    assert sent(bulk[0]) == sent(alone[0]), "guid:a1's records in another order"
    assert bulk[1:] == alone[1:]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_copy_prepared_again_in_the_run_is_a_copy(
    tmp_path: Path, workers: int, worker_pool: WorkerPool
) -> None:
    """A message the stage skipped (the only record it would send is a device token its
    set says went out already) is prepared again in the run, whose set says the token
    did not go (its first sender was a copy): prepared again, it sends the token, and it
    is itself a copy of a message sent, so it is skipped as one and sends nothing. (It
    was sent: the messageId was looked up before the record was prepared again, when
    the skip had none. Found by an adversarial review.)"""
    token = {"device": {"token": "tok-2", "type": "android"}}
    first = [_message(5), _message(5, context=token)]  # the copy sends tok-2 in the stage
    alias = _message(5, "alias", previousId="a2", context=token)
    del alias["userId"]
    later = _message(6, context=token)  # the first to send tok-2 in this run
    exports = _write(tmp_path, [first, [alias], [later]])
    built = replace(recipe_for("mapping", "strict"), bulk_from=NEVER)
    pool = worker_pool if workers == 2 else None
    requests, _, _, summary = one_run(exports, built, 10**6, False, True, pool)
    assert requests.count(b"tok-2") == 1  # with the later track, once
    assert summary["skipped_by_reason"] == {"duplicate-message-id": 2}
    assert summary["accepted"] == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_copy_that_sends_nothing_is_counted_under_its_skip_reason(
    tmp_path: Path, workers: int, worker_pool: WorkerPool
) -> None:
    """The same alias twice, in two files: the second sends nothing (its token went with
    the first), so it is skipped under the mapping's reason, never as a copy, whichever
    stage prepared it (a worker that had not seen the token made it a record to send,
    and the run prepared it again)."""
    alias = _message(1, "alias", previousId="a2", context=DEVICE)
    del alias["userId"]
    exports = _write(tmp_path, [[alias], [alias], [alias]])
    built = replace(recipe_for("mapping", "strict"), bulk_from=NEVER)
    one = one_run(exports, built, 10**6, False, True)
    pool = worker_pool if workers == 2 else None
    many = one_run(exports, built, 10**6, False, True, pool)
    assert many[3] == one[3]
    assert "duplicate-message-id" not in one[3]["skipped_by_reason"]
    assert one[0].count(b"tok-1") == many[0].count(b"tok-1") == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_a_message_prepared_again_is_a_copy_of_a_plain_record_before_it(
    tmp_path: Path, workers: int, worker_pool: WorkerPool
) -> None:
    """A plain track, then an alias with its messageId whose only record is a device
    token the stage's set says went out (so the stage skipped it, and the run, whose set
    says the token did not go, prepares it again). The alias is the copy: the track is
    sent, the alias and its token are not, in bulk as one by one. (In bulk, the alias
    was prepared again and claimed its messageId before the track, taken after the
    block's other records, and the track was skipped as its copy. Found by an
    adversarial review.)"""
    token = {"device": {"token": "tok-2", "type": "android"}}
    first = [_message(1), _message(1, context=token)]  # tok-2 in the stage's set only
    plain = {**_message(7), "userId": "u9"}
    del plain["anonymousId"]
    alias = _message(7, "alias", previousId="a2", context=token)
    del alias["userId"]
    exports = _write(tmp_path, [first, [plain, alias]])
    built = recipe_for("mapping", "strict")
    alone = one_run(exports, replace(built, bulk_from=NEVER), 10**6, False, True)
    pool = worker_pool if workers == 2 else None
    bulk = one_run(exports, replace(built, bulk_from=1), 10**6, False, True, pool)
    assert b"tok-2" not in alone[0] and b'"identity":"u9"' in alone[0]
    assert sent(bulk[0]) == sent(alone[0])
    assert bulk[1:] == alone[1:]
    assert alone[3]["skipped_by_reason"] == {"duplicate-message-id": 2}


# -- gather, against a model -------------------------------------------------------------

# Profiles: identities, and the anonymous profiles of two objectIds (a token's own).
USERS: list[Any] = ["a", "b", "c", "d", "e", "f", ("guid", "a"), ("guid", "b")]
KINDS = ["plain", "plain", "plain", "two", "delete", "token", "notes", "lookups", "unkeyed"]
KINDS += ["skip", "invalid", "found", "found", "skip-lookups", "link"]
TOKENS = [("a", "t1"), ("b", "t1"), ("a", "t2")]  # (objectId, token), shared across users
NOTE: Any = (["w"], [], {})
FOUND: Any = ((("a", "t"), True),)
GUID_A = ("guid", "a")
DEV_A = GUID_A  # (the same, in lines that name it twice)


@st.composite
def block_results(draw: st.DrawFn) -> list[Result]:
    """One block's results as the record stage makes them: uploads of one or two
    operations, deletions, tokens, notes, token lookups (found in the stage's set or
    not, by any kind of record), skipped and invalid records, some with messageIds
    (dedupe entries) that may repeat."""
    results: list[Result] = []
    for line in range(1, draw(st.integers(0, 30)) + 1):
        kind = draw(st.sampled_from(KINDS))
        user = draw(st.sampled_from(USERS))
        key = draw(st.sampled_from([None, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]))
        body = b'{"u":"%s","l":%d}' % (str(user).encode(), line)
        upload = (0, user, body, True, kind == "token", 0, profile_hash(user), None)
        token = draw(st.sampled_from(TOKENS))
        if kind in ("skip", "skip-lookups"):
            looked: Any = ((token, False),) if kind == "skip-lookups" else ()
            raw = b"raw%d" % line if looked else None
            results.append((line, 0, SKIPPED, raw, "reason", None, looked, None, 0, None))
            continue
        if kind == "invalid":
            results.append((line, 0, INVALID, b"x", "bad", {}, (), key, key or 0, None))
            continue
        ops: list[Any] = [upload]
        notes: Any = None
        lookups: Any = ()
        if kind == "two":
            ops.append((0, user, body + b" ", False, False, 1, profile_hash(user), None))
        elif kind == "delete":
            ops = [
                (1, user, b'"%s"' % str(user).encode(), True, False, 0, profile_hash(user), None)
            ]
        elif kind == "unkeyed":
            ops = [(0, None, body, True, False, 0, None, None)]
        elif kind == "link":  # an objectId's profile given an Identity: two profiles
            device = draw(st.sampled_from([GUID_A, ("guid", "b")]))
            ops = [(0, user, body, True, False, 0, profile_hash(user), device)]
        elif kind == "notes":
            notes = (["w"], [], {})
        elif kind == "lookups":
            lookups = ((token, False),)
        elif kind == "found":  # found sent already: no token operation
            lookups = tuple(
                (each, True) for each in draw(st.sets(st.sampled_from(TOKENS), min_size=1))
            )
        results.append((line, 0, READY, b"raw%d" % line, ops, notes, lookups, key, key or 0, 3))
    return results


@given(results=block_results(), lanes=st.integers(1, 4), at_least=st.integers(1, 3))
@example(  # a deletion between two plain uploads of one lane: no run spans it
    results=[
        (1, 0, READY, b"r1", [(0, "a", b"1", True, False, 0, 0, None)], None, (), None, 0, None),
        (2, 0, READY, b"r2", [(1, "b", b"2", True, False, 0, 0, None)], None, (), None, 0, None),
        (3, 0, READY, b"r3", [(0, "c", b"3", True, False, 0, 0, None)], None, (), None, 0, None),
    ],
    lanes=1,
    at_least=1,
)
@example(  # one left out for its profile holds back another by its token: none in bulk
    results=[
        (1, 0, READY, b"r1", [(0, "a", b"1", True, False, 0, 0, None)], NOTE, (), None, 0, None),
        (2, 0, READY, b"r2", [(0, "a", b"2", True, False, 0, 0, None)], None, FOUND, None, 0, None),
        (3, 0, READY, b"r3", [(0, "b", b"3", True, False, 0, 0, None)], None, FOUND, None, 0, None),
        (4, 0, READY, b"r4", [(0, "c", b"4", True, False, 0, 0, None)], None, (), None, 0, None),
    ],
    lanes=1,
    at_least=1,
)  # fmt: skip
@example(  # found: its token's profile is written by another record (found by a helper)
    results=[
        (1, 0, READY, b"r1", [(0, "c", b"1", True, False, 0, 0, None)], None, FOUND, None, 0, None),
        (2, 0, READY, b"r2", [(0, GUID_A, b"2", True, False, 0, 0, None)], NOTE, (), None, 0, None),
    ],
    lanes=1,
    at_least=1,
)  # fmt: skip
@example(  # ... or its profile's token is looked up by a record that is not plain
    results=[
        (1, 0, READY, b"r1", [(0, GUID_A, b"1", True, False, 0, 0, None)], None, (), None, 0, None),
        (2, 0, READY, b"r2", [(0, "c", b"2", True, False, 0, 0, None)], NOTE, FOUND, None, 0, None),
    ],
    lanes=1,
    at_least=1,
)  # fmt: skip
@example(  # a link and a write of its device in another lane: neither is plain ...
    results=[
        (1, 0, READY, b"r1", [(0, DEV_A, b"1", True, False, 0, 1, DEV_A)], None, (), None, 0, None),
        (2, 0, READY, b"r2", [(0, "c", b"2", True, False, 0, 0, GUID_A)], None, (), None, 0, None),
        (3, 0, READY, b"r3", [(0, "d", b"3", True, False, 0, 0, None)], None, (), None, 0, None),
    ],
    lanes=2,
    at_least=1,
)  # fmt: skip
@example(  # ... in one lane, both are (their bulk says which write a device's profile) ...
    results=[
        (1, 0, READY, b"r1", [(0, DEV_A, b"1", True, False, 0, 0, DEV_A)], None, (), None, 0, None),
        (2, 0, READY, b"r2", [(0, "c", b"2", True, False, 0, 0, GUID_A)], None, (), None, 0, None),
    ],
    lanes=1,
    at_least=1,
)  # fmt: skip
@example(  # ... and a link that is not plain holds back a write of its device before it
    results=[
        (1, 0, READY, b"r1", [(0, GUID_A, b"1", True, False, 0, 0, None)], None, (), None, 0, None),
        (2, 0, READY, b"r2", [(0, "c", b"2", True, False, 0, 0, None)], NOTE, (), None, 0, None),
        (3, 0, READY, b"r3", [(0, "c", b"3", True, False, 0, 0, GUID_A)], None, (), None, 0, None),
    ],
    lanes=1,
    at_least=1,
)  # fmt: skip
@example(  # a link with notes (not plain) holds its device too
    results=[
        (1, 0, READY, b"r1", [(0, GUID_A, b"1", True, False, 0, 0, None)], None, (), None, 0, None),
        (2, 0, READY, b"r2", [(0, "c", b"2", True, False, 0, 0, GUID_A)], NOTE, (), None, 0, None),
    ],
    lanes=1,
    at_least=1,
)  # fmt: skip
def test_gather_takes_out_exactly_the_plain_records_and_keeps_their_order(
    results: list[Result], lanes: int, at_least: int
) -> None:
    out = gather(list(results), "f", lanes, lines=True, dedupe=True, at_least=at_least)
    ids = [r[7] for r in results if r[7] is not None]
    # The model: which records are plain, from the results alone. A candidate: one
    # upload with a profile, no token to send, no notes, every token it looked up found.
    candidates = []
    for r in results:
        if r[2] != READY:
            continue
        ops = r[4]
        simple = len(ops) == 1 and ops[0][0] == 0 and ops[0][1] is not None and not ops[0][4]
        if simple and r[5] is None and all(found for _, found in r[6]):
            candidates.append(r)
    # Plain: candidates whose profile, and device whose profile they write (a link),
    # no other record writes or deletes and whose tokens no other record looks up; a
    # candidate left out is "other" in turn. `rounds`: how many times some were left out
    # before none more was. A device whose profile candidates of two lanes write counts
    # as written by another record from the start.
    plain = list(candidates)
    lanes_of: dict[Any, set[int]] = {}
    for r in candidates:
        if r[4][0][7] is not None:
            lanes_of.setdefault(r[4][0][7], set()).add(r[4][0][6] % lanes)
    spread = {profile for profile, found in lanes_of.items() if len(found) > 1}
    rounds = 0
    while True:
        others = [r for r in results if all(r is not p for p in plain)]
        # A record prepared again may send a token it looked up to the token's profile
        # (its objectId's): a lookup may write that profile.
        profiles = {op[1] for r in others if r[2] == READY for op in r[4] if op[1] is not None}
        profiles |= {op[7] for r in others if r[2] == READY for op in r[4] if op[7] is not None}
        profiles |= {("guid", objectId) for r in others for (objectId, _), _ in r[6]}
        profiles |= spread if rounds == 0 else set()
        tokens = {key for r in others for key, _ in r[6]}
        keep = [
            r
            for r in plain
            if r[4][0][1] not in profiles
            and r[4][0][7] not in profiles
            and not any(key in tokens or ("guid", key[0]) in profiles for key, _ in r[6])
        ]
        if len(keep) == len(plain):
            break
        plain, rounds = keep, rounds + 1
    if len(set(ids)) < len(ids) or len(candidates) < at_least:
        assert out == results, "a block with a repeated messageId, or too few, goes as it is"
        return
    if not plain or rounds > 1:  # none, or they hold each other back: nothing in bulk
        assert out == results
        return
    assert out[-1][2] == BULK and all(r[2] != BULK for r in out[:-1])
    bulks: list[Bulk] = out[-1][4]
    assert out[-1][5] == len(plain) and out[-1][:2] == plain[-1][:2]
    assert out[:-1] == [r for r in results if r not in plain]
    # Each plain record in its lane's bulk, in input order, with its columns.
    for bulk in bulks:
        assert 0 <= bulk.lane < lanes
        mine = [r for r in plain if r[4][0][6] % lanes == bulk.lane]
        assert bulk.bodies == [r[4][0][2] for r in mine]
        assert bulk.keys == [r[4][0][1] for r in mine]
        assert bulk.safe == [r[4][0][3] for r in mine]
        assert bulk.positions == [("f", (r[0], r[1], 0)) for r in mine]
        assert bulk.raws == [r[3] for r in mine]
        assert bulk.ids == [r[7] for r in mine] and bulk.probes == [r[8] for r in mine]
        assert bulk.days == [r[9] for r in mine]
        found = [(n, tuple(key for key, _ in r[6]), r[3]) for n, r in enumerate(mine) if r[6]]
        assert bulk.found == found
        assert bulk.devices == [(n, r[4][0][7]) for n, r in enumerate(mine) if r[4][0][7]]
    assert sum(len(b) for b in bulks) == len(plain)
    # A run of positions spans only this lane's plain records: no operation of the
    # block between its first and its last goes anywhere else.
    order = [(r[0], op[5]) for r in results if r[2] == READY for op in r[4]]
    for bulk in bulks:
        mine_lines = {p[1][0] for p in bulk.positions}
        covered = 0
        for first, last in bulk.runs:
            inside = [(line, n) for line, n in order if first[0] <= line <= last[0]]
            assert all(line in mine_lines for line, _ in inside), (first, last, inside)
            covered += len(inside)
        assert covered == len(bulk)
        assert [bulk.positions[s][1] for s in bulk.starts] == [run[0] for run in bulk.runs]


# -- add_bulk, against a model of runs ----------------------------------------------------


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["bulk", "one"]), st.integers(0, 1), st.integers(1, 9)),
        max_size=12,
    ),
    size=st.integers(1, 5),
    data=st.data(),
)
def test_add_bulk_fills_batches_to_their_size_and_runs_cover_exactly_their_batch(
    steps: list[tuple[str, int, int]], size: int, data: st.DataObject
) -> None:
    """Slices of plain records and single operations into two lanes: every batch holds
    at most `size`, the lane's operations in the order added, and the runs of positions
    a batch records (what the state file keeps for it) cover its own positions and no
    other operation's. A planner that keeps no runs (a run without --state), given the
    same slices without runs, fills the very same batches and keeps no runs."""
    planner = Planner(lanes=2, batch_size=size)
    bare = Planner(lanes=2, batch_size=size, runs=False)
    batches: list[Batch] = []
    bare_batches: list[Batch] = []
    added: dict[int, list[int]] = {0: [], 1: []}  # each lane's lines, in order
    line = 0
    for kind, lane, count in steps:
        if kind == "one":
            line += 1
            key = next(k for k in (f"k{i}" for i in range(99)) if profile_hash(k) % 2 == lane)
            owner = Tracked(Origin("f", line, 0), None, {}, 1)
            for each, into in ((planner, batches), (bare, bare_batches)):
                into += each.add_encoded(
                    OpKind.UPLOAD, key, b"x", True, False, owner, "f", (line, 0, 0), True
                )
            added[lane].append(line)
            continue
        bulk = Bulk(lane)
        for _ in range(count):
            line += 1 + data.draw(st.sampled_from([0, 0, 1]))  # sometimes one passed over
            position = (line, 0, 0)
            if bulk.runs and bulk.runs[-1][1][0] == line - 1:
                bulk.runs[-1][1] = position
            else:
                bulk.starts.append(len(bulk.bodies))
                bulk.runs.append([position, position])
            bulk.bodies.append(b"%d" % line)
            bulk.keys.append(f"p{line}")
            bulk.safe.append(True)
            bulk.positions.append(("f", position))
            added[lane].append(line)
        batches += planner.add_bulk(bulk, False)
        bare_batches += bare.add_bulk(replace(bulk, runs=[], starts=[]), False)
    batches += [b for b in planner.open_batches() if b.lane >= 0]
    bare_batches += [b for b in bare.open_batches() if b.lane >= 0]
    assert [(b.lane, b.bodies, b.positions, b.keys) for b in bare_batches] == [
        (b.lane, b.bodies, b.positions, b.keys) for b in batches
    ]
    assert all(not b.runs for b in bare_batches)
    where = {p[1][0]: b for b in batches for p in b.positions}
    for batch in batches:
        assert 0 < len(batch) <= size
        covered = set()
        for first, last in batch.runs["f"]:
            inside = {n for n in where if first[0] <= n <= last[0]}
            assert all(where[n] is batch for n in inside), (first, last)
            covered |= inside
        assert covered == {p[1][0] for p in batch.positions}
    for lane in (0, 1):
        mine = [b for b in batches if b.lane == lane]
        assert [p[1][0] for b in mine for p in b.positions] == added[lane]


@given(
    lines=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from("abcd"), st.sampled_from([None, "x", "y"])),
        max_size=20,
    ),
    taken=st.sets(st.sampled_from("abcdxy")),
)
def test_a_split_bulk_keeps_each_record_once_in_order_and_runs_only_over_its_own(
    lines: list[tuple[int, str, str | None]], taken: set[str]
) -> None:
    """`Bulk.split` (the records of profiles waiting for a deletion taken out): every
    record in one part, in order, with its columns; a run of the part kept never spans
    a record taken out, nor a gap the bulk's own runs had. A link (a user's record that
    writes device x or y) ties its two profiles: the records of both go the same way,
    and so on through other links (the model: profiles linked to a taken one)."""
    bulk = Bulk(0, raws=[], ids=[], probes=[], days=[])
    line = 0
    for step, key, device in lines:
        if device is not None:
            bulk.devices.append((len(bulk.bodies), device))
        line += step  # a step of 2 or 3: records between that went elsewhere
        position = (line, 0, 0)
        if bulk.runs and step == 1:
            bulk.runs[-1][1] = position
        else:
            bulk.starts.append(len(bulk.bodies))
            bulk.runs.append([position, position])
        bulk.bodies.append(b"%d" % line)
        bulk.keys.append(key)
        bulk.safe.append(line % 2 == 0)
        bulk.positions.append(("f", position))
        bulk.raws.append(b"raw%d" % line)  # type: ignore[union-attr]
        bulk.ids.append(line)  # type: ignore[union-attr]
        bulk.probes.append(line & 7)  # type: ignore[union-attr]
        bulk.days.append(None)  # type: ignore[union-attr]
    keys: set[ProfileKey] = set(taken)
    linked = set(taken)  # the model: every profile a chain of links ties to a taken one
    while True:
        more = {p for _, key, device in lines if device for p in (key, device)
                if {key, device} & linked}  # fmt: skip
        if more <= linked:
            break
        linked |= more
    kept, out = bulk.split(keys)
    # Without runs (a run without --state): the same parts, without runs.
    for part, bare in zip((kept, out), replace(bulk, runs=[], starts=[]).split(keys), strict=True):
        assert (bare.bodies, bare.keys, bare.positions, bare.ids) == (
            part.bodies,
            part.keys,
            part.positions,
            part.ids,
        )
        assert (bare.runs, bare.starts) == ([], [])
    devices = dict(bulk.devices)
    for part, inside in ((kept, False), (out, True)):
        mine = [
            n
            for n, key in enumerate(bulk.keys)
            if (key in linked or devices.get(n) in linked) == inside
        ]
        assert part.devices == [(i, devices[n]) for i, n in enumerate(mine) if n in devices]
        assert part.bodies == [bulk.bodies[n] for n in mine]
        assert part.keys == [bulk.keys[n] for n in mine]
        assert part.safe == [bulk.safe[n] for n in mine]
        assert part.positions == [bulk.positions[n] for n in mine]
        assert part.raws == [bulk.raws[n] for n in mine]  # type: ignore[index]
        assert part.ids == [bulk.ids[n] for n in mine]  # type: ignore[index]
        assert part.probes == [bulk.probes[n] for n in mine]  # type: ignore[index]
        assert [part.positions[s][1] for s in part.starts] == [run[0] for run in part.runs]
    kept_lines = [p[1][0] for p in kept.positions]
    other = {p[1][0] for p in bulk.positions} - set(kept_lines)
    covered = []
    for first, last in kept.runs:
        inside_run = [n for n in range(first[0], last[0] + 1)]
        assert not other & set(inside_run), (first, last)
        # No gap the bulk's runs had: a line between, in no record, breaks a run too.
        assert all(n in kept_lines for n in inside_run), (first, last)
        covered += inside_run
    assert covered == kept_lines
