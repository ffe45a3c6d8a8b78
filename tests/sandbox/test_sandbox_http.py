"""Requests the sandbox refuses as a whole: credentials, paths, malformed bodies, limits."""

from __future__ import annotations

import socket

import httpx
import orjson
import pytest

from ctsync.sandbox import (
    DELETE_PATH,
    RESET_PATH,
    STATS_PATH,
    UPLOAD_PATH,
    Sandbox,
    SandboxConfig,
    running_sandbox,
)
from ctsync.sandbox._http import MAX_BODY_BYTES, MAX_HEADER_BYTES

from ._support import AUTH, TIMEOUT, delete, event, upload

UNAUTHORIZED = {"status": "fail", "error": "Account ID is not valid", "code": 401}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-CleverTap-Account-Id": "sandbox"},
        {"X-CleverTap-Account-Id": "sandbox", "X-CleverTap-Passcode": "wrong"},
        {"X-CleverTap-Account-Id": "other", "X-CleverTap-Passcode": "sandbox"},
    ],
)
@pytest.mark.parametrize("path", [UPLOAD_PATH, DELETE_PATH])
def test_wrong_credentials_answer_401(sandbox: Sandbox, headers: dict[str, str], path: str) -> None:
    response = httpx.post(
        f"{sandbox.url}{path}", json={"d": [event("u1")]}, headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert sandbox.stats().events == 0


def test_configured_credentials_are_the_only_accepted_ones() -> None:
    config = SandboxConfig(account_id="ACC-1", passcode="secret")
    with running_sandbox(config) as sandbox, httpx.Client(timeout=TIMEOUT) as http:
        url = f"{sandbox.url}{UPLOAD_PATH}"
        body = {"d": [event("u1")]}
        assert http.post(url, json=body, headers=AUTH).status_code == 401
        good = {"X-CleverTap-Account-Id": "ACC-1", "X-CleverTap-Passcode": "secret"}
        assert http.post(url, json=body, headers=good).status_code == 200


def test_unknown_path_is_a_json_404(client: httpx.Client) -> None:
    response = client.post("/1/nothing", json={})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "fail", "error": "Not found", "code": 404}
    assert client.get("/_sandbox/nothing").status_code == 404


def test_get_on_upload_is_405(client: httpx.Client) -> None:
    assert client.get(UPLOAD_PATH).status_code == 405


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[]", b'{"e": []}', b'{"d": {}}', b'{"d": []}', b"null"],
    ids=["malformed", "empty", "array", "no-d", "d-object", "d-empty", "null"],
)
def test_bad_upload_bodies_answer_400(client: httpx.Client, body: bytes) -> None:
    response = client.post(UPLOAD_PATH, content=body)
    assert response.status_code == 400
    assert response.json()["status"] == "fail"
    assert response.json()["code"] == 400


