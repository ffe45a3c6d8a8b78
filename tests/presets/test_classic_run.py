"""Issue 10 end to end through the command line (dry runs): `--validate fix`, the notes
on device tokens and dates left as text, `--link-anonymous`, `--convert-microseconds`.

The phone, gender and email cases are the issue's: `+44 20 7946 0001` and
`(415) 555-0007` (516), `non-binary` (514); RudderStack drops just the offending field
and sends the rest of the profile. Expected bodies are written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from ctsync.cli import app
from tests.helpers import clean_env

runner = CliRunner()
TS = "2023-05-18T22:58:45Z"
EPOCH = 1684450725


def write(path: Path, messages: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    return path


def identify(user: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "timestamp": TS, "traits": traits}


def sent_records(requests: Path) -> list[dict[str, Any]]:
    return [
        record
        for line in requests.read_bytes().splitlines()
        for record in orjson.loads(line)["body"]["d"]
    ]


FIXABLE = [
    identify("u1", name="Ada", phone="+44 20 7946 0001"),
    identify("u2", name="Bo", phone="(415) 555-0007"),
    identify("u3", name="Cy", gender="non-binary"),
    identify("u4", name="Di", email="di@"),
]


def upload(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], Path, Path]:
    report, requests = tmp_path / "report.ndjson", tmp_path / "requests.ndjson"
    result = runner.invoke(
        app,
        [
            "upload",
            *args,
            "--dry-run",
            "--json",
            "--report",
            str(report),
            "--output",
            str(requests),
        ],
        env=clean_env(),
    )
    return result.exit_code, orjson.loads(result.stdout), report, requests


def test_validate_fix_sends_each_profile_without_its_bad_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "in.ndjson", FIXABLE)
    failed = tmp_path / "failed.ndjson"
    code, summary, report, requests = upload(
        tmp_path, str(path), "--preset", "classic", "--validate", "fix", "--failed", str(failed)
    )
    assert code == 0
    assert (summary["accepted"], summary["invalid"]) == (4, 0)
    assert summary["fixed_by_code"] == {"516": 2, "514": 1, "515": 1}
    # (requests go out by lane, so compare by identity)
    assert {r["identity"]: r["profileData"] for r in sent_records(requests)} == {
        "u1": {"Name": "Ada", "Phone": "+442079460001"},
        "u2": {"Name": "Bo"},
        "u3": {"Name": "Cy"},
        "u4": {"Name": "Di"},
    }
    lines = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    assert [(x["line"], x["identity"], x["stage"], x["field"], x["code"]) for x in lines] == [
        (1, "u1", "validate", "Phone", "516"),
        (2, "u2", "validate", "Phone", "516"),
        (3, "u3", "validate", "Gender", "514"),
        (4, "u4", "validate", "Email", "515"),
    ]
    assert "(415) 555-0007" in lines[1]["message"]
    assert failed.read_bytes() == b"", "every record went through: no dead letters"


def test_strict_stays_the_default_and_refuses_the_same_profiles(tmp_path: Path) -> None:
    path = write(tmp_path / "in.ndjson", FIXABLE)
    code, summary, _, requests = upload(tmp_path, str(path), "--preset", "classic")
    assert code == 1
    assert (summary["accepted"], summary["invalid"]) == (0, 4)
    assert summary["invalid_by_code"] == {"516": 2, "514": 1, "515": 1}
    assert summary["fixed_by_code"] == {}
    assert sent_records(requests) == []


def test_validate_fix_never_fixes_identity_ts_or_structure(tmp_path: Path) -> None:
    messages = [
        # actions preset: traits as written, so a forbidden key (512) reaches the rules
        identify("u1", Phone="(415) 555-0007", **{"bad.key": 1}),
        {**identify("u2", Phone="(415) 555-0007"), "timestamp": "last tuesday"},  # 525
        {**identify("", Phone="(415) 555-0007")},  # 523
    ]
    path = write(tmp_path / "in.ndjson", messages)
    code, summary, report, requests = upload(tmp_path, str(path), "--validate", "fix")
    assert code == 1
    assert summary["invalid_by_code"] == {"512": 1, "525": 1, "523": 1}
    assert summary["fixed_by_code"] == {}
    assert sent_records(requests) == []
    assert all("field" not in orjson.loads(x) for x in report.read_bytes().splitlines())


def test_warn_still_sends_the_record_as_it_is(tmp_path: Path) -> None:
    path = write(tmp_path / "in.ndjson", FIXABLE[1:2])
    code, summary, _, requests = upload(
        tmp_path, str(path), "--preset", "classic", "--validate", "warn"
    )
    assert code == 0
    assert summary["warnings_by_code"] == {"516": 1}
    assert sent_records(requests)[0]["profileData"] == {"Name": "Bo", "Phone": "(415) 555-0007"}


def test_tokens_that_cannot_be_sent_are_counted_and_noted_once(tmp_path: Path) -> None:
    server_side = {
        "type": "identify",
        "userId": "u1",
        "timestamp": TS,
        "traits": {},
        "context": {"device": {"token": "tok", "type": "ios"}},
    }
    web = {**server_side, "anonymousId": "a1", "context": {"device": {"token": "t", "type": "web"}}}
    number = {**web, "context": {"device": {"token": 12345, "type": "android"}}}
    path = write(tmp_path / "in.ndjson", [server_side, server_side, web, number, number])
    code, summary, _, requests = upload(tmp_path, str(path), "--preset", "classic")
    assert code == 0
    assert summary["accepted"] == 5
    assert summary["dropped_values"] == {
        "token:no-objectId": 2,
        "token:unknown-device-type": 1,
        "token:not-a-string": 2,
    }
    assert [r["type"] for r in sent_records(requests)] == ["profile"] * 5
    token_notes = [note for note in summary["notes"] if "device token" in note]
    assert len(token_notes) == 3
    assert token_notes[0].startswith("2 device tokens were not sent")
    assert "anonymousId" in token_notes[0] and "objectId" in token_notes[0]
    assert token_notes[1].startswith("1 device token was not sent")
    assert token_notes[2].startswith("2 device tokens were not sent: context.device.token is")


def test_dates_left_as_text_are_counted_and_the_option_named_once(tmp_path: Path) -> None:
    fine = "2023-01-02T00:00:00.123456+00:00"  # as Segment's Python library writes them
    messages = [identify("u1", createdAt=fine), identify("u2", createdAt=fine, name="Bo")]
    path = write(tmp_path / "in.ndjson", messages)
    code, summary, _, requests = upload(tmp_path, str(path), "--preset", "classic")
    assert code == 0
    assert summary["dates_left_as_text"] == {"createdAt": 2}
    (note,) = [note for note in summary["notes"] if "finer than milliseconds" in note]
    assert "createdAt: 2" in note and "--convert-microseconds" in note
    assert sent_records(requests)[0]["profileData"] == {"created_at": fine}

    code, summary, _, requests = upload(
        tmp_path, str(path), "--preset", "classic", "--convert-microseconds"
    )
    assert summary["dates_left_as_text"] == {}
    assert not [note for note in summary["notes"] if "finer than milliseconds" in note]
    # 2023-01-02T00:00:00Z, floored
    assert sent_records(requests)[0]["profileData"] == {"created_at": 1672617600}


def test_link_anonymous_links_the_anonymous_history_to_the_user(tmp_path: Path) -> None:
    messages = [
        {"type": "track", "anonymousId": "a1", "event": "Viewed", "timestamp": TS},
        {**identify("u1", plan="pro"), "anonymousId": "a1"},
        {"type": "track", "userId": "u1", "anonymousId": "a1", "event": "Bought", "timestamp": TS},
    ]
    path = write(tmp_path / "in.ndjson", messages)
    code, _, _, requests = upload(tmp_path, str(path), "--preset", "classic", "--link-anonymous")
    assert code == 0
    sent = sent_records(requests)
    link = {
        "type": "profile",
        "objectId": "a1",
        "ts": EPOCH,
        "profileData": {"plan": "pro", "Identity": "u1"},
    }
    bought = {"type": "event", "identity": "u1", "ts": EPOCH, "evtName": "Bought", "evtData": {}}
    viewed = {"type": "event", "objectId": "a1", "ts": EPOCH, "evtName": "Viewed", "evtData": {}}
    assert sorted(sent, key=orjson.dumps) == sorted([viewed, link, bought], key=orjson.dumps)
    # The user's later events follow the link (one lane orders them: the same identity).
    assert sent.index(link) < sent.index(bought)


@pytest.mark.parametrize("args", [["--preset", "actions"], ["--mapping", "MAPPING"]])
def test_link_anonymous_is_refused_outside_the_classic_preset(
    tmp_path: Path, args: list[str]
) -> None:
    path = write(tmp_path / "in.ndjson", FIXABLE)
    mapping = tmp_path / "mapping.json"
    mapping.write_text('{"subscriptions": []}')
    args = [str(mapping) if arg == "MAPPING" else arg for arg in args]
    result = runner.invoke(
        app, ["upload", str(path), *args, "--link-anonymous", "--dry-run"], env=clean_env()
    )
    assert result.exit_code == 2
    assert "--link-anonymous works with --preset classic" in result.stderr
    assert "Traceback" not in result.output


def test_the_summary_table_shows_the_new_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "in.ndjson", FIXABLE)
    result = runner.invoke(
        app,
        ["upload", str(path), "--preset", "classic", "--validate", "fix", "--dry-run"],
        env=clean_env(),
    )
    assert result.exit_code == 0
    assert "fixed (--validate fix): 4 (516: 2, 514: 1, 515: 1)" in result.stderr


# Issue 22: a DOB that cannot be read, in each --validate mode, as a user sees it.
BAD = "03/01/1990"  # 3 January or 1 March: not guessed
DATES_OF_BIRTH = [
    identify("u1", name="Ada", birthday="01-Mar-1990"),  # read: 1990-03-01, 636249600
    identify("u2", name="Bo", birthday=BAD),
]


@pytest.mark.parametrize(
    ("mode", "accepted", "counts", "u2"),
    [
        ("strict", 1, {"invalid_by_code": {"dob-not-a-date": 1}}, None),
        ("fix", 2, {"fixed_by_code": {"dob-not-a-date": 1}}, {"Name": "Bo"}),
        ("warn", 2, {"warnings_by_code": {"dob-not-a-date": 1}}, {"Name": "Bo", "DOB": BAD}),
    ],
)
def test_a_dob_that_cannot_be_read_in_each_mode(
    tmp_path: Path, mode: str, accepted: int, counts: dict[str, Any], u2: Any
) -> None:
    path = write(tmp_path / "in.ndjson", DATES_OF_BIRTH)
    _, summary, report, requests = upload(
        tmp_path, str(path), "--preset", "classic", "--validate", mode
    )
    assert summary["accepted"] == accepted
    for key, value in counts.items():
        assert summary[key] == value
    sent = {r["identity"]: r["profileData"] for r in sent_records(requests)}
    assert sent["u1"] == {"Name": "Ada", "DOB": "$D_636249600"}
    assert sent.get("u2") == u2
    if mode != "warn":
        (line,) = [orjson.loads(x) for x in report.read_bytes().splitlines()]
        assert (line["line"], line["code"]) == (2, "dob-not-a-date")
        assert "03/01/1990" in line["message"]


# Issue 22: the classic mapping file (`ctsync mappings show --preset classic`) reads a
# DOB as the preset does. The formats are the list; 1990-03-01 is 636249600
# (7,364 days after 1970-01-01), 1990-03-13 is 12 days more.
MAR_1 = "$D_636249600"
DOB_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("iso-date", {"birthday": "1990-03-01"}, MAR_1),
    ("iso-date-time", {"birthday": "1990-03-01T08:00:00Z"}, "$D_636278400"),
    ("epoch-seconds", {"birthday": 636249600}, MAR_1),
    ("epoch-milliseconds", {"birthday": 636249600000}, MAR_1),
    ("day-month-name-year", {"birthday": "01-Mar-1990"}, MAR_1),
    ("year-month-day-slashes", {"birthday": "1990/03/01"}, MAR_1),
    ("unambiguous-day-first", {"birthday": "13/03/1990"}, "$D_637286400"),
    ("written-as-clevertap", {"DOB": "01-Mar-1990"}, MAR_1),
    ("clevertap-spelling-wins", {"birthday": "1990-03-13", "DOB": "1990-03-01"}, MAR_1),
    ("null", {"birthday": None}, None),
]
UNREADABLE = [("ambiguous", {"birthday": "03/01/1990"}), ("text", {"DOB": "soon"})]


@pytest.fixture(params=["preset", "mapping-file"])
def classic(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The classic preset, or the same as a mapping file (as `mappings show` prints it)."""
    if request.param == "preset":
        return ["--preset", "classic"]
    shown = runner.invoke(app, ["mappings", "show", "--preset", "classic"], env=clean_env())
    assert shown.exit_code == 0
    path = tmp_path / "classic-mapping.json"
    path.write_text(shown.stdout)
    return ["--mapping", str(path)]


