"""`--concurrency auto`: the AIMD limit against a hand model, driven by Hypothesis.

Attempts ask for permits, get answers (2xx, 429, another status, no answer at all) and
are cancelled while they wait, in any order. After each step the real `Limit` must agree
with a model written from the rules in the issue, not from the code:

- the limit starts at the maximum, halves (rounding down) on each 429, never below 1,
  grows by one per 2xx answer, never above the maximum; a fixed limit never moves;
- permits go to the attempts in the order they asked, only while fewer than the limit
  are in flight: so the number in flight never exceeds the limit when a permit is given;
- nobody waits while a permit is free.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from ctsync.cli import app
from ctsync.client import CleverTapClient
from ctsync.concurrency import Limit, parse_concurrency
from ctsync.console import render_summary
from ctsync.ledger import Ledger, Summary
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import Source
from ctsync.run import RunOptions, UploadRun
from ctsync.settings import ClientSettings, RetryPolicy, Secret
from ctsync.stopping import SendCounter
from ctsync.summary import ConcurrencyReport
from tests.helpers import examples

STATUSES = [200, 200, 202, 429, 429, 500, 503, None]  # None: no answer (a lost connection)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.integers(1, 4)),
        st.tuples(st.just("answer"), st.integers(0, 30), st.sampled_from(STATUSES)),
        # An answer frees a permit and, before the next waiter can run, that waiter is
        # cancelled: the permit it was given must go on to the one after it.
        st.tuples(st.just("answer-then-cancel"), st.integers(0, 30), st.sampled_from(STATUSES)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        # A waiter is cancelled and, before it can run, an answer frees a permit.
        st.tuples(st.just("cancel-then-answer"), st.integers(0, 30), st.sampled_from(STATUSES)),
    ),
    max_size=60,
)


@dataclass
class Model:
    maximum: int
    adaptive: bool
    limit: int = 0
    holders: list[int] = field(default_factory=list)  # attempt numbers holding a permit
    waiting: list[int] = field(default_factory=list)  # in the order they asked
    granted_over_limit: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limit = self.maximum

    def answer(self, status: int | None) -> None:
        if status == 429 and self.adaptive:
            self.limit = max(1, self.limit // 2)
        elif status is not None and 200 <= status < 300 and self.adaptive:
            self.limit = min(self.maximum, self.limit + 1)

    def grant(self) -> None:
        while self.waiting and len(self.holders) < self.limit:
            self.holders.append(self.waiting.pop(0))
            if len(self.holders) > self.limit:
                self.granted_over_limit.append((len(self.holders), self.limit))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@settings(max_examples=examples(400))
@given(maximum=st.integers(1, 15), adaptive=st.booleans(), plan=steps)
def test_the_limit_follows_aimd_and_never_grants_over_it(
    maximum: int, adaptive: bool, plan: list[tuple[object, ...]]
) -> None:
    async def go() -> None:
        limit = Limit(maximum, adaptive=adaptive)
        model = Model(maximum, adaptive)
        tasks: dict[int, asyncio.Task[None]] = {}
        holders: list[int] = []  # the real order permits were taken in
        over: list[tuple[int, int]] = []  # (in flight, limit) seen when a permit was taken
        lowest = maximum

        async def attempt(number: int) -> None:
            await limit.acquire()
            if limit.in_flight > limit.limit:
                over.append((limit.in_flight, limit.limit))
            holders.append(number)

        def finish(holder: int, status: object) -> None:
            holders.remove(holder)
            if isinstance(status, int):
                limit.answered(status)
            limit.release()

        for step in plan:
            kind = step[0]
            if kind == "ask":
                for _ in range(int(step[1])):  # type: ignore[call-overload]
                    number = len(tasks)
                    tasks[number] = asyncio.create_task(attempt(number))
                    model.waiting.append(number)
                    await asyncio.sleep(0)  # ask in this order
            elif kind in ("answer", "answer-then-cancel") and model.holders:
                holder = model.holders[int(step[1]) % len(model.holders)]  # type: ignore[call-overload]
                model.holders.remove(holder)
                finish(holder, step[2])
                model.answer(step[2])  # type: ignore[arg-type]
                if kind == "answer-then-cancel" and model.waiting:
                    first = model.waiting[0]
                    tasks[first].cancel()  # before it runs: it may have just been granted
                    model.waiting.remove(first)
            elif kind == "cancel" and model.waiting:
                number = model.waiting[int(step[1]) % len(model.waiting)]  # type: ignore[call-overload]
                tasks[number].cancel()
                model.waiting.remove(number)
            elif kind == "cancel-then-answer" and model.waiting and model.holders:
                number = model.waiting[int(step[1]) % len(model.waiting)]  # type: ignore[call-overload]
                tasks[number].cancel()
                model.waiting.remove(number)
                holder = model.holders[0]
                model.holders.remove(holder)
                finish(holder, step[2])
                model.answer(step[2])  # type: ignore[arg-type]
            model.grant()
            await settle()
            lowest = min(lowest, model.limit)

            assert limit.limit == model.limit
            assert 1 <= limit.limit <= maximum
            assert sorted(holders) == sorted(model.holders)
            assert limit.in_flight == len(model.holders)
            assert over == [] and model.granted_over_limit == []
            if model.waiting:  # nobody waits while a permit is free
                assert limit.in_flight >= limit.limit
            report = limit.report()
            assert report.final_limit == model.limit
            assert report.lowest_limit == lowest
            if not adaptive:
                assert limit.limit == maximum

        for task in tasks.values():
            task.cancel()
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        # Every attempt got its permit or was cancelled: nothing else went wrong in one.
        assert [o for o in outcomes if isinstance(o, Exception)] == []

    asyncio.run(go())


def test_a_burst_of_429s_halves_each_time_then_grows_back_one_by_one() -> None:
    limit = Limit(15, adaptive=True)
    seen = []
    for status in [429, 429, 429, 429, 429, 200, 200, 200, 429, *[200] * 20]:
        limit.answered(status)
        seen.append(limit.limit)
    assert seen == [7, 3, 1, 1, 1, 2, 3, 4, 2, *range(3, 16), *[15] * 7]
    report = limit.report()
    assert (report.lowest_limit, report.final_limit, report.too_many_requests) == (1, 15, 6)


def test_a_fixed_limit_counts_429s_and_keeps_its_number() -> None:
    limit = Limit(4, adaptive=False)
    for status in (429, 429, 200):
        limit.answered(status)
    report = limit.report()
    assert (report.mode, report.final_limit, report.lowest_limit) == ("fixed", 4, 4)
    assert report.too_many_requests == 2


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), (" AUTO ", "auto"), ("7", 7)])
def test_parse_concurrency(text: str, value: object) -> None:
    assert parse_concurrency(text) == value


def test_parse_concurrency_refuses_other_words() -> None:
    with pytest.raises(ValueError, match="neither auto nor a whole number"):
        parse_concurrency("fast")


# -- in a run -----------------------------------------------------------------------


@pytest.mark.parametrize("counted", [False, True])
def test_a_stop_sends_nothing_more_while_lanes_wait_for_permits(counted: bool) -> None:
    """Lanes may outnumber the permits (auto after 429s): a lane still waiting for one
    when the run is stopped has nothing on the wire, and must not send afterwards."""
    paths: list[str] = []
    stopping: list[UploadRun] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        await asyncio.sleep(0.05)  # meanwhile every lane has its batch and waits
        stopping[0].stop()  # the first Ctrl-C
        await asyncio.sleep(0.01)
        return httpx.Response(200, json={"status": "success", "processed": 1})

    data = b"".join(
        orjson.dumps({"type": "identify", "userId": f"u{i}", "traits": {"n": i}}) + b"\n"
        for i in range(5)
    )
    settings_ = ClientSettings(
        account_id="a",
        passcode=Secret("stop-test-passcode"),
        base_url="http://clevertap.test",
        concurrency=1,  # one permit, five lanes: four wait
        retry=RetryPolicy(max_retries=0),
    )

    async def go() -> tuple[int, dict[str, int], int]:
        async with CleverTapClient(settings_, transport=httpx.MockTransport(answer)) as client:
            run = UploadRun(
                [Source("-", None, None)],
                mapper=build_preset(Preset.ACTIONS, MappingOptions()),
                sender=SendCounter(client) if counted else client,  # as the CLI wraps it
                ledger=Ledger(),
                options=RunOptions(batch_size=1, lanes=5),
                stdin=io.BytesIO(data),
            )
            stopping.append(run)
            summary = await run.run()
            return summary.accepted, dict(summary.failed), summary.read

    accepted, failed, read = asyncio.run(go())
    assert len(paths) == 1, paths  # the request in flight finished; no other went out
    assert (read, accepted, failed) == (5, 1, {"interrupted": 4})


def test_the_summary_says_what_the_window_did() -> None:
    summary = Summary(read=10, accepted=10)
    summary.concurrency = {
        "upload": ConcurrencyReport("auto", 15, 9, 4, 2, 3),
        "delete": ConcurrencyReport("fixed", 3, 3, 3, 3, 0),
    }
    console = Console(record=True, width=200)
    render_summary(summary, console)
    text = console.export_text()
    assert "upload requests in flight (auto, at most 15): peak 9, final limit 4, lowest 2;" in text
    assert "3 answered 429" in text
    assert "delete requests in flight (fixed, at most 3): peak 3; 0 answered 429" in text
    data = summary.as_dict()
    assert data["http_429"] == 3
    assert data["concurrency"]["upload"] == {
        "mode": "auto",
        "limit": 15,
        "peak_in_flight": 9,
        "final_limit": 4,
        "lowest_limit": 2,
        "http_429": 3,
    }


def test_a_dry_run_reports_no_concurrency() -> None:
    data = orjson.dumps({"type": "identify", "userId": "u1", "traits": {"n": 1}}) + b"\n"
    result = CliRunner().invoke(app, ["upload", "-", "--dry-run", "--json"], input=data)
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["concurrency"], summary["http_429"]) == ({}, 0)
