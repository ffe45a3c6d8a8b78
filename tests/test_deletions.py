"""`ctsync delete` over inputs that name a profile more than once (issue 22).

CleverTap's delete takes identities (or CleverTap IDs), 100 per request, and deletes
irreversibly (clevertap-api.md): the same value twice in one input is one profile, deleted
once; the repeat is counted as skipped `duplicate-identity`, so the summary still adds up.
"""

from __future__ import annotations

import http.server
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ctsync.cli import app
from tests.helpers import clean_env, serving

runner = CliRunner()


def dry_run_delete(
    tmp_path: Path, lines: list[str], *flags: str
) -> tuple[dict[str, Any], list[str]]:
    """The `--json` summary and every value sent of a dry-run `ctsync delete --from`
    (flags may add `--identity` values)."""
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{line}\n" for line in lines))
    out = tmp_path / "requests.ndjson"
    result = runner.invoke(
        app,
        ["delete", *flags, "--from", str(ids), "--dry-run", "--json", "--output", str(out)],
        env=clean_env(),
    )
    assert result.exit_code == 0, result.output
    key = "guid" if "--guid" in flags else "identity"
    bodies = [orjson.loads(line)["body"][key] for line in out.read_bytes().splitlines()]
    return orjson.loads(result.stdout), [value for body in bodies for value in body]


def test_an_identity_named_twice_is_deleted_once_and_skipped_once(tmp_path: Path) -> None:
    summary, sent = dry_run_delete(tmp_path, ["u1", "u2", "u1", " u2 ", "u3"])
    assert sorted(sent) == ["u1", "u2", "u3"]
    assert summary["read"] == 5
    assert summary["accepted"] == 3
    assert summary["skipped"] == 2
    assert summary["skipped_by_reason"] == {"duplicate-identity": 2}


def test_guids_are_deduplicated_too_and_case_is_kept_apart(tmp_path: Path) -> None:
    # CleverTap IDs and identities are compared as written: "G1" is not "g1".
    summary, sent = dry_run_delete(tmp_path, ["g1", "G1", "g1"], "--guid")
    assert sorted(sent) == ["G1", "g1"]
    assert summary["skipped_by_reason"] == {"duplicate-identity": 1}


def test_flags_and_file_share_one_input(tmp_path: Path) -> None:
    summary, sent = dry_run_delete(tmp_path, ["u1", "u2"], "--identity", "u1")
    assert sorted(sent) == ["u1", "u2"]
    assert summary["skipped_by_reason"] == {"duplicate-identity": 1}


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3", "U1", "x y"]), st.sampled_from(["", " ", "\t"])
        ),
        min_size=1,
        max_size=250,
    )
)
def test_every_distinct_identity_is_deleted_exactly_once(
    tmp_path: Path, picks: list[tuple[str, str]]
) -> None:
    lines = [pad + value + pad for value, pad in picks]
    distinct = {value for value, _ in picks}  # by hand: blanks around a line are not part of it
    summary, sent = dry_run_delete(tmp_path, lines)
    assert sorted(sent) == sorted(distinct)
    assert summary["read"] == len(lines)
    assert summary["accepted"] == len(distinct)
    repeats = len(lines) - len(distinct)
    assert summary["skipped_by_reason"] == ({"duplicate-identity": repeats} if repeats else {})
    assert summary["invalid"] == summary["failed"] == summary["rejected"] == 0


def test_at_a_terminal_the_question_counts_each_profile_once(tmp_path: Path) -> None:
    from ctsync.sandbox import running_sandbox
    from tests.test_cli import Terminal

    ids = tmp_path / "gdpr.txt"
    ids.write_text("u-1\nu-2\nu-1\n u-2\n")
    with running_sandbox() as sandbox:
        env = {**clean_env(), "CLEVERTAP_ACCOUNT_ID": "sandbox", "CLEVERTAP_PASSCODE": "sandbox"}
        env["NO_PROXY"] = "*"
        term = Terminal("delete", "--from", str(ids), "--endpoint", sandbox.url, env=env)
        term.expect("deletes the CleverTap profiles of 2 identities")
        term.type(b"y\n")
        assert term.wait() == 0
        assert sandbox.read(lambda store: store.counts().deletions) == 2


class _RefusesEverything(http.server.BaseHTTPRequestHandler):
    """A CleverTap that answers every request with 400 (as it does to a malformed one)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"status":"fail","error":"Bad request","code":400}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_refused_deletions_are_reported_by_identity_and_their_dead_letters_re_drive(
    tmp_path: Path,
) -> None:
    # A deletion's input line is an identity, not JSON: its report line names the identity
    # and its dead letter is the line as given, so `--from failed.txt` deletes it again.
    ids = tmp_path / "ids.txt"
    ids.write_text("u1\n  u2\n")
    report, failed = tmp_path / "report.ndjson", tmp_path / "failed.txt"
    outputs = ["--json", "--report", str(report), "--failed", str(failed)]
    with serving(_RefusesEverything) as url:
        result = runner.invoke(
            app,
            ["delete", "--from", str(ids), "--identity", "u3", "--endpoint", url, *outputs],
            env=clean_env(CLEVERTAP_ACCOUNT_ID="TEST-1", CLEVERTAP_PASSCODE="secret-passcode"),
        )
    assert result.exit_code == 1, result.output
    summary = orjson.loads(result.stdout)
    # A whole request refused (400) fails every record in it, under the answer's status.
    assert (summary["read"], summary["accepted"], summary["failed"]) == (3, 0, 3)
    assert summary["failed_by_code"] == {"400": 3}
    lines = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    assert sorted((line["source"], line["line"], line["identity"]) for line in lines) == [
        ("--identity", 1, "u3"),
        (str(ids), 1, "u1"),
        (str(ids), 2, "u2"),
    ]
    assert sorted(failed.read_text().splitlines()) == ["u1", "u2", "u3"]
