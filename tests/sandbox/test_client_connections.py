"""The CleverTap client's connections, against the sandbox: kept alive and reused, never
more than the requests it may have in flight (CleverTap counts connections too)."""

from __future__ import annotations

import asyncio

import orjson

from ctsync.client import CleverTapClient
from ctsync.ledger import ACCEPTED
from ctsync.sandbox import Sandbox
from ctsync.settings import ClientSettings, Secret


def _record(n: int) -> bytes:
    return orjson.dumps(
        {"type": "profile", "identity": f"u{n}", "ts": 1714564800, "profileData": {"n": n}}
    )


def test_requests_reuse_kept_alive_connections_never_more_than_the_requests_in_flight(
    sandbox: Sandbox,
) -> None:
    settings = ClientSettings(
        account_id="sandbox", passcode=Secret("sandbox"), base_url=sandbox.url, concurrency=15
    )

    async def upload(client: CleverTapClient, n: int) -> None:
        verdicts = await client.upload([_record(n)], [None], [True])
        assert verdicts == [ACCEPTED]

    async def go() -> tuple[int, int, int]:
        async with CleverTapClient(settings) as client:
            for n in range(20):  # one after another: one connection
                await upload(client, n)
            alone = sandbox.connections()
            await asyncio.gather(*(upload(client, n) for n in range(15)))
            side_by_side = sandbox.connections()
            for _ in range(3):  # again: the same connections
                await asyncio.gather(*(upload(client, n) for n in range(15)))
            return alone, side_by_side, sandbox.connections()

    alone, side_by_side, after = asyncio.run(go())
    assert alone == 1
    assert side_by_side <= 15
    assert after == side_by_side
