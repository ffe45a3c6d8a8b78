"""Constants and small builders shared by tests."""

from __future__ import annotations

import httpx
import orjson

PASSCODE = "pc-S3CRET-0d9f"
ACCOUNT_ID = "TEST-ACC-123"
BASE_URL = "https://eu1.api.clevertap.com"


def confirm_every_record(request: httpx.Request) -> httpx.Response:
    """CleverTap's answer to an upload it took whole: every record of `d` processed."""
    records = orjson.loads(request.content)["d"]
    return httpx.Response(200, json={"status": "success", "processed": len(records)})
