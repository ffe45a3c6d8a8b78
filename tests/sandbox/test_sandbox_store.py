"""What the sandbox stores: profiles merged, events appended, tokens, deletions, dry runs."""

from __future__ import annotations

from pathlib import Path

import httpx

from ctsync.sandbox import (
    IdentifierKind,
    Sandbox,
    SandboxConfig,
    SandboxStore,
    StoredDeletion,
    running_sandbox,
)

from ._support import AUTH, TIMEOUT, delete, event, profile, upload


def test_dry_run_validates_and_stores_nothing(client: httpx.Client, sandbox: Sandbox) -> None:
    records = [profile("u1", Name="A"), event("u1"), event("u1", "Stayed")]
    body = upload(client, records, params={"dryRun": "1"}).json()
    assert body["processed"] == 2
    assert [f["code"] for f in body["unprocessed"]] == [513]
    stats = sandbox.stats()
    assert (stats.profiles, stats.events, stats.records_accepted) == (0, 0, 0)
    assert stats.records_dry_run == 3


def test_profiles_merge_key_by_key_and_count_writes(client: httpx.Client, sandbox: Sandbox) -> None:
    upload(client, [profile("u1", Name="Ada", Email="ada@example.com")])
    upload(client, [profile("u1", Name="Ada L.", plan="pro"), profile("u2", Name="Bo")])
    upload(client, [profile("u1", plan="max") | {"ts": 1709640000}])
    stored = sandbox.read(lambda store: store.profile("u1"))
    assert stored is not None
    assert dict(stored.data) == {"Name": "Ada L.", "Email": "ada@example.com", "plan": "max"}
    assert stored.writes == 3
    assert stored.last_ts == 1709640000
    assert sandbox.read(lambda store: store.profile_writes()) == {"u1": 3, "u2": 1}
    assert sandbox.stats().profiles == 2


