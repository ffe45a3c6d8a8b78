"""`ctsync sandbox --sink`: the benchmark's lean receiver answers like CleverTap (auth,
limits, the count processed) and checks or stores nothing."""

from __future__ import annotations

import asyncio

import httpx

from ctsync.sandbox import SandboxConfig, running_sandbox

from ._support import AUTH, TIMEOUT, delete, event, profile, upload


def test_the_sink_answers_every_record_processed_and_stores_nothing() -> None:
    with running_sandbox(SandboxConfig(sink=True)) as sandbox:
        with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as client:
            # A record the full sandbox would reject (no identity) counts as processed.
            answer = upload(client, [profile("u1"), event("u1"), {"type": "event"}])
            deleted = delete(client, {"identity": ["u1"]})
            empty = upload(client, [])
        stats = sandbox.stats()
    assert answer.status_code == 200
    assert answer.json() == {"status": "success", "processed": 3}
    assert deleted.status_code == 200 and deleted.json()["status"] == "success"
    assert empty.status_code == 400  # not a request CleverTap would take either
    assert stats.records_accepted == 3
    assert (stats.profiles, stats.events, stats.deletions) == (0, 0, 0)


def test_the_sink_keeps_auth_and_the_concurrency_limit() -> None:
    config = SandboxConfig(sink=True, latency_ms=200, max_concurrent_uploads=2)
    with running_sandbox(config) as sandbox:
        with httpx.Client(base_url=sandbox.url, timeout=TIMEOUT) as client:
            refused = upload(client, [profile("u1")])
        assert refused.status_code == 401

        async def three_at_once() -> list[int]:
            async with httpx.AsyncClient(
                base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT
            ) as client:
                answers = await asyncio.gather(
                    *(client.post("/1/upload", json={"d": [profile("u")]}) for _ in range(3))
                )
            return sorted(a.status_code for a in answers)

        statuses = asyncio.run(three_at_once())
    assert statuses == [200, 200, 429]


def test_the_sink_option_reaches_the_command_line() -> None:
    assert "--sink" in SandboxConfig(sink=True).to_cli_args()
    assert "--sink" not in SandboxConfig().to_cli_args()
