"""The CleverTap client against scripted answers (pytest-httpx): retries, per-record
verdicts, credentials."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import httpx
import orjson
import pytest
from pytest_httpx import HTTPXMock

from ctsync import __version__
from ctsync.client import (
    DELETE_PATH,
    UPLOAD_PATH,
    Attempt,
    CleverTapClient,
    Next,
    Unauthorized,
    classify,
    upload_steps,
)
from ctsync.errors import AuthError
from ctsync.ledger import ACCEPTED, Verdict
from ctsync.prepare import is_idempotent, profile_key
from ctsync.records import CleverTapRecord, Outcome, Stage
from ctsync.settings import ClientSettings
from tests.helpers import ACCOUNT_ID, BASE_URL, PASSCODE

UPLOAD = f"{BASE_URL}/1/upload"
DELETE = f"{BASE_URL}/1/delete/profiles.json"


def profiles(n: int) -> list[CleverTapRecord]:
    return [
        {"type": "profile", "identity": f"u{i}", "ts": 1700000000, "profileData": {"i": i}}
        for i in range(1, n + 1)
    ]


def events(n: int) -> list[CleverTapRecord]:
    return [
        {"type": "event", "identity": f"u{i}", "ts": 1700000000, "evtName": "E", "evtData": {}}
        for i in range(1, n + 1)
    ]


def success(n: int) -> dict[str, object]:
    return {"status": "success", "processed": n, "unprocessed": []}


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def run_upload(
    settings: ClientSettings,
    records: Sequence[CleverTapRecord],
    sleeps: Sleeps | None = None,
    *,
    retry_unknown: bool = False,
    jitter: float = 0.5,
) -> list[Verdict]:
    bodies = [orjson.dumps(r) for r in records]
    keys = [profile_key(r) for r in records]
    resend = [retry_unknown or is_idempotent(r) for r in records]

    async def go() -> list[Verdict]:
        async with CleverTapClient(
            settings, sleep=sleeps or Sleeps(), jitter=lambda: jitter
        ) as client:
            return await client.upload(bodies, keys, resend)

    return asyncio.run(go())


def sent_records(httpx_mock: HTTPXMock) -> list[list[CleverTapRecord]]:
    return [orjson.loads(r.content)["d"] for r in httpx_mock.get_requests()]


def test_request_shape_and_headers(httpx_mock: HTTPXMock, settings: ClientSettings) -> None:
    httpx_mock.add_response(url=UPLOAD, method="POST", json=success(2))
    assert run_upload(settings, profiles(2)) == [ACCEPTED, ACCEPTED]
    (request,) = httpx_mock.get_requests()
    assert request.headers["X-CleverTap-Account-Id"] == ACCOUNT_ID
    assert request.headers["X-CleverTap-Passcode"] == PASSCODE
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["User-Agent"] == f"ctsync/{__version__}"
    assert orjson.loads(request.content) == {"d": profiles(2)}


def test_429_then_200_retries_and_honours_retry_after(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_response(url=UPLOAD, status_code=429, headers={"Retry-After": "7"}, json={})
    httpx_mock.add_response(url=UPLOAD, json=success(3))
    sleeps = Sleeps()
    assert run_upload(settings, profiles(3), sleeps) == [ACCEPTED] * 3
    assert len(httpx_mock.get_requests()) == 2
    assert sleeps.delays == [7.0]


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_after_sending_resends_profiles_but_never_events(
    httpx_mock: HTTPXMock, settings: ClientSettings, status: int
) -> None:
    # CleverTap (or a gateway) may have stored the batch before failing to answer.
    httpx_mock.add_response(url=UPLOAD, status_code=status, text="oops")
    httpx_mock.add_response(url=UPLOAD, json=success(3))
    records = profiles(3)
    assert run_upload(settings, records) == [ACCEPTED] * 3
    first, second = sent_records(httpx_mock)
    assert first == second == records


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_after_sending_leaves_events_unknown(
    httpx_mock: HTTPXMock, settings: ClientSettings, status: int
) -> None:
    httpx_mock.add_response(url=UPLOAD, status_code=status, text="oops")
    verdicts = run_upload(settings, events(3))
    assert len(httpx_mock.get_requests()) == 1
    assert {(v.outcome, v.code) for v in verdicts} == {(Outcome.FAILED, "outcome-unknown")}


def test_retry_unknown_resends_events_after_a_500(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_response(url=UPLOAD, status_code=500, text="oops")
    httpx_mock.add_response(url=UPLOAD, json=success(3))
    assert run_upload(settings, events(3), retry_unknown=True) == [ACCEPTED] * 3
    assert len(httpx_mock.get_requests()) == 2


@pytest.mark.parametrize(("status", "code"), [(503, "503"), (429, "429"), (500, "outcome-unknown")])
def test_gives_up_after_max_retries(
    httpx_mock: HTTPXMock, settings: ClientSettings, status: int, code: str
) -> None:
    for _ in range(settings.retry.max_retries + 1):
        httpx_mock.add_response(url=UPLOAD, status_code=status, json={"error": "busy"})
    sleeps = Sleeps()
    verdicts = run_upload(settings, profiles(2), sleeps, jitter=0.25)
    assert {v.outcome for v in verdicts} == {Outcome.FAILED}
    # After a 500 CleverTap may have stored them: the verdict says so.
    assert {v.code for v in verdicts} == {code}
    assert "gave up after 4 attempts" in verdicts[0].message
    assert len(httpx_mock.get_requests()) == 4
    # Full jitter: a uniform share of a ceiling that doubles each time, capped at
    # max_delay (0.001, 0.002, 0.004 here; the jitter draw is 0.25).
    assert sleeps.delays == pytest.approx([0.25 * 0.001, 0.25 * 0.002, 0.25 * 0.004])


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_never_retried(
    httpx_mock: HTTPXMock, settings: ClientSettings, status: int
) -> None:
    httpx_mock.add_response(url=UPLOAD, status_code=status, json={"status": "fail", "error": "bad"})
    verdicts = run_upload(settings, profiles(2))
    assert len(httpx_mock.get_requests()) == 1
    assert verdicts == [Verdict(Outcome.FAILED, str(status), f"HTTP {status}: bad", Stage.API)] * 2


def test_partial_rejection_is_per_record_and_not_resent(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    record = orjson.dumps(profiles(3)[1]).decode()
    httpx_mock.add_response(
        url=UPLOAD,
        json={
            "status": "success",
            "processed": 2,
            "unprocessed": [
                {
                    "status": "fail",
                    "code": 514,
                    "error": "Profile data is incorrect. Gender needs to be M/F."
                    "Skipped record number : 2",
                    "record": record,
                }
            ],
        },
    )
    verdicts = run_upload(settings, profiles(3))
    assert verdicts[0] is ACCEPTED and verdicts[2] is ACCEPTED
    assert verdicts[1] == Verdict(
        Outcome.REJECTED, "514", "Profile data is incorrect. Gender needs to be M/F.", Stage.API
    )
    assert len(httpx_mock.get_requests()) == 1


def test_401_stops_with_a_message_naming_all_three_suspects(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_response(
        url=UPLOAD,
        status_code=401,
        json={"status": "fail", "error": "Account ID is not valid", "code": 401},
    )
    with pytest.raises(AuthError) as caught:
        run_upload(settings, profiles(1))
    message = str(caught.value)
    assert message == (
        "CleverTap refused the credentials (HTTP 401: Account ID is not valid) "
        f"at {BASE_URL}. Check the account ID ({ACCOUNT_ID}), the passcode, and the region: "
        "a wrong region also answers 401 (the region shows in your dashboard URL, "
        "e.g. in1.dashboard.clevertap.com -> --region in1)."
    )
    assert PASSCODE not in message and PASSCODE not in repr(caught.value)
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize(
    "answer",
    [{}, {"status": "success"}, {"status": "success", "processed": "0"}, {"processed": 0.0}],
)
def test_an_answer_that_confirms_nothing_is_never_counted_as_accepted(
    httpx_mock: HTTPXMock, settings: ClientSettings, answer: dict[str, object]
) -> None:
    httpx_mock.add_response(url=UPLOAD, json=answer)
    verdicts = run_upload(settings, events(2))
    assert {v.code for v in verdicts} == {"outcome-unknown"}
    assert len(httpx_mock.get_requests()) == 1  # events: never sent twice


def test_http_200_with_status_fail_fails_the_whole_batch(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_response(
        url=UPLOAD, json={"status": "fail", "processed": 0, "error": "Payload invalid", "code": 500}
    )
    verdicts = run_upload(settings, profiles(2))
    assert [v.outcome for v in verdicts] == [Outcome.FAILED, Outcome.FAILED]
    assert "Payload invalid" in verdicts[0].message
    assert len(httpx_mock.get_requests()) == 1


def test_code_555_is_retried_once_for_those_records_only(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    transient = {"status": "fail", "code": 555, "error": "Try later. Skipped record number : 2"}
    httpx_mock.add_response(
        url=UPLOAD, json={"status": "success", "processed": 2, "unprocessed": [transient]}
    )
    again = {"status": "fail", "code": 555, "error": "Try later. Skipped record number : 1"}
    httpx_mock.add_response(
        url=UPLOAD, json={"status": "success", "processed": 0, "unprocessed": [again]}
    )
    records = events(3)
    verdicts = run_upload(settings, records)
    assert sent_records(httpx_mock) == [records, [records[1]]]
    assert verdicts[0] is ACCEPTED and verdicts[2] is ACCEPTED
    assert verdicts[1].outcome is Outcome.REJECTED and verdicts[1].code == "555"


def test_lost_answer_is_not_resent_when_events_could_duplicate(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=UPLOAD)
    verdicts = run_upload(settings, events(2))
    assert len(httpx_mock.get_requests()) == 1
    assert {v.code for v in verdicts} == {"outcome-unknown"}
    assert verdicts[0].stage is Stage.TRANSPORT
    assert verdicts[0].message.startswith(
        "ReadTimeout: timed out after the request was sent; CleverTap may or may not"
    )


def test_a_transport_error_without_a_message_still_says_what_happened(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_exception(httpx.ReadError(""), url=UPLOAD)
    (verdict,) = run_upload(settings, events(1))
    assert verdict.message.startswith("ReadError: no detail after the request was sent; ")


def test_lost_answer_is_resent_when_the_batch_is_safe_to_repeat(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_exception(httpx.RemoteProtocolError("Server disconnected"), url=UPLOAD)
    httpx_mock.add_response(url=UPLOAD, json=success(2))
    assert run_upload(settings, profiles(2)) == [ACCEPTED, ACCEPTED]
    assert len(httpx_mock.get_requests()) == 2


def test_increments_are_not_safe_to_repeat(httpx_mock: HTTPXMock, settings: ClientSettings) -> None:
    httpx_mock.add_exception(httpx.ReadError("reset"), url=UPLOAD)
    record = {"type": "profile", "identity": "u1", "profileData": {"visits": {"$incr": 1}}}
    (verdict,) = run_upload(settings, [record])
    assert verdict.code == "outcome-unknown"


def test_connection_refused_is_retried(httpx_mock: HTTPXMock, settings: ClientSettings) -> None:
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=UPLOAD)
    httpx_mock.add_response(url=UPLOAD, json=success(1))
    assert run_upload(settings, events(1)) == [ACCEPTED]


def test_concurrency_stays_within_the_limit(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    state = {"now": 0, "peak": 0}

    async def slow(request: httpx.Request) -> httpx.Response:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1
        return httpx.Response(200, json=success(1))

    httpx_mock.add_callback(slow, url=UPLOAD, is_reusable=True)

    one = [orjson.dumps(profiles(1)[0])]

    async def go() -> None:
        async with CleverTapClient(settings) as client:
            await asyncio.gather(*(client.upload(one, ["u1"], [True]) for _ in range(20)))

    asyncio.run(go())
    assert state["peak"] == settings.upload_concurrency == 4


def test_delete_sends_identities_and_reads_status(
    httpx_mock: HTTPXMock, settings: ClientSettings
) -> None:
    httpx_mock.add_response(url=DELETE, json={"status": "success"})

    async def go() -> list[Verdict]:
        async with CleverTapClient(settings) as client:
            return await client.delete("identity", [b'"a"', b'"b"'], ["a", "b"])

    assert asyncio.run(go()) == [ACCEPTED, ACCEPTED]
    (request,) = httpx_mock.get_requests()
    assert orjson.loads(request.content) == {"identity": ["a", "b"]}


# -- pure classification -------------------------------------------------------------


KEYS2 = ["u1", "u2"]


@pytest.mark.parametrize(
    ("attempt", "path", "step", "code"),
    [
        (Attempt(status=429, content=b"{}"), UPLOAD_PATH, Next.RETRY, "429"),
        (Attempt(status=503, content=b"{}"), UPLOAD_PATH, Next.RETRY, "503"),
        (Attempt(status=408, content=b""), UPLOAD_PATH, Next.RETRY, "408"),
        (Attempt(status=500, content=b"{}"), UPLOAD_PATH, Next.UNKNOWN, "outcome-unknown"),
        (Attempt(status=502, content=b""), UPLOAD_PATH, Next.UNKNOWN, "outcome-unknown"),
        (Attempt(status=504, content=b""), DELETE_PATH, Next.UNKNOWN, "outcome-unknown"),
        (Attempt(status=400, content=b"{}"), UPLOAD_PATH, Next.DONE, "400"),
        (Attempt(status=403, content=b"{}"), UPLOAD_PATH, Next.DONE, "403"),
        (Attempt(status=404, content=b"{}"), DELETE_PATH, Next.DONE, "404"),
        (Attempt(status=200, content=b"<html>"), UPLOAD_PATH, Next.UNKNOWN, "outcome-unknown"),
        (Attempt(status=200, content=b"{}"), UPLOAD_PATH, Next.UNKNOWN, "outcome-unknown"),
        (Attempt(status=200, content=b"{}"), DELETE_PATH, Next.UNKNOWN, "outcome-unknown"),
        (
            Attempt(status=200, content=b'{"status":"success"}'),
            DELETE_PATH,
            Next.DONE,
            "",
        ),
        (
            Attempt(status=200, content=b'{"status":"fail","code":500,"processed":0}'),
            UPLOAD_PATH,
            Next.DONE,
            "500",
        ),
        (
            Attempt(status=200, content=b'{"status":"success","processed":2,"unprocessed":[]}'),
            UPLOAD_PATH,
            Next.DONE,
            "",
        ),
        (
            Attempt(status=200, content=b'{"status":"success","processed":"2"}'),
            UPLOAD_PATH,
            Next.DONE,
            "",
        ),
        (Attempt(error="ConnectError", body_sent=False), UPLOAD_PATH, Next.RETRY, "connection"),
        (Attempt(error="ReadError", body_sent=True), UPLOAD_PATH, Next.UNKNOWN, "outcome-unknown"),
    ],
)
def test_one_table_of_what_each_answer_means(
    attempt: Attempt, path: str, step: Next, code: str
) -> None:
    steps = classify(attempt, path, KEYS2)
    assert not isinstance(steps, Unauthorized)
    assert [(verdict.code, next_step) for verdict, next_step in steps] == [(code, step)] * 2


def test_401_is_the_only_answer_that_stops_the_run() -> None:
    steps = classify(
        Attempt(status=401, content=b'{"error":"Account ID is not valid"}'), UPLOAD_PATH, KEYS2
    )
    assert steps == Unauthorized("Account ID is not valid")


def test_555_is_retried_once_and_other_rejections_are_final() -> None:
    body = {
        "status": "success",
        "processed": 0,
        "unprocessed": [
            {"code": 555, "error": "Try later. Skipped record number : 1"},
            {"code": 514, "error": "Gender. Skipped record number : 2"},
        ],
    }
    steps = upload_steps(body, KEYS2)
    assert [(v.outcome, v.code, n) for v, n in steps] == [
        (Outcome.REJECTED, "555", Next.RETRY_ONCE),
        (Outcome.REJECTED, "514", Next.DONE),
    ]


def test_record_may_be_an_object_and_found_by_identity() -> None:
    records = profiles(3)
    body = {
        "status": "success",
        "processed": 2,
        "unprocessed": [{"code": 516, "error": "Phone invalid", "record": records[2]}],
    }
    steps = upload_steps(body, [profile_key(r) for r in records])
    assert [v.outcome for v, _ in steps] == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.REJECTED]


def test_answers_that_do_not_add_up_confirm_nothing() -> None:
    steps = upload_steps({"status": "success", "processed": 1, "unprocessed": []}, KEYS2)
    assert {(v.code, n) for v, n in steps} == {("outcome-unknown", Next.UNKNOWN)}


def test_timeout_bounds_the_whole_answer_not_each_read(settings: ClientSettings) -> None:
    """A peer that drips one byte every 50 ms, without end, never trips a per-read
    timeout; the attempt as a whole must still end after `timeout` seconds (without the
    overall bound the request would never end, and the guard below would fail it)."""

    async def go() -> list[Verdict]:
        async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            try:
                while True:
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            except (ConnectionError, OSError):
                pass

        server = await asyncio.start_server(drip, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        quick = dataclasses.replace(
            settings,
            base_url=f"http://127.0.0.1:{port}",
            timeout=0.5,
            retry=dataclasses.replace(settings.retry, max_retries=0),
        )
        async with server, CleverTapClient(quick) as client:
            sent = client.upload([orjson.dumps(events(1)[0])], ["u1"], [False])
            return await asyncio.wait_for(sent, 60)  # a guard against a hang, not a measure

    (verdict,) = asyncio.run(go())
    assert verdict.code == "outcome-unknown"
    assert verdict.message.startswith(
        "no complete answer within 0.5 s after the request was sent; "
    )
