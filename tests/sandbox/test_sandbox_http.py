"""Requests the sandbox refuses as a whole: credentials, paths, malformed bodies, limits."""

from __future__ import annotations

import socket

import httpx
import pytest

from ctsync.sandbox import DELETE_PATH, UPLOAD_PATH, Sandbox, SandboxConfig, running_sandbox

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
