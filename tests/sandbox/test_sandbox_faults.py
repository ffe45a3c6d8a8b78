"""Concurrency limits, latency and injected faults."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from functools import partial

import httpx
import pytest

from ctsync.sandbox import (
    DELETE_PATH,
    HOLD_PATH,
    RELEASE_PATH,
    STATS_PATH,
    UPLOAD_PATH,
    SandboxConfig,
    SandboxStore,
    running_sandbox,
)
from ctsync.sandbox._validation import check_upload

from ._support import AUTH, TIMEOUT, event, profile, upload


async def _send_all(url: str, path: str, bodies: list[object]) -> list[httpx.Response]:
    """Send every body at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(
        base_url=url, headers=AUTH, timeout=TIMEOUT, limits=limits
    ) as http:
        return await asyncio.gather(*(http.post(path, json=body) for body in bodies))


async def _concurrently(url: str, path: str, bodies: list[object]) -> list[int]:
    """Send every body at once; the statuses in order."""
    return [response.status_code for response in await _send_all(url, path, bodies)]


def test_a_16th_concurrent_upload_gets_429() -> None:
    with running_sandbox(SandboxConfig(latency_ms=1500)) as sandbox:
        bodies: list[object] = [{"d": [event(f"u{n}")]} for n in range(16)]
        statuses = asyncio.run(_concurrently(sandbox.url, UPLOAD_PATH, bodies))
        stats = sandbox.stats()
    assert sorted(statuses) == [200] * 15 + [429]
    assert stats.events == 15
    assert stats.peak_in_flight["upload"] == 16
    assert stats.requests_by_status == {200: 15, 429: 1}


def test_15_concurrent_uploads_all_pass() -> None:
    with running_sandbox(SandboxConfig(latency_ms=1500)) as sandbox:
        bodies: list[object] = [{"d": [event(f"u{n}")]} for n in range(15)]
        statuses = asyncio.run(_concurrently(sandbox.url, UPLOAD_PATH, bodies))
        assert statuses == [200] * 15
        assert sandbox.stats().peak_in_flight["upload"] == 15


def test_the_429_answer_is_clevertaps_and_the_limit_clears() -> None:
    config = SandboxConfig(latency_ms=400, max_concurrent_uploads=1)
    with running_sandbox(config) as sandbox:
        bodies: list[object] = [{"d": [event("a")]}, {"d": [event("b")]}]
        responses = asyncio.run(_send_all(sandbox.url, UPLOAD_PATH, bodies))
        [refused] = [r for r in responses if r.status_code == 429]
        assert refused.json() == {
            "status": "fail",
            "error": "Too many concurrent requests",
            "code": 429,
        }
        with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http:
            # One at a time is fine again.
            assert upload(http, [event("c")]).status_code == 200


def test_a_4th_concurrent_delete_gets_429() -> None:
    with running_sandbox(SandboxConfig(latency_ms=1500)) as sandbox:
        bodies: list[object] = [{"identity": f"u{n}"} for n in range(4)]
        statuses = asyncio.run(_concurrently(sandbox.url, DELETE_PATH, bodies))
        stats = sandbox.stats()
    assert sorted(statuses) == [200, 200, 200, 429]
    assert stats.deletions == 3
    assert stats.peak_in_flight["delete"] == 4


