"""`ctsync mappings`: write a preset out as a mapping file, check a mapping file.

    ctsync mappings show --preset classic > mapping.json
    ctsync mappings check mapping.json samples.ndjson

Exit status: 0 when the file (and every sample line) is usable; 1 when a sample line is
not (it cannot be read, or `ctsync upload` would refuse what it makes); 2 when the
mapping file or the events file cannot be used (as for `ctsync upload`); 141 when the
reader of the output left before its end (`| head`), as for a program SIGPIPE ends.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from typer.core import TyperCommand

from ctsync.errors import ExitCode, UsageError
from ctsync.mapping.file import MappingError, MappingFile, load_mapping, parse_mapping
from ctsync.mapping.mapper import build_mapper
from ctsync.mapping.presets import PresetName, preset_as_mapping
from ctsync.prepare import unsent
from ctsync.presets import MappingOptions
from ctsync.reader import (
    STDIN,
    InputOptions,
    InputRecord,
    OpenSource,
    collect_inputs,
    read_source,
)
from ctsync.records import (
    Delete,
    Invalid,
    Mapper,
    Operation,
    SentTokens,
    Skip,
    Upload,
    counting,
)
from ctsync.rules import check_upload
from ctsync.sources import BOM
from ctsync.stderr import quiet_stdout
from ctsync.stopping import terminal_stdin

app = typer.Typer(
    help="Mapping files: Segment-style subscriptions in place of a preset.",
    rich_markup_mode=None,
)


@contextlib.contextmanager
def _until_the_reader_leaves() -> Iterator[None]:
    """`ctsync mappings check ... | head`: the output stops quietly when its reader goes,
    with 141 (click says nothing and exits 1, which here means a sample was refused)."""
    try:
        yield
    except BrokenPipeError:
        quiet_stdout()
        raise typer.Exit(ExitCode.CLOSED_PIPE) from None


@app.command()
def show(
    preset: Annotated[
        PresetName, typer.Option(help="The preset to write out as a mapping file.")
    ] = PresetName.ACTIONS,
) -> None:
    """Print a preset as a mapping file: a starting point to edit."""
    text = orjson.dumps(preset_as_mapping(preset.value), option=orjson.OPT_INDENT_2)
    with _until_the_reader_leaves():
        typer.echo(text.decode())


class _PlainUsage(TyperCommand):
    """Usage as `FILE [EVENTS]`: Typer writes a required argument `{FILE}`, which reads
    as a set or a template to fill in."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:  # (typer's own click Context)
        return [
            piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
            for piece in super().collect_usage_pieces(ctx)
        ]


def _stdin_mapping() -> MappingFile:
    """`ctsync mappings check - EVENTS`: the mapping file from stdin, as `upload --mapping -`
    reads it (`-` was taken for a file of that name)."""
    text = sys.stdin.read() if sys.stdin is not None else ""
    try:
        document = orjson.loads(text.lstrip(BOM))
    except orjson.JSONDecodeError as error:
        raise MappingError("-", f"not valid JSON: {error}") from None
    return parse_mapping(document, "-")


@app.command(short_help="Validate a mapping file against sample events.", cls=_PlainUsage)
def check(
    file: Annotated[Path, typer.Argument(metavar="FILE", hidden=True)],
    events: Annotated[str | None, typer.Argument(metavar="EVENTS", hidden=True)] = None,
) -> None:
    """Validate a mapping file; with sample events, show what fires and what is sent.

    FILE is the mapping file (JSON); EVENTS, sample Segment messages, one JSON object a
    line (`-` for stdin).
    """
    with _until_the_reader_leaves():
        _check(file, events)


