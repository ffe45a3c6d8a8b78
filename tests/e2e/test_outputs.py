"""End to end: refused credentials exit 3 without showing the passcode anywhere, and the
dead-letter file holds the original lines of the records that did not go through."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctsync.sandbox import SandboxConfig, running_sandbox
from tests.helpers import PASSCODE

from ._support import (
    Message,
    assert_adds_up,
    ctsync_env,
    dead_letters,
    identify,
    read_ndjson,
    run_upload,
    write_export,
)

RIGHT_PASSCODE = "right-PASS-77aa"
RIGHT_ACCOUNT = "ACC-RIGHT-1"


@pytest.mark.parametrize(
    ("account_id", "passcode"),
    [(RIGHT_ACCOUNT, PASSCODE), ("ACC-WRONG-2", RIGHT_PASSCODE)],
    ids=["wrong-passcode", "wrong-account"],
)
def test_refused_credentials_exit_3_and_the_passcode_shows_nowhere(
    tmp_path: Path, account_id: str, passcode: str
) -> None:
    export = tmp_path / "export.ndjson"
    write_export(export, [identify(f"u-{i}", n=i) for i in range(300)])
    report, failed = tmp_path / "report.ndjson", tmp_path / "failed.ndjson"

    config = SandboxConfig(account_id=RIGHT_ACCOUNT, passcode=RIGHT_PASSCODE, latency_ms=5)
    with running_sandbox(config) as sandbox:
        run = run_upload(
            sandbox.url,
            export,
            "--batch-size",
            "50",
            "--report",
            report,
            "--failed",
            failed,
            env=ctsync_env(account_id, passcode),
        )
        stats = sandbox.stats()

    assert run.returncode == 3, run.describe()
    assert "refused the credentials" in run.stderr
    assert account_id in run.stderr  # the account ID is a suspect worth naming
    assert "Traceback" not in run.stderr
    assert stats.requests_by_status.get(401, 0) >= 1
    assert stats.records_accepted == 0 and stats.profiles == 0
    # Nothing went through, and the report and dead letters account for every record.
    assert len(read_ndjson(report)) == len(dead_letters(failed)) == 300
    outputs = {
        "stdout": run.stdout,
        "stderr": run.stderr,
        "report": report.read_text() if report.exists() else "",
        "failed": failed.read_text() if failed.exists() else "",
    }
    for name, text in outputs.items():
        assert passcode not in text, f"the passcode shows in {name}"
        assert RIGHT_PASSCODE not in text, f"the sandbox's passcode shows in {name}"


def test_dead_letters_are_the_original_lines_and_can_be_fixed_and_uploaded(
    tmp_path: Path,
) -> None:
    good = [identify(f"u-{i}", n=i, Phone="+14155550100") for i in range(120)]
    # Each bad line as written (odd spacing, escapes, UTF-8: never re-encoded by ctsync),
    # and the same line fixed.
    bad = {
        b'{ "type" : "identify", "userId": "u-phone", "traits": {"Phone": "12345",'
        b' "city": "K\xc3\xb6ln"} }': b'{ "type" : "identify", "userId": "u-phone",'
        b' "traits": {"Phone": "+4915112345", "city": "K\xc3\xb6ln"} }',
        b'{"type":"identify","userId":"u-mail","traits":{"Email":"nope","n":"\\u00e9"}}': (
            b'{"type":"identify","userId":"u-mail","traits":{"Email":"a@example.com"}}'
        ),
        b'{"type":"identify","traits":{"name":"no user id"}}': (
            b'{"type":"identify","userId":"u-anon","traits":{"name":"no user id"}}'
        ),
        b'{"type": "identify", "userId": "u-json", "traits": {"n": 1}': (
            b'{"type": "identify", "userId": "u-json", "traits": {"n": 1}}'
        ),
    }
    lines: list[bytes | Message] = list(good)
    for offset, line in enumerate(bad):
        lines.insert(10 + 30 * offset, line)
    export = tmp_path / "export.ndjson"
    written = write_export(export, lines)
    report, failed = tmp_path / "report.ndjson", tmp_path / "failed.ndjson"

    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:
        run = run_upload(
            sandbox.url, export, "--batch-size", "25", "--report", report, "--failed", failed
        )
        assert run.returncode == 1, run.describe()
        summary = run.summary
        assert_adds_up(summary)
        assert summary["accepted"] == 120
        assert summary["invalid_by_code"] == {"516": 1, "515": 1, "523": 1, "malformed-json": 1}

        # Byte for byte: every record that did not go through, and nothing else.
        letters = dead_letters(failed)
        assert sorted(letters) == sorted(bad)
        entries = read_ndjson(report)
        assert sorted(written[e["line"] - 1] for e in entries) == sorted(bad)

        # The dead-letter file reads back as the same records, with the same faults.
        dry = run_upload(sandbox.url, failed, "--dry-run")
        assert dry.returncode == 1, dry.describe()
        assert dry.summary["read"] == 4
        assert dry.summary["invalid_by_code"] == summary["invalid_by_code"]

        # Fixed, it uploads: exactly those four records.
        repaired = tmp_path / "repaired.ndjson"
        repaired.write_bytes(b"".join(bad[line] + b"\n" for line in letters))
        again = run_upload(sandbox.url, repaired, "--failed", tmp_path / "failed-again.ndjson")
        writes = sandbox.read(lambda store: store.profile_writes())

    assert again.returncode == 0, again.describe()
    assert again.summary["accepted"] == 4
    assert dead_letters(tmp_path / "failed-again.ndjson") == []
    assert writes == {f"u-{i}": 1 for i in range(120)} | {
        "u-phone": 1,
        "u-mail": 1,
        "u-anon": 1,
        "u-json": 1,
    }
