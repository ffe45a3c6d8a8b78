"""Shared test helpers: client settings that point nowhere real, and a passcode to hunt."""

from __future__ import annotations

import pytest

from ctsync.settings import ClientSettings, RetryPolicy, Secret
from tests.helpers import ACCOUNT_ID, BASE_URL, PASSCODE


@pytest.fixture
def settings() -> ClientSettings:
    return ClientSettings(
        account_id=ACCOUNT_ID,
        passcode=Secret(PASSCODE),
        base_url=BASE_URL,
        concurrency=4,
        retry=RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.01),
    )
