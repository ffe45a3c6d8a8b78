"""`ctsync mappings show` and `check`, run through Typer's runner against the sub-app."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ctsync.cli import app as ctsync_app
from ctsync.mapping import preset_as_mapping
from ctsync.mapping.cli import app
from tests.helpers import TOKEN_SUBSCRIPTION, clean_env

runner = CliRunner()


def test_show_prints_the_actions_preset_by_default() -> None:
    result = runner.invoke(app, ["show"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == preset_as_mapping("actions")


def test_show_classic_is_a_starting_point_that_check_accepts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["show", "--preset", "classic"])
    assert result.exit_code == 0
    path = tmp_path / "classic.json"
    path.write_text(result.stdout)
    checked = runner.invoke(app, ["check", str(path)])
    assert checked.exit_code == 0
    assert "8 subscriptions, 8 enabled: OK" in checked.stdout


def test_show_rejects_an_unknown_preset() -> None:
    result = runner.invoke(app, ["show", "--preset", "nope"])
    assert result.exit_code == 2


def test_check_reports_a_syntax_error_with_subscription_and_column(tmp_path: Path) -> None:
    document = preset_as_mapping("actions")
    document["subscriptions"][1]["trigger"] = 'event = "Delete User" or'
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2  # as `upload --mapping` says of the same file
    assert (
        f"{path}: subscription 'Event Name is Delete User': trigger column 25: expected a field"
        in result.stderr
    )


def test_check_with_events_shows_what_fires_and_the_records(tmp_path: Path) -> None:
    path = tmp_path / "actions.json"
    path.write_text(json.dumps(preset_as_mapping("actions")))
    events = tmp_path / "events.ndjson"
    lines = [
        {"type": "identify", "userId": "u1", "timestamp": "2023-05-18T22:58:45Z", "traits": {}},
        {"type": "track", "userId": "u1", "event": "Delete User"},
        {"type": "page", "userId": "u1"},
        {"type": "identify", "traits": {}},
        {"type": "identify", "userId": "u2", "traits": {"Gender": "x"}},
    ]
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = runner.invoke(app, ["check", str(path), str(events)])
    # Lines 4 (no identity) and 5 (Gender x) would be refused by `ctsync upload`.
    assert result.exit_code == 1, result.output
    out = result.stdout.splitlines()
    assert out[1:4] == [
        "line 1: fires: Event Type is Identify",
        '  upload {"type":"profile","identity":"u1","ts":1684450725,"profileData":{}}',
        "line 2: fires: Event Name is Delete User",
    ]
    assert out[4] == "  delete identity u1"
    assert out[5:7] == ["line 3: fires: (none)", "  skipped: page"]
    assert out[7:9] == [
        "line 4: fires: Event Type is Identify",
        "  invalid 523: no identity: userId is missing or empty",
    ]
    assert out[-1].startswith("    rule 514: Gender 'x' is invalid")


def test_check_shows_a_device_token_once_as_a_run_sends_it(tmp_path: Path) -> None:
    """The mapper makes a message's token record every time; `check` shows it the first
    time only, and a message whose only record is a token sent already as skipped."""
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"subscriptions": [TOKEN_SUBSCRIPTION]}))
    events = tmp_path / "events.ndjson"
    line = {"type": "track", "anonymousId": "a1", "context": {"device": {"token": "t1"}}}
    events.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    result = runner.invoke(app, ["check", str(path), str(events)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "line 1: fires: token",
        '  upload {"type":"token","objectId":"a1","tokenData":{"id":"t1","type":"fcm"}}',
        "line 2: fires: token",
        "  skipped: token already sent",
    ]


def test_check_and_upload_agree_on_a_token_sent_already_with_a_refused_type(
    tmp_path: Path,
) -> None:
    """A message whose token went out already is still checked, as `upload` checks it
    (found by review: `check` passed a token type that `upload` refused, 534)."""
    token = {**TOKEN_SUBSCRIPTION, "mapping": {**TOKEN_SUBSCRIPTION["mapping"]}}
    token["mapping"]["type"] = {"@path": "$.context.device.ttype"}
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"subscriptions": [token]}))
    events = tmp_path / "events.ndjson"
    lines = [
        {"type": "track", "anonymousId": "a1", "context": {"device": {"token": "t1", "ttype": t}}}
        for t in ("fcm", "bad")
    ]
    events.write_text("".join(json.dumps(each) + "\n" for each in lines))
    checked = runner.invoke(app, ["check", str(path), str(events)])
    assert checked.exit_code == 1, checked.output
    out = checked.stdout.splitlines()
    assert out[3:5] == [
        "line 2: fires: token",
        '  token sent already, not again {"type":"token","objectId":"a1",'
        '"tokenData":{"id":"t1","type":"bad"}}',
    ]
    assert out[5].startswith("    rule 534: ")
    args = ["upload", str(events), "--mapping", str(path), "--dry-run", "--json"]
    uploaded = runner.invoke(ctsync_app, args, env=clean_env())
    assert uploaded.exit_code == 1, uploaded.output
    assert json.loads(uploaded.stdout)["invalid_by_code"] == {"534": 1}


def test_check_reads_events_from_stdin_and_fails_on_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "actions.json"
    path.write_text(json.dumps(preset_as_mapping("actions")))
    result = runner.invoke(app, ["check", str(path), "-"], input='{"type": "group"}\nnot json\n')
    assert result.exit_code == 1
    assert "line 1: fires: (none)" in result.stdout
    assert "line 2: not JSON" in result.stdout


def test_check_reads_the_mapping_from_stdin_as_upload_does(tmp_path: Path) -> None:
    """`ctsync mappings check - EVENTS < m.json` said `-: cannot read: No such file`,
    though `upload --mapping -` reads stdin."""
    mapping = json.dumps(preset_as_mapping("classic"))
    events = tmp_path / "e.ndjson"
    events.write_text(json.dumps({"type": "identify", "userId": "u1", "traits": {}}) + "\n")
    from_file = tmp_path / "m.json"
    from_file.write_text(mapping)
    read = runner.invoke(app, ["check", "-", str(events)], input=mapping)
    assert read.exit_code == 0, read.output
    assert read.stdout.splitlines()[0] == "-: 8 subscriptions, 8 enabled: OK"
    same = runner.invoke(app, ["check", str(from_file), str(events)])
    assert read.stdout.splitlines()[1:] == same.stdout.splitlines()[1:]
    marked = runner.invoke(app, ["check", "-", str(events)], input="\ufeff" + mapping)
    assert marked.exit_code == 0, marked.output
    assert marked.stdout == read.stdout
    both = runner.invoke(app, ["check", "-", "-"], input=mapping)
    assert both.exit_code == 2
    assert both.stderr.strip() == "ctsync: the mapping file and the events cannot both be stdin"
    # (it said `error: ...` where `upload` says `ctsync: ...`: the walkthrough)
    broken = runner.invoke(app, ["check", "-", str(events)], input='{"subscriptions": [')
    assert broken.exit_code == 2 and broken.stderr.startswith("ctsync: -: not valid JSON")
