"""How many requests may be in flight at once: a fixed number, or adaptive (`auto`).

CleverTap takes 15 upload requests (3 deletions) at once per account and answers 429
above that; the account's other clients share the same allowance. `--concurrency auto`
therefore starts at the limit and adapts, as TCP does (AIMD):

- each 429 halves the number of requests allowed in flight (never below 1);
- each acknowledged request (any 2xx answer) raises it by one (never above the limit).

Every attempt, a retry included, takes a permit before it is written and gives it back
with its answer. A retry of a batch answered 429 needs a new permit like any other
attempt, and waits for it: so a smaller limit takes effect at once, for new batches and
retries alike (requests already on the wire cannot be called back; they just finish).
Waiting attempts get their permits in the order they asked (first come, first served).

A fixed number (`--concurrency N`) keeps N: 429s are counted and retried, never adapted to.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

from ctsync.summary import ConcurrencyReport

AUTO: Literal["auto"] = "auto"
Concurrency = int | Literal["auto"]
"""What `--concurrency` takes: a number of requests in flight, or `auto`."""

TOO_MANY_REQUESTS = 429


class Limit:
    """Permits for requests in flight; `async with limit:` around one attempt, and
    `limit.answered(status)` inside it once the answer's status is known.

    With `adaptive`, the limit starts at `maximum` and follows AIMD (see the module);
    otherwise it stays at `maximum`. Used from one event loop only.
    """

    def __init__(self, maximum: int, *, adaptive: bool) -> None:
        if maximum < 1:
            raise ValueError(f"a concurrency limit must be at least 1, not {maximum}")
        self.maximum = maximum
        self.adaptive = adaptive
        self.limit = maximum
        self.lowest = maximum
        self.in_flight = 0
        self.peak_in_flight = 0
        self.too_many = 0  # answers 429
        self.acknowledged = 0  # answers 2xx
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Wait for a permit: fewer than `limit` in flight, and no one asked earlier."""
        if not self._waiters and self.in_flight < self.limit:
            self._take()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Granted, but cancelled before it could run: give the permit back.
                self.in_flight -= 1
                self._wake()
            elif waiter in self._waiters:  # `_wake` may have passed over it already
                self._waiters.remove(waiter)
            raise

    def cancel_waiting(self) -> None:
        """End every wait for a permit with CancelledError (a run that stops sends no
        new request); permits already given are not affected."""
        while self._waiters:
            self._waiters.popleft().cancel()

    def answered(self, status: int) -> None:
        """The attempt holding a permit got an answer with this HTTP status."""
        if status == TOO_MANY_REQUESTS:
            self.too_many += 1
            if self.adaptive:
                self.limit = max(1, self.limit // 2)
                self.lowest = min(self.lowest, self.limit)
        elif 200 <= status < 300:
            self.acknowledged += 1
            if self.adaptive and self.limit < self.maximum:
                self.limit += 1  # release(), which follows, lets a waiter in

    def release(self) -> None:
        """Give back the permit of an attempt that ended (answered or not)."""
        if self.in_flight <= 0:
            raise RuntimeError("release() without a permit")
        self.in_flight -= 1
        self._wake()

    async def __aenter__(self) -> Limit:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def _take(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def report(self) -> ConcurrencyReport:
        """What the summary says of this limit."""
        return ConcurrencyReport(
            mode=AUTO if self.adaptive else "fixed",
            limit=self.maximum,
            peak_in_flight=self.peak_in_flight,
            final_limit=self.limit,
            lowest_limit=self.lowest,
            too_many_requests=self.too_many,
        )


def parse_concurrency(text: str) -> Concurrency:
    """`auto`, or a whole number as text; ValueError otherwise (range checks elsewhere)."""
    value = text.strip().lower()
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither auto nor a whole number") from None
