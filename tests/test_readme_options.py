"""The README's option tables for `upload` and `delete` say what `--help` says: every
option once, none missing, none extra, and the same choices (issue 23: `--nested` and
`--max-event-properties` were listed twice)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctsync.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
OPTION = re.compile(r"--[a-z0-9][a-z0-9-]*")


def table_rows(command: str) -> list[str]:
    """The first cells of the option table in the README's `ctsync COMMAND` section."""
    section = README.split(f"### `ctsync {command}")[1].split("\n### ")[0]
    return [
        line.split(" | ")[0].removeprefix("| ")
        for line in section.splitlines()
        if line.startswith("| `-")
    ]


def help_options(command: str) -> dict[str, str]:
    """Each long option of `ctsync COMMAND --help`, with what follows it on its line."""
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    found = {}
    for line in result.stdout.splitlines():
        match = re.match(r"\s+(?:-\w, )?(--[a-z0-9-]+)(?: / --[a-z0-9-]+)?\s*(\S*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    found.pop("--help")
    return found


def documented(command: str) -> list[str]:
    """The options of the README's table, in order; a `--x / --no-x` pair counts once."""
    names = []
    for cell in table_rows(command):
        found = OPTION.findall(cell)
        names += found[:1] if " / --no-" in cell else found
    return names


def test_the_upload_table_lists_every_option_of_help_once() -> None:
    names = documented("upload")
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(names) == set(help_options("upload"))


def test_the_delete_table_and_its_same_as_upload_sentence_cover_help() -> None:
    own = documented("delete")
    assert len(own) == len(set(own))
    shown = set(help_options("delete"))
    assert set(own) <= shown
    # The rest is "the same connection and output options as upload": each must be one.
    assert shown - set(own) <= set(documented("upload"))
    section = README.split("### `ctsync delete`")[1].split("\n### ")[0]
    for name in ("--report", "--failed", "--json", "--quiet", "--account-id", "--timeout"):
        assert f"`{name}" in section


@pytest.mark.parametrize("command", ["upload", "delete"])
def test_the_choices_in_the_tables_are_the_programs(command: str) -> None:
    helped = help_options(command)
    for cell in table_rows(command):
        choices = re.search(r"`(--[a-z0-9-]+) ([a-z0-9]+(?:\\\|[a-z0-9]+)+)`", cell)
        if choices is None:
            continue
        name, listed = choices.group(1), choices.group(2).split("\\|")
        metavar = helped[name].strip("[]<>")
        assert sorted(metavar.split("|")) == sorted(listed), (name, metavar)
