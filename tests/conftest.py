"""Shared test helpers: client settings that point nowhere real, and a passcode to hunt.

Across the whole suite, the passcode must appear in none of a test's outputs: what the
CLI printed (Typer's runner), what a ctsync subprocess printed, what pytest captured, and
every file the test's run wrote under its tmp_path. `passcode_never_shown` checks it
after each test; a test that uses another secret adds it to the list it yields.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from typer.testing import CliRunner, Result

from ctsync import redact
from ctsync.run.workers import WorkerPool, start_pool
from ctsync.settings import ClientSettings, RetryPolicy, Secret
from tests.helpers import ACCOUNT_ID, BASE_URL, PASSCODE, QUICK_EXAMPLES, THOROUGH_EXAMPLES

# Two Hypothesis profiles, one per tier: `quick` for `make test` (every property checked at a
# few examples, seconds each) and `thorough` for `make test-all` (CI). A test that needs a
# different count scales it with `tests.helpers.examples`. HYPOTHESIS_PROFILE picks one.
hypothesis_settings.register_profile("quick", max_examples=QUICK_EXAMPLES, deadline=None)
hypothesis_settings.register_profile("thorough", max_examples=THOROUGH_EXAMPLES, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

# Files a test writes on purpose with the passcode in them (the input of --passcode-file).
_PASSCODE_INPUTS = ("passcode",)


@pytest.fixture
def settings() -> ClientSettings:
    return ClientSettings(
        account_id=ACCOUNT_ID,
        passcode=Secret(PASSCODE),
        base_url=BASE_URL,
        concurrency=4,
        retry=RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.01),
    )


@pytest.fixture(scope="session")
def worker_pool() -> Iterator[WorkerPool]:
    """Two worker processes shared by the tests that run many examples with workers (a
    new pool per example spends most of its time starting interpreters). Tests that kill
    workers start their own."""
    pool = start_pool(2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


# The whole suite runs in a time zone that is not UTC, so that a date read as local time
# instead of UTC fails somewhere (on a UTC machine the two agree). Subprocesses inherit it.
SUITE_TZ = "America/Los_Angeles"


@pytest.fixture(autouse=True)
def not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test under `SUITE_TZ` (a test may switch zones with `in_zone`)."""
    monkeypatch.setenv("TZ", SUITE_TZ)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(autouse=True)
def no_credentials_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the CLEVERTAP_ variables of the shell that started pytest. Typer's runner
    only lays a test's `env` over this process's environment (`clean_env()` drops them
    for a subprocess alone): without this, a run in the runner would see them."""
    for name in [name for name in os.environ if name.startswith("CLEVERTAP_")]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def passcode_never_shown(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Fail the test if a hunted passcode shows in anything it made ctsync write."""
    hunted = [PASSCODE]
    outputs: list[tuple[str, bytes]] = []
    tmp_path: Path | None = (
        request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    )
    invoke = CliRunner.invoke
    communicate = subprocess.Popen.communicate

    def invoke_and_keep(self: CliRunner, *args: Any, **kwargs: Any) -> Result:
        result = invoke(self, *args, **kwargs)
        outputs.append(("CliRunner stdout", result.stdout_bytes))
        outputs.append(("CliRunner stderr", result.stderr_bytes or b""))
        return result

    def communicate_and_keep(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        out, err = communicate(self, *args, **kwargs)
        for name, data in (("subprocess stdout", out), ("subprocess stderr", err)):
            if data:
                outputs.append((name, data if isinstance(data, bytes) else data.encode()))
        return out, err

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CliRunner, "invoke", invoke_and_keep)
        patch.setattr(subprocess.Popen, "communicate", communicate_and_keep)
        yield hunted
    redact.forget_all()  # the next test starts with no passcode registered
    if tmp_path is not None:
        for path in sorted(tmp_path.rglob("*")):
            if path.is_file() and not any(word in path.name for word in _PASSCODE_INPUTS):
                outputs.append((str(path), path.read_bytes()))
    for secret in hunted:
        for where, data in outputs:
            assert secret.encode() not in data, f"the passcode shows in {where}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """What pytest captured of the test's own stdout, stderr and logs is an output too."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "call" and report.passed:
        captured = report.capstdout + report.capstderr + report.caplog
        if PASSCODE in captured:
            report.outcome = "failed"
            report.longrepr = f"the passcode shows in what {item.nodeid} printed"
