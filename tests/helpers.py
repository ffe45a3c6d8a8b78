"""Constants and small builders shared by tests."""

from __future__ import annotations

PASSCODE = "pc-S3CRET-0d9f"
ACCOUNT_ID = "TEST-ACC-123"
BASE_URL = "https://eu1.api.clevertap.com"