def test_more_than_1000_records_answer_400_and_store_nothing(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    response = upload(client, [event("u1")] * 1001)
    assert response.status_code == 400
    assert "1000" in response.json()["error"]
    assert upload(client, [event("u1")] * 1000).json()["processed"] == 1000
    assert sandbox.stats().events == 1000


@pytest.mark.parametrize(
    "body",
    [
        {"identity": [f"u{n}" for n in range(101)]},
        {"guid": [f"g{n}" for n in range(101)]},
        {"identity": "u1", "guid": "g1"},
        {},
        {"identity": []},
        {"identity": ""},
        {"identity": ["u1", 2]},
    ],
    ids=["101-identities", "101-guids", "both-keys", "no-key", "empty-list", "empty", "number"],
)
def test_bad_deletes_answer_400(client: httpx.Client, sandbox: Sandbox, body: object) -> None:
    response = client.post(DELETE_PATH, json=body)
    assert response.status_code == 400
    assert response.json()["status"] == "fail"
    assert sandbox.stats().deletions == 0


def test_malformed_delete_body_answers_400(client: httpx.Client) -> None:
    assert client.post(DELETE_PATH, content=b"{").status_code == 400


def test_100_ids_is_the_delete_limit(client: httpx.Client) -> None:
    response = delete(client, {"identity": [f"u{n}" for n in range(100)]})
    assert response.json() == {"status": "success", "processed": 100}


def test_keep_alive_serves_many_requests_on_one_connection(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    for n in range(20):
        assert upload(client, [event(f"u{n}")]).status_code == 200
    assert sandbox.stats().events == 20


def test_a_request_that_is_not_http_gets_a_400(sandbox: Sandbox) -> None:
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400")


CONTROLS = [("GET", STATS_PATH), ("POST", RESET_PATH), ("GET", "/_sandbox/nothing")]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-CleverTap-Account-Id": "sandbox"},
        {"X-CleverTap-Account-Id": "sandbox", "X-CleverTap-Passcode": "wrong"},
        {"X-CleverTap-Account-Id": "other", "X-CleverTap-Passcode": "sandbox"},
    ],
)
@pytest.mark.parametrize(("method", "path"), CONTROLS)
def test_the_sandbox_controls_need_the_credentials(
    client: httpx.Client, sandbox: Sandbox, headers: dict[str, str], method: str, path: str
) -> None:
    """Anyone who can reach the port must not read the counters or wipe the data."""
    upload(client, [event("u1")])
    response = httpx.request(method, f"{sandbox.url}{path}", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert sandbox.stats().events == 1  # a refused reset wiped nothing


def test_the_controls_answer_with_the_configured_credentials() -> None:
    config = SandboxConfig(account_id="ACC-1", passcode="secret")
    good = {"X-CleverTap-Account-Id": "ACC-1", "X-CleverTap-Passcode": "secret"}
    assert config.credentials == good
    with running_sandbox(config) as sandbox, httpx.Client(base_url=sandbox.url) as http:
        assert http.get(STATS_PATH, headers=AUTH, timeout=TIMEOUT).status_code == 401
        assert http.get(STATS_PATH, headers=good, timeout=TIMEOUT).json()["events"] == 0
        assert http.post(RESET_PATH, headers=good, timeout=TIMEOUT).status_code == 200


def _answer(sock: socket.socket) -> bytes:
    """Everything the sandbox sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("headers", [AUTH, {}], ids=["authorized", "anonymous"])
def test_a_content_length_over_the_limit_is_413_before_the_body(
    sandbox: Sandbox, headers: dict[str, str]
) -> None:
    """The client announces a body far over the limit and sends one byte of it: the
    answer comes without the sandbox waiting for the rest (the socket's timeout only
    keeps a broken sandbox from hanging the suite)."""
    head = f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: sandbox\r\nContent-Length: {10**12}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=TIMEOUT.read) as sock:
        sock.sendall(head.encode() + b"\r\n{")
        answer = _answer(sock)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in status.lower()
    assert orjson.loads(body)["code"] == 413
    stats = sandbox.stats()
    assert sum(stats.requests_by_endpoint.values()) == 0 and stats.events == 0


def test_a_body_one_byte_under_the_limit_is_still_read(sandbox: Sandbox) -> None:
    """The 413 is for what is over the limit only: at the limit, the body is read (and,
    not being JSON, refused as a bad request)."""
    head = f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: sandbox\r\nContent-Length: {MAX_BODY_BYTES}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in AUTH.items())
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=TIMEOUT.read) as sock:
        sock.sendall(head.encode() + b"\r\n" + b" " * MAX_BODY_BYTES)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 3 * 1024 * 1024])
def test_oversized_headers_get_431_not_a_reset(sandbox: Sandbox, size: int) -> None:
    """A 3 MB header (or one byte over the limit) is answered 431, and the client reads
    that answer instead of losing its connection."""
    headers = {**AUTH, "X-Padding": "p" * size}
    response = httpx.post(
        f"{sandbox.url}{UPLOAD_PATH}", json={"d": [event("u1")]}, headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 431
    assert response.json()["code"] == 431
    assert sandbox.stats().events == 0


def test_headers_under_the_limit_are_read(client: httpx.Client, sandbox: Sandbox) -> None:
    padding = "p" * (MAX_HEADER_BYTES - 2048)  # the rest of the head fits in 2 kB
    response = client.post(UPLOAD_PATH, json={"d": [event("u1")]}, headers={"X-Padding": padding})
    assert response.status_code == 200
    assert sandbox.stats().events == 1


def test_a_client_still_sending_a_huge_head_reads_the_431(sandbox: Sandbox) -> None:
    """A client that writes all of a 3 MB head before it reads (as curl does): the
    sandbox answers early, and then reads what is still coming instead of closing on it
    (which resets the connection, and the client never sees the answer)."""
    head = f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: sandbox\r\nX-Padding: {'p' * 3_000_000}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=TIMEOUT.read) as sock:
        sock.sendall(head.encode())
        sock.shutdown(socket.SHUT_WR)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
