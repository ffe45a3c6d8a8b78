"""`ctsync mappings`: write a preset out as a mapping file, check a mapping file.

    ctsync mappings show --preset classic > mapping.json
    ctsync mappings check mapping.json samples.ndjson

Exit status: 0 when the file (and every sample line) is usable; 1 when a sample line is
not; 2 when the mapping file or the events file cannot be used (as for `ctsync upload`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, TextIO

import orjson
import typer

from ctsync.mapping.file import MappingError, MappingFile, load_mapping
from ctsync.mapping.mapper import build_mapper
from ctsync.mapping.presets import PresetName, preset_as_mapping
from ctsync.presets import MappingOptions
from ctsync.records import Delete, Invalid, Mapper, Skip, Upload
from ctsync.rules import check_upload

app = typer.Typer(
    help="Mapping files: Segment-style subscriptions in place of a preset.",
    rich_markup_mode=None,
)


@app.command()
def show(
    preset: Annotated[
        PresetName, typer.Option(help="The preset to write out as a mapping file.")
    ] = PresetName.ACTIONS,
) -> None:
    """Print a preset as a mapping file: a starting point to edit."""
    text = orjson.dumps(preset_as_mapping(preset.value), option=orjson.OPT_INDENT_2)
    typer.echo(text.decode())


@app.command(short_help="Validate a mapping file against sample events.")
def check(
    file: Annotated[Path, typer.Argument(metavar="FILE", hidden=True)],
    events: Annotated[str | None, typer.Argument(metavar="EVENTS", hidden=True)] = None,
) -> None:
    """Validate a mapping file; with sample events, show what fires and what is sent.

    FILE is the mapping file (JSON); EVENTS, sample Segment messages, one JSON object a
    line (`-` for stdin).
    """
    try:
        mapping_file = load_mapping(file)
    except MappingError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    enabled = sum(1 for sub in mapping_file.subscriptions if sub.enabled)
    typer.echo(
        f"{mapping_file.source}: {len(mapping_file.subscriptions)} subscriptions, "
        f"{enabled} enabled: OK"
    )
    if events is None:
        return
    mapper = build_mapper(mapping_file, MappingOptions())
    try:
        if events == "-":
            ok = _check_events(mapping_file, mapper, sys.stdin)
        else:
            with open(events, encoding="utf-8") as lines:
                ok = _check_events(mapping_file, mapper, lines)
    except OSError as error:
        typer.echo(f"error: cannot read {events}: {error.strerror or error}", err=True)
        raise typer.Exit(2) from None
    if not ok:
        raise typer.Exit(1)


def _check_events(mapping_file: MappingFile, mapper: Mapper, lines: TextIO) -> bool:
    """Report each sample line; False when a line is not a JSON object."""
    ok = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            typer.echo(f"line {number}: not JSON: {error}")
            ok = False
            continue
        if not isinstance(message, dict):
            typer.echo(f"line {number}: not a JSON object")
            ok = False
            continue
        fired = [sub.name for sub in mapping_file.firing(message)]
        typer.echo(f"line {number}: fires: {', '.join(fired) if fired else '(none)'}")
        result = mapper(message)
        if isinstance(result, Skip):
            typer.echo(f"  skipped: {result.reason}")
        elif isinstance(result, Invalid):
            typer.echo(f"  invalid {result.code}: {result.message}")
        else:
            for op in result:
                if isinstance(op, Delete):
                    typer.echo(f"  delete {op.key} {op.value}")
                    continue
                _echo_upload(op)
    return ok


def _echo_upload(op: Upload) -> None:
    typer.echo(f"  upload {orjson.dumps(op.record).decode()}")
    for violation in check_upload(op.record):
        typer.echo(f"    rule {violation.code}: {violation.message}")