@pytest.mark.parametrize("mode", ["strict", "fix", "warn"])
def test_the_classic_preset_and_its_mapping_file_read_a_dob_alike(
    tmp_path: Path, classic: list[str], mode: str
) -> None:
    messages = [identify(f"u-{name}", **traits) for name, traits, _ in DOB_CASES]
    messages += [identify(f"bad-{name}", **traits) for name, traits in UNREADABLE]
    path = write(tmp_path / "in.ndjson", messages)
    _, summary, _, requests = upload(tmp_path, str(path), *classic, "--validate", mode)
    sent = {r["identity"]: r["profileData"] for r in sent_records(requests)}
    for name, _, dob in DOB_CASES:  # read in every mode
        assert sent[f"u-{name}"] == ({} if dob is None else {"DOB": dob}), name
    unreadable = {f"bad-{name}": traits for name, traits in UNREADABLE}
    if mode == "strict":  # refused, with the rule's code
        assert summary["invalid_by_code"] == {"dob-not-a-date": 2}
        assert not unreadable.keys() & sent.keys()
    elif mode == "fix":  # sent without it, with a note
        assert summary["fixed_by_code"] == {"dob-not-a-date": 2}
        assert {key: sent[key] for key in unreadable} == {key: {} for key in unreadable}
    else:  # sent as written, with a warning
        assert summary["warnings_by_code"] == {"dob-not-a-date": 2}
        assert {key: sent[key] for key in unreadable} == {
            "bad-ambiguous": {"DOB": "03/01/1990"},
            "bad-text": {"DOB": "soon"},
        }
    assert summary["accepted"] == len(DOB_CASES) + (0 if mode == "strict" else 2)