def _check(file: Path, events: str | None) -> None:
    if str(file) == "-" and events == "-":
        typer.echo("ctsync: the mapping file and the events cannot both be stdin", err=True)
        raise typer.Exit(ExitCode.USAGE)
    try:
        mapping_file = _stdin_mapping() if str(file) == "-" else load_mapping(file)
    except MappingError as error:
        typer.echo(f"ctsync: {error}", err=True)
        raise typer.Exit(ExitCode.USAGE) from None
    enabled = sum(1 for sub in mapping_file.subscriptions if sub.enabled)
    count = len(mapping_file.subscriptions)
    typer.echo(
        f"{mapping_file.source}: {count} subscription{'' if count == 1 else 's'}, "
        f"{enabled} enabled: OK"
    )
    if events is None:
        return
    mapper = build_mapper(mapping_file, MappingOptions())
    try:
        inputs = collect_inputs([events], InputOptions(allow_empty=True))
    except UsageError as error:
        typer.echo(f"ctsync: {error}", err=True)
        raise typer.Exit(ExitCode.USAGE) from None
    ok = True
    for note in inputs.notes():
        typer.echo(note)
    # At a terminal, say what is awaited (as `ctsync upload` does), and take each line as
    # it is typed: a buffered read would wait for 64 KiB before checking anything.
    stdin = terminal_stdin() if any(s.name == STDIN for s in inputs.sources) else None
    if stdin is not None:
        typer.echo(
            "ctsync: reading Segment messages from standard input "
            "(Ctrl-D to finish, Ctrl-C to stop)",
            err=True,
        )
    for source in inputs.sources:
        label = "" if len(inputs.sources) == 1 else f"{source.name}: "
        try:
            opened = OpenSource(source, stdin)
        except OSError as error:
            typer.echo(f"ctsync: cannot read {source.name}: {error.strerror or error}", err=True)
            raise typer.Exit(ExitCode.USAGE) from None
        try:
            ok = _check_events(mapping_file, mapper, read_source(opened), label) and ok
        except KeyboardInterrupt:  # Ctrl-C: not click's "Aborted!" and exit 1
            typer.echo("ctsync: interrupted", err=True)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        finally:
            opened.close()
    if not ok:  # a sample line unreadable, or what it makes would be refused
        raise typer.Exit(ExitCode.INCOMPLETE)


def _check_events(
    mapping_file: MappingFile, mapper: Mapper, records: Iterable[InputRecord], label: str
) -> bool:
    """Report each sample message, read as `ctsync upload` reads it; False when one
    could not be read, or what it makes would be refused (invalid, or a data rule broken)."""
    ok = True
    for record in records:
        origin = record.origin
        where = f"{label}line {origin.line}"
        if origin.part:
            where += f", message {origin.part + 1}"
        if record.error is not None:
            error = record.error
            if error.code == "malformed-json":
                text = f"not JSON: {error.message.removeprefix('not valid JSON: ')}"
            elif error.code == "not-an-object":
                text = f"not a JSON object ({error.message})"
            else:
                text = f"{error.code}: {error.message}"
            typer.echo(f"{where}: {text}")
            ok = False
            continue
        message = record.message
        assert message is not None
        fired = [sub.name for sub in mapping_file.firing(message)]
        typer.echo(f"{where}: fires: {', '.join(fired) if fired else '(none)'}")
        result = mapper(message)
        if isinstance(result, Skip):
            typer.echo(f"  skipped: {result.reason}")
        elif isinstance(result, Invalid):
            typer.echo(f"  invalid {result.code}: {result.message}")
            ok = False
        else:
            ok = _echo_records(result, counting(mapper).tokens) and ok
    return ok


def _echo_records(result: list[Operation], tokens: SentTokens) -> bool:
    """Show what a message sends, as a run sends it: a device token once; a token sent
    already is still checked by the data rules (`prepare` checks every record), and shown
    when it breaks one. False when a record breaks a rule."""
    taken = unsent(result, tokens)
    sent = set() if isinstance(taken, Skip) else {id(op) for op in taken[0]}
    fine = True
    for op in result:
        if isinstance(op, Delete):
            typer.echo(f"  delete {op.key} {op.value}")
        elif id(op) in sent:
            fine = _echo_upload("upload", op) and fine
        elif check_upload(op.record):
            fine = _echo_upload("token sent already, not again", op) and fine
    if isinstance(taken, Skip) and fine:
        typer.echo(f"  skipped: {taken.reason}")
    return fine


def _echo_upload(label: str, op: Upload) -> bool:
    """Show one record and the rules it breaks; False when it breaks one."""
    typer.echo(f"  {label} {orjson.dumps(op.record).decode()}")
    violations = check_upload(op.record)
    for violation in violations:
        typer.echo(f"    rule {violation.code}: {violation.message}")
    return not violations
