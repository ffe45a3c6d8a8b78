"""Fixtures: a sandbox on an ephemeral port of 127.0.0.1 and an httpx client for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ctsync.sandbox import Sandbox, SandboxConfig, running_sandbox

from ._support import AUTH, TIMEOUT


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox(SandboxConfig()) as running:
        yield running


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=TIMEOUT) as http:
        yield http
