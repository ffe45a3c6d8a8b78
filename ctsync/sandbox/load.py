"""A bounded load generator: how many records per second a sandbox absorbs.

    python -m ctsync.sandbox.load --url http://127.0.0.1:8787 --requests 3000

Sends `--requests` uploads of `--records` records (~600 bytes each, half profiles and
half events, as bench/generate.py mixes identify and track) from `--concurrency` workers
over keep-alive connections, then prints one line of figures and stops. Bodies are
built before the clock starts so that the client measures the server, not its own JSON
encoding.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import orjson
import typer

from ._config import DEFAULT_ACCOUNT_ID, DEFAULT_PASSCODE, MAX_CONCURRENT_UPLOADS

DISTINCT_BODIES = 32


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    records: int
    seconds: float
    statuses: dict[int, int]

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


def record(n: int) -> dict[str, Any]:
    """The n-th synthetic record: profiles and events in turn, about 600 bytes each."""
    identity = f"user-{n % 50_000:06d}"
    ts = 1_709_632_800 + n
    if n % 2 == 0:
        return {
            "type": "profile",
            "identity": identity,
            "ts": ts,
            "profileData": {
                "Name": f"Person {n}",
                "Email": f"person{n}@example.com",
                "Phone": f"+4915{n:09d}",
                "Gender": "F" if n % 2 else "M",
                "plan": "premium",
                "company": "Example Industries International GmbH & Co. KG",
                "signup_source": "campaign-2024-spring-newsletter-variant-b",
                "address": "Musterstrasse 123, 10115 Berlin, Germany, Europe, Earth",
                "notes": "x" * 180,
            },
        }
    return {
        "type": "event",
        "identity": identity,
        "ts": ts,
        "evtName": "Product Viewed",
        "evtData": {
            "product_id": f"sku-{n:08d}",
            "name": "A reasonably long product name for realistic payload sizes",
            "category": "Home & Garden / Furniture / Outdoor",
            "price": 129.99,
            "currency": "EUR",
            "quantity": 1,
            "url": f"https://shop.example.com/products/sku-{n:08d}?utm_source=newsletter",
            "campaign": "spring-sale-2024",
            "referrer": "https://www.example.org/some/long/referring/path/index.html",
            "notes": "y" * 150,
        },
    }


def bodies(records_per_request: int, count: int = DISTINCT_BODIES) -> list[bytes]:
    """`count` distinct request bodies."""
    numbers = itertools.count()
    return [
        orjson.dumps({"d": [record(next(numbers)) for _ in range(records_per_request)]})
        for _ in range(count)
    ]


async def run_load(
    url: str,
    *,
    requests: int,
    records_per_request: int,
    concurrency: int,
    account_id: str = DEFAULT_ACCOUNT_ID,
    passcode: str = DEFAULT_PASSCODE,
) -> LoadResult:
    """Send `requests` uploads with `concurrency` workers and time them."""
    payloads = bodies(records_per_request)
    headers = {
        "X-CleverTap-Account-Id": account_id,
        "X-CleverTap-Passcode": passcode,
        "Content-Type": "application/json; charset=utf-8",
    }
    statuses: dict[int, int] = {}
    next_request = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            while (n := next(next_request)) < requests:
                response = await client.post(
                    "/1/upload", content=payloads[n % len(payloads)], timeout=60.0
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(requests, requests * records_per_request, seconds, statuses)


def main(
    url: Annotated[str, typer.Option(help="The sandbox's base URL.")] = "http://127.0.0.1:8787",
    requests: Annotated[int, typer.Option(min=1, max=100_000)] = 3000,
    records: Annotated[int, typer.Option(min=1, max=1000)] = 1000,
    concurrency: Annotated[int, typer.Option(min=1)] = MAX_CONCURRENT_UPLOADS,
) -> None:
    """Load a running sandbox and print records/s and requests/s."""
    result = asyncio.run(
        run_load(url, requests=requests, records_per_request=records, concurrency=concurrency)
    )
    size = len(bodies(records, 1)[0]) / records
    typer.echo(
        f"{result.requests} requests x {records} records (~{size:.0f} B each) in"
        f" {result.seconds:.2f}s: {result.records_per_second:,.0f} records/s,"
        f" {result.requests_per_second:,.1f} requests/s, statuses {result.statuses}"
    )


if __name__ == "__main__":
    typer.run(main)
