"""Helpers for the sandbox tests: credentials and record builders."""

from __future__ import annotations

from typing import Any

import httpx

from ctsync.sandbox import DELETE_PATH, UPLOAD_PATH

AUTH = {"X-CleverTap-Account-Id": "sandbox", "X-CleverTap-Passcode": "sandbox"}
TIMEOUT = httpx.Timeout(10.0)


def upload(
    client: httpx.Client, records: list[Any], *, params: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(UPLOAD_PATH, json={"d": records}, params=params)


def delete(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post(DELETE_PATH, json=body)


def event(identity: str, name: str = "Product Viewed", **fields: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "identity": identity,
        "ts": 1709632800,
        "evtName": name,
        "evtData": {"sku": "A1"},
        **fields,
    }


def profile(identity: str, **data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": identity, "ts": 1709632800, "profileData": data}