# Issue 22: CleverTap's standard profile keys written as CleverTap spells them pass
# through as written, in the preset and in its mapping file alike, and win over the
# traits Segment's destination reads for the same key (name, email, gender, ...).
def test_standard_keys_written_as_clevertap_spells_them_pass_through(
    tmp_path: Path, classic: list[str]
) -> None:
    written = {
        "Name": "Ada Lovelace",
        "Email": "ada@example.com",
        "Phone": "+14155550100",
        "Gender": "F",
        "Photo": "https://example.com/ada.png",
        "Employed": "Y",
        "Education": "Graduate",
        "Married": "N",
        "Age": 36,
    }
    segment = {"name": "A. L.", "email": "other@example.com"}
    # ("male" as M is the preset's alone: the mapping file sends gender as written)
    messages = [identify("u-written", **written, **segment, gender="male")]
    messages.append(identify("u-segment", **segment))
    messages.append(identify("u-null", Name=None, name="Bo", Employed=None))
    path = write(tmp_path / "in.ndjson", messages)
    code, summary, _, requests = upload(tmp_path, str(path), *classic)
    assert code == 0 and summary["accepted"] == 3
    sent = {r["identity"]: r["profileData"] for r in sent_records(requests)}
    assert sent["u-written"] == written
    assert sent["u-segment"] == {"Name": "A. L.", "Email": "other@example.com"}
    assert sent["u-null"] == {"Name": "Bo"}  # a null written key is as if absent