def test_writes_to_one_profile_within_one_request_apply_in_order(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    upload(client, [profile("u1", a=1, b=1), profile("u1", b=2), profile("u1", c=3)])
    stored = sandbox.read(lambda store: store.profile("u1"))
    assert stored is not None
    assert (dict(stored.data), stored.writes) == ({"a": 1, "b": 2, "c": 3}, 3)


def test_profiles_by_objectid_are_apart_from_identities(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    by_guid = {"type": "profile", "objectId": "u1", "profileData": {"x": 1}}
    upload(client, [profile("u1", x=2), by_guid])
    guid = sandbox.read(lambda store: store.profile("u1", IdentifierKind.OBJECT_ID))
    identity = sandbox.read(lambda store: store.profile("u1"))
    assert guid is not None and identity is not None
    assert (guid.data["x"], identity.data["x"]) == (1, 2)


def test_events_are_appended_with_their_data(client: httpx.Client, sandbox: Sandbox) -> None:
    upload(client, [event("u1"), event("u2", "Signed Up", evtData={"plan": "pro"})])
    upload(client, [event("u1", ts=1709640000)])
    events = sandbox.read(lambda store: store.events())
    assert [(e.identifier, e.evt_name, e.ts) for e in events] == [
        ("u1", "Product Viewed", 1709632800),
        ("u2", "Signed Up", 1709632800),
        ("u1", "Product Viewed", 1709640000),
    ]
    assert events[1].evt_data == {"plan": "pro"}
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert len(sandbox.read(lambda store: store.events("u1"))) == 2
    assert sandbox.read(lambda store: store.events_per_identifier()) == {"u1": 2, "u2": 1}
    assert sandbox.read(lambda store: store.event_names()) == {"Product Viewed": 2, "Signed Up": 1}


def test_an_event_without_ts_gets_the_upload_time(client: httpx.Client, sandbox: Sandbox) -> None:
    record = event("u1")
    del record["ts"]
    upload(client, [record])
    [stored] = sandbox.read(lambda store: store.events())
    assert stored.ts > 1_700_000_000


def test_tokens_are_stored(client: httpx.Client, sandbox: Sandbox) -> None:
    token = {"type": "token", "objectId": "g1", "tokenData": {"id": "t1", "type": "apns"}}
    upload(client, [token])
    [stored] = sandbox.read(lambda store: store.tokens())
    assert (stored.object_id, stored.token_id, stored.token_type) == ("g1", "t1", "apns")


def test_delete_removes_profiles_and_logs_every_value(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    upload(client, [profile("u1", a=1), profile("u2", a=1)])
    upload(client, [{"type": "profile", "objectId": "g1", "profileData": {"a": 1}}])
    assert delete(client, {"identity": ["u1", "nobody"]}).json() == {
        "status": "success",
        "processed": 2,
    }
    assert delete(client, {"guid": "g1"}).json() == {"status": "success", "processed": 1}
    assert sandbox.read(lambda store: store.profile_writes()) == {"u2": 1}
    deletions = sandbox.read(lambda store: store.deletions())
    assert [(d.key, d.value, d.existed) for d in deletions] == [
        ("identity", "u1", True),
        ("identity", "nobody", False),
        ("guid", "g1", True),
    ]
    assert sandbox.stats().deletions == 3


def test_an_upload_after_a_delete_creates_a_new_profile(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    upload(client, [profile("u1", a=1, b=1)])
    delete(client, {"identity": "u1"})
    upload(client, [profile("u1", b=2)])
    stored = sandbox.read(lambda store: store.profile("u1"))
    [deletion] = sandbox.read(lambda store: store.deletions())
    assert stored is not None
    assert (dict(stored.data), stored.writes) == ({"b": 2}, 1)
    assert isinstance(deletion, StoredDeletion)
    assert deletion.seq < stored.last_seq


def test_reset_forgets_data_and_counters(client: httpx.Client, sandbox: Sandbox) -> None:
    upload(client, [profile("u1", a=1), event("u1")])
    assert client.post("/_sandbox/reset").json() == {"status": "success"}
    stats = sandbox.stats()
    assert (stats.profiles, stats.events, stats.records_accepted) == (0, 0, 0)
    assert stats.requests_by_status == {}


def test_stats_over_http_match_the_python_api(client: httpx.Client, sandbox: Sandbox) -> None:
    upload(client, [profile("u1", a=1), event("u1"), event("u1", "Stayed")])
    delete(client, {"identity": "u1"})
    client.post("/1/nowhere")
    answer = httpx.get(f"{sandbox.url}/_sandbox/stats", headers=AUTH, timeout=TIMEOUT).json()
    assert answer == sandbox.stats().to_json()
    assert answer["events"] == 1
    assert answer["deletions"] == 1
    assert answer["records_accepted"] == 2
    assert answer["records_rejected"] == 1
    assert answer["rejected_by_code"] == {"513": 1}
    assert answer["requests_by_status"] == {"200": 2, "404": 1}
    assert answer["requests_by_endpoint"] == {"upload": 1, "delete": 1}
    assert answer["peak_in_flight"] == {"upload": 1, "delete": 1}
    assert answer["in_flight"] == {"upload": 0, "delete": 0}


def test_a_database_file_keeps_everything_and_reopens(tmp_path: Path) -> None:
    db = tmp_path / "sandbox.db"
    with (
        running_sandbox(SandboxConfig(db=db)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        upload(http, [profile("u1", a=1), event("u1"), event("u2")])
        delete(http, {"identity": "u2"})
        # Another connection sees the data while the server runs, profiles merged.
        reader = SandboxStore.open(db, create=False)
        assert (reader.counts().events, reader.profile_writes()) == (2, {"u1": 1})
        reader.close()
        upload(http, [profile("u1", b=2)])
        assert sandbox.read(lambda store: store.profile_writes()) == {"u1": 2}
    with running_sandbox(SandboxConfig(db=db)) as sandbox:
        upload_after = sandbox.read(lambda store: store.counts())
        assert (upload_after.profiles, upload_after.events, upload_after.deletions) == (1, 2, 1)
        with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http:
            upload(http, [event("u3")])
        seqs = [e.seq for e in sandbox.read(lambda store: store.events())]
        assert seqs == sorted(set(seqs))
        assert len(seqs) == 3
