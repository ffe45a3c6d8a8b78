"""The README's code runs as written.

Its Python blocks run against a `ctsync sandbox` on 127.0.0.1; each `console` example
that needs no CleverTap account runs in a directory holding the files it names. Every
console example is classified here, so a new one cannot go untested unnoticed.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from ctsync.cli import app
from ctsync.sandbox import running_sandbox
from tests.helpers import assert_exit, clean_env

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = ROOT / ".venv" / "bin"
SANDBOX_BLOCK = "ctsync sandbox --port 8787 --db rehearsal.db &"

# Console examples that run, with the exit code they must end with (1: the samples hold
# a few bad records on purpose, and the dry run says so).
RUNS = {
    ".venv/bin/ctsync upload samples/segment-export.ndjson.gz --dry-run": 1,
    ".venv/bin/ctsync upload samples/segment-export.ndjson.gz --dry-run --output "
    "requests.ndjson --json": 1,
    ".venv/bin/ctsync --help          # also: python -m ctsync": 0,
    "gunzip -c export.ndjson.gz | ctsync upload --dry-run --json | jq .accepted": 0,
    "ctsync upload export.ndjson --dry-run --output - 2>/dev/null | head -c 300   "
    "# see the bodies": 0,
    "make demo     # installs into .venv, starts a local CleverTap sandbox, uploads "
    "samples/ to it": 0,
}

# Examples that do not run here, and why.
NOT_RUN = {
    "ctsync upload segment-logs/2026-11-24/ --state ctsync.state --report errors.ndjson": (
        "sends to CleverTap: needs an account"
    ),
    "ctsync delete --from gdpr-requests.txt": "deletes in CleverTap: needs an account",
    "jq -c 'select(.type == \"identify\")' export.ndjson | ctsync upload -": (
        "sends to CleverTap: needs an account"
    ),
    "make test     # the quality gate (ruff, mypy --strict, pytest's fast tier); adds the tools "
    "to .venv": ("runs this test suite itself"),
    "export CLEVERTAP_ACCOUNT_ID=W9R-486-4W5Z CLEVERTAP_REGION=in1": "an account",
    "export CLEVERTAP_PASSCODE=...          # or --passcode-file, never --passcode in cron": (
        "an account"
    ),
    ".venv/bin/ctsync upload samples/segment-export.ndjson.gz --report errors.ndjson": (
        "sends to CleverTap: needs an account"
    ),
    "python3 -m venv .venv && .venv/bin/pip install -e .      # or: make venv": (
        "installs from PyPI"
    ),
    "ctsync delete --identity u-123 --identity u-456": "deletes in CleverTap: an account",
    "ctsync delete --from gdpr.txt                 # one identity per line; `-` reads stdin": (
        "deletes in CleverTap: an account"
    ),
    "ctsync delete --guid --from clevertap-ids.txt # CleverTap IDs (objectId) instead": (
        "deletes in CleverTap: an account"
    ),
    SANDBOX_BLOCK: "run whole by test_the_sandbox_example_runs",
    "CLEVERTAP_ACCOUNT_ID=sandbox CLEVERTAP_PASSCODE=sandbox ctsync upload export.ndjson.gz "
    "--endpoint http://127.0.0.1:8787": "run whole by test_the_sandbox_example_runs",
    "ctsync sandbox show --db rehearsal.db": "run whole by test_the_sandbox_example_runs",
    "jq -c '.[] | select(.type == \"identify\")' users.json | ctsync upload - --report "
    "errors.ndjson": "sends to CleverTap: needs an account",
    "cut -f1 unsubscribed.tsv | ctsync delete --from - --json": "deletes: an account",
    "make test      # ruff, ruff format --check, mypy --strict, pytest's fast tier": (
        "runs this test suite itself"
    ),
    "make test-all  # the same with pytest's slow tier too: what CI runs (.ci/run)": (
        "runs this test suite itself"
    ),
    "make bench     # throughput and memory, printed and written to bench/results.md": (
        "minutes of benchmark"
    ),
    "ctsync upload s3://acme-segment/segment-logs/Xa1b2/1732579200000/ --dry-run": (
        "needs a bucket and its credentials; tests/test_buckets.py runs the same against a local S3"
    ),
    "ctsync upload s3://acme-segment/segment-logs/Xa1b2/ --dry-run --json": (
        "needs a bucket and its credentials; tests/test_buckets.py runs the same against a local S3"
    ),
    "ctsync upload s3://acme-segment/segment-logs/Xa1b2/ --since 2024-03-01 --until 2024-04-01 "
    "--state march.db --report march.report.ndjson --failed march.failed.ndjson --json": (
        "needs a bucket, its credentials and an account; tests/test_buckets.py runs a "
        "window over a local S3"
    ),
    "ctsync delete --from s3://acme/gdpr.txt.gz    # read like exports: gzip, BOM, CRLF, buckets": (
        "needs a bucket; tests/test_buckets.py reads --from a local S3"
    ),
    "ctsync delete --from s3://acme/gdpr/          # every list under the prefix": (
        "needs a bucket; tests/test_buckets.py reads --from a prefix of a local S3"
    ),
    "pip install 'ctsync[s3]'      # boto3;  'ctsync[gcs]' for google-cloud-storage": (
        "installs from PyPI; make test installs both extras"
    ),
    "make soak      # the long fault soak (bench/soak.py); a small one runs in make test-all": (
        "minutes of kills and faults; its small version is tests/e2e/test_soak.py"
    ),
    "make mutate    # mutation testing of the core modules (mutmut; slow, not in make test)": (
        "tens of minutes per module; the score it printed is in the README"
    ),
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def console_commands() -> list[str]:
    """Each `$ ` command of the console blocks, with `\\` continuations joined."""
    commands: list[str] = []
    for block in blocks("console"):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            if line.startswith("$ "):
                commands.append(line[2:])
    return commands


def environment(**extra: str) -> dict[str, str]:
    env = clean_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NO_PROXY"] = "*"
    env.update(extra)
    return env


def run_bash(command: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one of the README's console lines with bash, as a reader would, in `cwd`."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with what the examples name: the samples, the venv, export files."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    export = gzip.decompress((ROOT / "samples" / "segment-export.ndjson.gz").read_bytes())
    (tmp_path / "export.ndjson").write_bytes(export)
    (tmp_path / "export.ndjson.gz").write_bytes(gzip.compress(export))
    return tmp_path


def test_every_console_example_is_run_or_says_why_not() -> None:
    commands = console_commands()
    assert commands, "the README has console examples"
    unclassified = [c for c in commands if c not in RUNS and c not in NOT_RUN]
    assert not unclassified, f"classify these README examples in {__file__}: {unclassified}"


@pytest.mark.parametrize("command", list(RUNS), ids=lambda c: c.split("#")[0].strip()[:60])
def test_console_example_runs(command: str, workdir: Path) -> None:
    assert command in console_commands(), "the README no longer has this example"
    expected = RUNS[command]
    if command.startswith("make "):  # the README's own tree; the venv exists already
        cwd, command = ROOT, command.replace("make ", "make -o .venv/bin/ctsync ", 1)
    else:
        cwd = workdir
    result = run_bash(command, cwd)
    assert result.returncode == expected, result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
    assert result.stdout or result.stderr


def test_the_sandbox_example_runs(workdir: Path) -> None:
    """The rehearsal block, with a free port instead of 8787 (which may be taken)."""
    block = next(b for b in blocks("console") if SANDBOX_BLOCK in b)
    lines = [line.removeprefix("$ ") for line in re.sub(r"\\\n\s*", "", block).splitlines()]
    start, upload, show = lines
    sandbox = subprocess.Popen(
        ["bash", "-c", "exec " + start.rstrip(" &").replace("8787", "0")],
        cwd=workdir,
        env=environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        url = sandbox.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        uploaded = run_bash(upload.replace("http://127.0.0.1:8787", url), workdir)
        assert uploaded.returncode == 1, uploaded.stderr  # the sample's few bad records
        assert "accepted" in uploaded.stderr
    finally:
        sandbox.terminate()
        sandbox.communicate(timeout=30)
    shown = run_bash(show, workdir, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "profiles" in shown.stdout and "events" in shown.stdout


@pytest.mark.parametrize("block", blocks("python"), ids=lambda b: b.splitlines()[0][:40])
def test_python_block_runs_against_the_sandbox(block: str) -> None:
    """As written, with the environment a reader sets, pointed at a local sandbox."""
    with running_sandbox() as sandbox:
        result = subprocess.run(
            [sys.executable, "-c", block],
            cwd=ROOT,
            env=environment(
                CLEVERTAP_ACCOUNT_ID="sandbox",
                CLEVERTAP_PASSCODE="sandbox",
                CLEVERTAP_ENDPOINT=sandbox.url,
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        stats = sandbox.stats()
    assert result.returncode == 0, result.stderr
    assert stats.profiles > 0, "the snippet sent to the sandbox"


def test_the_json_examples_are_json() -> None:
    for block in blocks("json"):
        orjson.loads(block)


def test_the_exit_code_table_matches_the_code() -> None:
    from ctsync.errors import ExitCode

    table = README[README.index("## Exit codes") :]
    table = table[: table.index("\n\n", table.index("| code |"))]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


def _help_options(*command: str) -> set[str]:
    # 78: Click's layout at an 80-column terminal (the runner's own would be 80 wide).
    result = CliRunner().invoke(
        app, [*command, "--help"], env=environment(COLUMNS="80"), terminal_width=78
    )
    assert_exit(result, 0)
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout))
    return options - {"--help"}


def _table_options(heading: str) -> set[str]:
    section = README[README.index(heading) :]
    section = section[section.index("| option |") :]
    table = section[: section.index("\n\n")]
    cells = re.findall(r"`([^`]*)`", table)
    return {option for cell in cells for option in re.findall(r"(--[a-z][a-z0-9-]*)", cell)}


def test_the_upload_options_table_matches_help() -> None:
    assert _table_options("### `ctsync upload") == _help_options("upload")


def test_the_delete_options_match_help() -> None:
    """The delete table lists its own options; the text names those shared with upload
    (`--account-id` to `--timeout` as in upload's table, then the outputs). Together
    they are exactly `ctsync delete --help`'s."""
    section = README[README.index("### `ctsync delete`") : README.index("### `ctsync sandbox`")]
    cells = re.findall(r"`([^`]*)`", section)
    named = {option for cell in cells for option in re.findall(r"(--[a-z][a-z0-9-]*)", cell)}
    upload = README[README.index("### `ctsync upload") : README.index("### `ctsync delete`")]
    order = re.findall(r"^\| `(--[a-z][a-z0-9-]*)", upload, flags=re.MULTILINE)
    shared = order[order.index("--account-id") : order.index("--timeout") + 1]
    assert named | set(shared) == _help_options("delete")


def test_the_sandbox_options_match_help() -> None:
    text = README[README.index("### `ctsync sandbox`") : README.index("### `ctsync mappings`")]
    named = set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
    assert named - {"--endpoint"} <= _help_options("sandbox") | {"--db"}