def test_latency_delays_the_answer() -> None:
    with (
        running_sandbox(SandboxConfig(latency_ms=250)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        started = time.monotonic()
        assert upload(http, [event("u1")]).status_code == 200
        assert time.monotonic() - started >= 0.25


def test_held_answers_wait_for_the_release_and_the_controls_do_not() -> None:
    with (
        running_sandbox() as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as other,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        assert http.post(HOLD_PATH).status_code == 200
        held = pool.submit(upload, other, [event("u1")])
        # The stats control answers while the upload waits (it would wait behind it).
        while http.get(STATS_PATH).json()["in_flight"]["upload"] == 0:
            assert not held.done(), "the held upload was answered"
        assert not held.done()
        assert http.post(RELEASE_PATH).status_code == 200
        assert held.result(60).status_code == 200
        assert upload(http, [event("u2")]).status_code == 200  # released: no more waiting
        assert sandbox.stats().profiles + sandbox.stats().events == 2


def _statuses(config: SandboxConfig, count: int) -> tuple[list[int], int]:
    with (
        running_sandbox(config) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        statuses = [upload(http, [event(f"u{n}")]).status_code for n in range(count)]
        return statuses, sandbox.stats().events


def test_every_request_faulted_stores_nothing() -> None:
    statuses, events = _statuses(SandboxConfig(fault_rate=1.0, seed=3), 40)
    assert set(statuses) == {429, 500, 503}
    assert events == 0


def test_faults_follow_the_seed() -> None:
    first, first_events = _statuses(SandboxConfig(fault_rate=0.5, seed=7), 40)
    again, again_events = _statuses(SandboxConfig(fault_rate=0.5, seed=7), 40)
    other, _ = _statuses(SandboxConfig(fault_rate=0.5, seed=8), 40)
    assert first == again
    assert first != other
    assert 200 in first and set(first) - {200}
    assert first_events == again_events == first.count(200)


def test_fault_counts_are_in_stats() -> None:
    with (
        running_sandbox(SandboxConfig(fault_rate=0.5, seed=11)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        statuses = [upload(http, [event("u1")]).status_code for _ in range(30)]
        stats = sandbox.stats()
    for status in (429, 500, 503):
        assert stats.faults[str(status)] == statuses.count(status)
    assert stats.faults["drop"] == 0
    assert stats.events == statuses.count(200)


def test_dropped_connections_get_no_answer_and_store_nothing() -> None:
    with running_sandbox(SandboxConfig(drop_rate=1.0)) as sandbox:
        for _ in range(3):
            with (
                httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
                pytest.raises(httpx.TransportError),
            ):
                upload(http, [event("u1")])
        with (
            httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
            pytest.raises(httpx.TransportError),
        ):
            http.post(DELETE_PATH, json={"identity": "u1"})
        # The sandbox's own endpoints are never faulted.
        answer = httpx.get(f"{sandbox.url}/_sandbox/stats", headers=AUTH, timeout=TIMEOUT).json()
    assert answer["faults"]["drop"] == 4
    assert answer["events"] == 0
    assert answer["deletions"] == 0
    assert answer["requests_by_status"] == {}
    assert answer["in_flight"] == {"upload": 0, "delete": 0}


def test_drops_and_faults_mix_by_share() -> None:
    config = SandboxConfig(fault_rate=0.3, drop_rate=0.3, seed=5)
    outcomes: list[str] = []
    with running_sandbox(config) as sandbox:
        for n in range(60):
            try:
                with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http:
                    outcomes.append(str(upload(http, [event(f"u{n}")]).status_code))
            except httpx.TransportError:
                outcomes.append("drop")
        stats = sandbox.stats()
    assert stats.faults["drop"] == outcomes.count("drop") > 0
    assert stats.events == outcomes.count("200") > 0
    assert {"429", "500", "503"} & set(outcomes)


@pytest.mark.parametrize(
    ("fault_rate", "drop_rate"), [(-0.1, 0.0), (1.1, 0.0), (0.0, 2.0), (0.6, 0.6)]
)
def test_rates_out_of_range_are_refused(fault_rate: float, drop_rate: float) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(fault_rate=fault_rate, drop_rate=drop_rate)


# -- faults that store first, and latency drawn from a range --------------------------

# Which answer each fault kind gives, and whether the request was stored before it.
FAULT_KINDS: dict[str, tuple[set[int | str], bool]] = {
    "429": ({429}, False),
    "500": ({500}, False),
    "503": ({503}, False),
    "drop": ({"drop"}, False),
    "stored-500": ({500}, True),
    "stored-504": ({504}, True),
    "stored-drop": ({"drop"}, True),
}


def _send(url: str, records: list[object]) -> int | str:
    """One upload on a fresh connection: its status, or "drop" when no answer came."""
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=TIMEOUT) as http:
            return http.post(UPLOAD_PATH, json={"d": records}).status_code
    except httpx.TransportError:
        return "drop"


def test_every_fault_kind_answers_as_said_and_stores_only_when_it_says_so() -> None:
    config = SandboxConfig(
        fault_rate=0.2, drop_rate=0.15, store_then_fail_rate=0.25, store_then_drop_rate=0.15, seed=4
    )
    seen: set[str] = set()
    with running_sandbox(config) as sandbox:
        for n in range(80):
            before = sandbox.stats().faults
            answer = _send(sandbox.url, [event(f"u{n}")])
            after = sandbox.stats().faults
            [kind] = [k for k in after if after[k] != before[k]] or ["none"]
            stored = len(sandbox.read(partial(SandboxStore.events, identifier=f"u{n}")))
            if kind == "none":
                assert (answer, stored) == (200, 1), n
                continue
            seen.add(kind)
            answers, stores = FAULT_KINDS[kind]
            assert answer in answers, (n, kind, answer)
            assert stored == (1 if stores else 0), (n, kind)
    assert seen == set(FAULT_KINDS)


def test_store_then_fail_keeps_the_records_and_answers_500_or_504() -> None:
    with running_sandbox(SandboxConfig(store_then_fail_rate=1.0, seed=2)) as sandbox:
        statuses = [_send(sandbox.url, [event(f"u{n}"), event(f"u{n}")]) for n in range(30)]
        stats = sandbox.stats()
    assert set(statuses) == {500, 504}
    assert stats.events == stats.records_accepted == 60
    assert stats.faults["stored-500"] == statuses.count(500)
    assert stats.faults["stored-504"] == statuses.count(504)
    assert stats.faults["500"] == stats.faults["503"] == stats.faults["429"] == 0
    assert stats.requests_by_status == {500: statuses.count(500), 504: statuses.count(504)}


def test_store_then_drop_keeps_the_records_and_gives_no_answer() -> None:
    with running_sandbox(SandboxConfig(store_then_drop_rate=1.0)) as sandbox:
        assert [_send(sandbox.url, [event("u1")]) for _ in range(3)] == ["drop"] * 3
        stats = sandbox.stats()
    assert (stats.events, stats.faults["stored-drop"], stats.faults["drop"]) == (3, 3, 0)
    assert stats.requests_by_status == {}
    assert stats.in_flight == {"upload": 0, "delete": 0}


def test_a_delete_that_stores_first_deletes_and_then_fails() -> None:
    config = SandboxConfig(store_then_fail_rate=0.5, store_then_drop_rate=0.5, seed=9)
    with running_sandbox(config) as sandbox:
        sandbox.read(lambda store: store.apply_upload(check_upload([profile("u1", a=1)])))
        outcomes: list[int | str] = []
        for _ in range(4):
            try:
                with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http:
                    outcomes.append(http.post(DELETE_PATH, json={"identity": "u1"}).status_code)
            except httpx.TransportError:
                outcomes.append("drop")
        deletions = sandbox.read(lambda store: store.deletions())
        remaining = sandbox.read(lambda store: store.profile("u1"))
    assert set(outcomes) <= {500, 504, "drop"} and "drop" in outcomes
    assert remaining is None
    assert [(d.value, d.existed) for d in deletions] == [("u1", True)] + [("u1", False)] * 3


def test_a_latency_range_lets_later_requests_overtake_earlier_ones() -> None:
    async def finishing_order(url: str, count: int) -> list[int]:
        done: list[int] = []
        async with httpx.AsyncClient(
            base_url=url, headers=AUTH, timeout=TIMEOUT, limits=httpx.Limits(max_connections=count)
        ) as http:

            async def one(n: int) -> None:
                await asyncio.sleep(n * 0.05)  # sent in order, 50 ms apart
                response = await http.post(UPLOAD_PATH, json={"d": [event(f"u{n}")]})
                assert response.status_code == 200
                done.append(n)

            await asyncio.gather(*(one(n) for n in range(count)))
        return done

    with running_sandbox(SandboxConfig(latency_ms=(20, 600), seed=1)) as sandbox:
        jittered = asyncio.run(finishing_order(sandbox.url, 8))
    with running_sandbox(SandboxConfig(latency_ms=300)) as sandbox:
        fixed = asyncio.run(finishing_order(sandbox.url, 8))
    assert sorted(jittered) == list(range(8)) and jittered != sorted(jittered)
    assert fixed == sorted(fixed)


def test_latency_from_a_range_stays_in_it() -> None:
    with (
        running_sandbox(SandboxConfig(latency_ms=(150, 300), seed=3)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        for _ in range(5):
            started = time.monotonic()
            assert upload(http, [event("u1")]).status_code == 200
            assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize(
    ("fault", "drop", "then_fail", "then_drop"),
    [(0.0, 0.0, 1.5, 0.0), (0.0, 0.0, 0.0, -0.1), (0.3, 0.3, 0.3, 0.2)],
)
def test_store_first_rates_out_of_range_are_refused(
    fault: float, drop: float, then_fail: float, then_drop: float
) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(
            fault_rate=fault,
            drop_rate=drop,
            store_then_fail_rate=then_fail,
            store_then_drop_rate=then_drop,
        )


@pytest.mark.parametrize("latency", [(400, 20), (-1, 5), -3])
def test_a_latency_range_must_run_low_to_high(latency: int | tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(latency_ms=latency)
