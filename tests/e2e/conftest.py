"""Fixtures for end-to-end tests: background ctsync runs that never outlive their test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._support import Processes


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Start ctsync runs in the background; any still running at the end are killed."""
    started = Processes()
    try:
        yield started
    finally:
        started.kill_all()
