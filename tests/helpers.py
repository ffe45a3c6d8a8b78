"""Constants and small builders shared by tests."""

from __future__ import annotations

import httpx
import orjson

from ctsync.ledger import Summary

PASSCODE = "pc-S3CRET-0d9f"
ACCOUNT_ID = "TEST-ACC-123"
BASE_URL = "https://eu1.api.clevertap.com"


def confirm_every_record(request: httpx.Request) -> httpx.Response:
    """CleverTap's answer to an upload it took whole: every record of `d` processed."""
    records = orjson.loads(request.content)["d"]
    return httpx.Response(200, json={"status": "success", "processed": len(records)})


def settled(summary: Summary) -> int:
    """How many records have an outcome, summed from the summary's JSON counts: an
    independent check of the accounting (never `Summary.balanced`, the code under test)."""
    counts = summary.as_dict()
    return sum(counts[k] for k in ("skipped", "invalid", "accepted", "rejected", "failed"))


def assert_accounted(summary: Summary) -> None:
    """Every record read has exactly one outcome: read = skipped + invalid + accepted +
    rejected + failed, and each count is its breakdown's total."""
    counts = summary.as_dict()
    for name in ("skipped", "invalid", "rejected", "failed"):
        by = "reason" if name == "skipped" else "code"
        assert counts[name] == sum(counts[f"{name}_by_{by}"].values()), name
    assert settled(summary) == counts["read"], counts
