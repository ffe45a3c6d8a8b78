"""The command line: parse options, build settings, call the library, map the outcome
to an exit code. Nothing else lives here."""

from __future__ import annotations

import contextlib
import functools
import gzip
import inspect
import os
import re
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer

from ctsync import __version__, api
from ctsync.concurrency import AUTO, parse_concurrency
from ctsync.concurrency import Concurrency as ConcurrencyLimit
from ctsync.dedupe import DEFAULT_WINDOW_DAYS
from ctsync.errors import CtsyncError, ExitCode, UsageError
from ctsync.mapping.cli import app as mappings_app
from ctsync.prepare import ValidateMode
from ctsync.presets import MappingOptions, Nested, Preset
from ctsync.reader import (
    DEFAULT_MAX_LINE_BYTES,
    STDIN,
    InputOptions,
    LocalFile,
    Source,
    collect_inputs,
    describe_where,
    sniff_file,
    text_lines,
)
from ctsync.records import Origin
from ctsync.redact import forget_all
from ctsync.remote import is_url
from ctsync.run import RunOptions
from ctsync.run.workers import default_workers
from ctsync.sandbox.cli import app as sandbox_app
from ctsync.settings import (
    MAX_UPLOAD_BATCH,
    MAX_UPLOAD_CONCURRENCY,
    ClientSettings,
    Region,
    RetryPolicy,
    Secret,
    header_value_problem,
    parse_region,
    resolve_base_url,
    upload_lanes,
)
from ctsync.sources import SNIFF_BYTES
from ctsync.stderr import Stderr, escape, quiet_stdout
from ctsync.stopping import read_terminal
from ctsync.summary import Summary, plural
from ctsync.timestamps import DatesAs
from ctsync.window import Window

if TYPE_CHECKING:
    from ctsync.console import RunView

app = typer.Typer(
    name="ctsync",
    help="Upload Segment event exports into CleverTap, in batches.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

CONNECTION = "CleverTap connection"
OUTPUT = "Output"
MAPPING = "Mapping"
INPUT = "Input"

AccountId = Annotated[
    str | None,
    typer.Option(
        envvar="CLEVERTAP_ACCOUNT_ID",
        metavar="ID",
        help="CleverTap account ID.",
        rich_help_panel=CONNECTION,
    ),
]
Passcode = Annotated[
    str | None,
    typer.Option(
        envvar="CLEVERTAP_PASSCODE",
        metavar="TEXT",
        help="CleverTap passcode; prefer the variable or --passcode-file (`ps` shows this).",
        show_envvar=True,
        rich_help_panel=CONNECTION,
    ),
]
PasscodeFile = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE", help="Read the passcode from this file.", rich_help_panel=CONNECTION
    ),
]


def _check_region(ctx: typer.Context, param: typer.CallbackParam, value: str) -> Region:
    """A region in any case; a typo is a usage error (exit 2) suggesting the nearest one,
    naming CLEVERTAP_REGION only when the value came from it."""
    try:
        return parse_region(value)
    except ValueError as exc:
        source = ctx.get_parameter_source(param.name or "region")
        where = "CLEVERTAP_REGION" if source is not None and source.name == "ENVIRONMENT" else None
        raise typer.BadParameter(str(exc), param_hint=where or "'--region'") from None


RegionOpt = Annotated[
    str,
    typer.Option(
        envvar="CLEVERTAP_REGION",
        metavar="|".join(Region),
        callback=_check_region,
        help="Your account's region (as in your dashboard's URL).",
        rich_help_panel=CONNECTION,
    ),
]
Endpoint = Annotated[
    str | None,
    typer.Option(
        envvar="CLEVERTAP_ENDPOINT",
        metavar="URL",
        help="Base URL overriding the region: a proxy, or `ctsync sandbox`.",
        rich_help_panel=CONNECTION,
    ),
]


def _check_concurrency(value: str) -> str:
    """`auto`, or 1..15: anything else is a usage error (exit 2) naming the option."""
    try:
        parsed = parse_concurrency(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}: give auto or 1..{MAX_UPLOAD_CONCURRENCY}") from None
    if parsed != AUTO and not 1 <= int(parsed) <= MAX_UPLOAD_CONCURRENCY:
        raise typer.BadParameter(
            f"{parsed} is not in 1..{MAX_UPLOAD_CONCURRENCY} (CleverTap's limit), nor auto"
        )
    return value


Concurrency = Annotated[
    str,
    typer.Option(
        metavar="auto|N",
        callback=_check_concurrency,
        help="Requests in flight: auto (start at CleverTap's limit, 15 uploads or 3 deletes;"
        " halve on each 429, grow back by one per answer) or a fixed N (1..15; deletes at"
        " most 3).",
        rich_help_panel=CONNECTION,
    ),
]
MaxRetries = Annotated[
    int,
    typer.Option(
        min=0,
        max=20,
        metavar="N",
        help="Retries of 429, 5xx and lost connections.",
        rich_help_panel=CONNECTION,
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        min=1.0, metavar="S", help="Seconds to wait for one answer.", rich_help_panel=CONNECTION
    ),
]


@dataclass(frozen=True, slots=True)
class Connection:
    """The connection options `upload` and `delete` share, as one value: adding an option
    here (and its Annotated type in `_CONNECTION`) adds it to both commands. Each command
    keeps its own `--concurrency` (their defaults and limits differ); `with_connection`
    shows it in the group's place, between --endpoint and --max-retries."""

    account_id: str | None
    passcode: str | None
    passcode_file: Path | None
    region: Region
    endpoint: str | None
    max_retries: int
    timeout: float


# (name, type, default) of each connection option, in --help order; None marks where the
# command's own --concurrency goes.
_CONNECTION: list[tuple[str, Any, Any] | None] = [
    ("account_id", AccountId, None),
    ("passcode", Passcode, None),
    ("passcode_file", PasscodeFile, None),
    ("region", RegionOpt, Region.EU1),
    ("endpoint", Endpoint, None),
    None,
    ("max_retries", MaxRetries, 5),
    ("timeout", Timeout, 60.0),
]


def _group(
    name: str, make: Callable[..., Any], options: list[tuple[str, Any, Any] | None], slot: str = ""
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator giving `command`, which takes a parameter `name`, the `options`
    (name, Annotated type, default) as its own (Typer reads the signature), and passing
    them on as one value, `make(**options)`. A None in `options` marks where the
    command's own parameter `slot` goes in --help."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = dict(signature.parameters)
        keyword = inspect.Parameter.KEYWORD_ONLY
        group = [
            inspect.Parameter(entry[0], keyword, annotation=entry[1], default=entry[2])
            if entry is not None
            else own[slot].replace(kind=keyword)
            for entry in options
        ]
        params = []
        for param in own.values():
            if param.name == name:
                params.extend(group)
            elif param.name != slot:
                params.append(param.replace(kind=keyword))
        names = [entry[0] for entry in options if entry is not None]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            value = make(**{option: kwargs.pop(option) for option in names})
            command(**{name: value}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


with_connection = _group("connection", Connection, _CONNECTION, slot="concurrency")
"""`connection: Connection` (and `concurrency`) as the connection options."""


Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing but errors.", rich_help_panel=OUTPUT)
]
JsonOut = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the summary as one JSON object on stdout.", rich_help_panel=OUTPUT
    ),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress on stderr: live on a terminal, else a line every 10 s "
        "(default: on at a terminal).",
        show_default=False,
        rich_help_panel=OUTPUT,
    ),
]
Report = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="Write one NDJSON line per record that did not go through.",
        rich_help_panel=OUTPUT,
    ),
]
Failed = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="Write the input line of every record that did not go through "
        "(fix the cause, then upload this file).",
        rich_help_panel=OUTPUT,
    ),
]
RequestsOutput = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="With --dry-run: write each request as an NDJSON line (`-`: stdout).",
        rich_help_panel=OUTPUT,
    ),
]
Include = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        metavar="GLOB",
        help="Only files whose path relative to the directory or prefix matches this glob "
        "(repeatable; `*` also matches `/`).",
        rich_help_panel=INPUT,
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="GLOB",
        help="Leave out files whose path relative to the directory or prefix matches this "
        "glob (repeatable).",
        rich_help_panel=INPUT,
    ),
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="WHEN",
        help="Only messages whose timestamp is at or after WHEN (an ISO date or date-time; "
        "UTC unless it has an offset); the others are skipped as outside-window.",
        rich_help_panel=INPUT,
    ),
]
Until = Annotated[
    str | None,
    typer.Option(
        "--until",
        metavar="WHEN",
        help="Only messages whose timestamp is before WHEN (exclusive; an ISO date or "
        "date-time, UTC unless it has an offset).",
        rich_help_panel=INPUT,
    ),
]
AllowEmpty = Annotated[
    bool,
    typer.Option(
        "--allow-empty",
        help="Succeed when the inputs hold no export file (else: exit 2).",
        rich_help_panel=INPUT,
    ),
]
MaxLineBytes = Annotated[
    int,
    typer.Option(
        min=1024,
        metavar="BYTES",
        help="A longer line (or JSON document) is one invalid record, line-too-long.",
        rich_help_panel=INPUT,
    ),
]
S3Endpoint = Annotated[
    str | None,
    typer.Option(
        metavar="URL",
        help="Endpoint of an S3-compatible store for s3:// paths (also AWS_ENDPOINT_URL_S3).",
        rich_help_panel=INPUT,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Build and encode every request, send nothing; needs no credentials."
    ),
]


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """The options `upload` and `delete` share on what a run writes and shows (and
    --dry-run, which --output needs), as one value: adding an option here (and its
    Annotated type in `_OUTPUTS`) adds it to both commands."""

    dry_run: bool
    output: Path | None
    report: Path | None
    failed: Path | None
    json_out: bool
    progress: bool | None
    quiet: bool

    def files(self) -> api.Outputs:
        """The files the run writes. Raises UsageError for --output without --dry-run,
        and for options that contradict each other."""
        if self.output is not None and not self.dry_run:
            raise UsageError("--output writes the requests of a dry run: add --dry-run")
        to_stdout = [
            name
            for name, path in (
                ("--output", self.output),
                ("--report", self.report),
                ("--failed", self.failed),
            )
            if path == Path(STDIN)
        ]
        if self.json_out:
            to_stdout.append("--json")
        if len(to_stdout) > 1:  # their lines would interleave on stdout
            named = " and ".join(f"{name} -" if name != "--json" else name for name in to_stdout)
            both = "both" if len(to_stdout) == 2 else "all"
            json_too = ", or leave out --json" if self.json_out else ""
            raise UsageError(
                f"{named} would {both} write to stdout: give files instead of -{json_too}"
            )
        if self.progress and self.quiet:
            raise UsageError("--progress shows what --quiet hides: give one of them")
        return api.Outputs(report=self.report, failed=self.failed, requests=self.output)


_OUTPUTS: list[tuple[str, Any, Any] | None] = [
    ("dry_run", DryRun, False),
    ("output", RequestsOutput, None),
    ("report", Report, None),
    ("failed", Failed, None),
    ("json_out", JsonOut, False),
    ("progress", ProgressOpt, None),
    ("quiet", Quiet, False),
]
with_outputs = _group("outputs", OutputOptions, _OUTPUTS)
"""`outputs: OutputOptions` as the output options."""


app.add_typer(sandbox_app, name="sandbox")
app.add_typer(
    mappings_app, name="mappings", help="Show presets as mapping files; check mapping files."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctsync {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Upload Segment event exports into CleverTap, in batches."""


@app.command(short_help="Upload Segment exports to CleverTap.")
@with_connection
@with_outputs
def upload(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None,
        typer.Argument(metavar="[PATH]...", show_default=False, hidden=True),
    ] = None,
    preset: Annotated[
        Preset,
        typer.Option(
            help="Which Segment destination's mappings to apply.", rich_help_panel=MAPPING
        ),
    ] = Preset.ACTIONS,
    mapping: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Your own subscriptions (JSON), `-` for stdin; replaces --preset. "
            "Start from `ctsync mappings show`.",
            rich_help_panel=MAPPING,
        ),
    ] = None,
    nested: Annotated[
        Nested,
        typer.Option(
            help="Nested objects and arrays in event properties (classic, mappings).",
            rich_help_panel=MAPPING,
        ),
    ] = Nested.FLATTEN,
    max_event_properties: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Your account's event property limit.",
            rich_help_panel=MAPPING,
        ),
    ] = 256,
    convert_timestamps: Annotated[
        bool,
        typer.Option(
            help="Turn ISO-8601 values into epoch seconds, Segment's rule (default: on).",
            show_default=False,
            rich_help_panel=MAPPING,
        ),
    ] = True,
    dates_as: Annotated[
        DatesAs,
        typer.Option(
            help="Converted dates as epoch seconds, or CleverTap's $D_ dates.",
            rich_help_panel=MAPPING,
        ),
    ] = DatesAs.UNIX,
    convert_microseconds: Annotated[
        bool,
        typer.Option(
            "--convert-microseconds",
            help="Also convert date-times with microseconds or nanoseconds (floored to "
            "seconds); Segment's rule converts only up to milliseconds.",
            rich_help_panel=MAPPING,
        ),
    ] = False,
    link_anonymous: Annotated[
        bool,
        typer.Option(
            "--link-anonymous",
            help="Classic preset: send an identify with userId and anonymousId to the "
            "anonymous profile (objectId) with Identity = userId, linking its history.",
            rich_help_panel=MAPPING,
        ),
    ] = False,
    events_only: Annotated[
        bool,
        typer.Option(
            "--events-only",
            help="Send events and device tokens, not profile writes: for re-driving a "
            "--failed file after later runs went through (an old identify sent again "
            "would put older values over newer ones).",
            rich_help_panel=MAPPING,
        ),
    ] = False,
    validate: Annotated[
        ValidateMode,
        typer.Option(
            help="CleverTap's data rules: refuse the record, send it without its fixable "
            "fields (a bad Phone, Gender or Email), send it with a warning, or do not check.",
            rich_help_panel=MAPPING,
        ),
    ] = ValidateMode.STRICT,
    batch_size: Annotated[
        int,
        typer.Option(min=1, max=MAX_UPLOAD_BATCH, metavar="N", help="Records per upload request."),
    ] = MAX_UPLOAD_BATCH,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            metavar="N",
            help="Processes preparing records (decode, map, validate): 1 keeps everything "
            "in one process (default: the CPUs idle at the start, at most 8).",
            show_default=False,
        ),
    ] = None,
    include: Include = None,
    exclude: Exclude = None,
    since: Since = None,
    until: Until = None,
    allow_empty: AllowEmpty = False,
    max_line_bytes: MaxLineBytes = DEFAULT_MAX_LINE_BYTES,
    s3_endpoint_url: S3Endpoint = None,
    connection: Connection = None,  # type: ignore[assignment]  # with_connection fills it
    concurrency: Concurrency = AUTO,
    state: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="SQLite state file: a re-run skips what earlier runs finished; one run at a time.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    retry_unknown: Annotated[
        bool,
        typer.Option(
            "--retry-unknown",
            help="Send again records whose outcome is unknown (a lost answer, a 500 after "
            "sending): a duplicate event rather than a gap.",
            rich_help_panel=CONNECTION,
        ),
    ] = False,
    no_dedupe: Annotated[
        bool,
        typer.Option(
            "--no-dedupe",
            help="Send every copy of a message: no skipping of messageIds this run or an "
            "earlier one on the same --state sent (duplicate-message-id).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    dedupe_window: Annotated[
        int,
        typer.Option(
            "--dedupe-window",
            min=1,
            metavar="DAYS",
            help="Forget sent messageIds whose timestamp is this many days older than the "
            "newest one seen.",
            rich_help_panel=OUTPUT,
        ),
    ] = DEFAULT_WINDOW_DAYS,
    outputs: OutputOptions = None,  # type: ignore[assignment]  # with_outputs fills it
) -> None:
    """Upload Segment messages (NDJSON or JSON, gzipped or not) to CleverTap.

    Each PATH is a file or a directory of exports, or an s3:// or gs:// bucket path;
    `-` or none reads stdin.
    """
    err = _error_console()
    with _errors_to_exit(err, json_out=outputs.json_out, quiet=outputs.quiet):
        files = outputs.files()
        paths = paths or [STDIN]
        inputs = InputOptions(
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            allow_empty=allow_empty,
            max_line_bytes=max_line_bytes,
            s3_endpoint_url=s3_endpoint_url,
            window=Window.parse(since, until),
        )
        sources = collect_inputs(paths, inputs)  # a missing or unreadable path is said first
        _refuse_named_non_exports(err, paths)
        if STDIN in paths and sys.stdin is None:  # `ctsync upload - <&-`
            raise UsageError("standard input is closed: give a file path, or pipe data in")
        if mapping is not None and _from_command_line(ctx, "preset"):
            raise UsageError(
                "--mapping replaces the preset: give --preset or --mapping, not both (a "
                "preset as a mapping file to start from: ctsync mappings show --preset NAME)"
            )
        if STDIN in paths and mapping == STDIN:  # the mapping would take all of it
            raise UsageError(
                "--mapping - and the input both read standard input: save the mapping to a "
                "file (ctsync mappings show > mapping.json) and give --mapping mapping.json"
            )
        reads_terminal = STDIN in paths and _stdin_is_terminal()
        limit = parse_concurrency(concurrency)
        client = _client_settings(ctx, err, connection, limit, outputs.dry_run)
        run = RunOptions(
            batch_size=batch_size,
            validate=validate,
            retry_unknown=retry_unknown,
            dedupe=not no_dedupe,
            dedupe_window_days=dedupe_window,
        )
        if client is None:  # a real run's lanes follow its client; a dry run's, --concurrency
            run = replace(run, lanes=upload_lanes(limit))
        job = api.UploadJob(  # a broken mapping file stops here, before any reading
            sources=sources,
            client=client,
            preset=preset,
            mapping_file=_mapping_source(mapping),
            mapping=MappingOptions(
                convert_timestamps=convert_timestamps,
                dates_as=dates_as,
                nested=nested,
                max_event_properties=max_event_properties,
                convert_microseconds=convert_microseconds,
                link_anonymous=link_anonymous,
                events_only=events_only,
            ),
            run=run,
            outputs=files,
            state=state,
            inputs=inputs,
            workers=workers if workers is not None else default_workers(),
        )
        progress = outputs.progress
        if reads_terminal:
            err.print(
                "ctsync: reading Segment messages from standard input "
                "(Ctrl-D to finish, Ctrl-C to stop)",
                highlight=False,
                soft_wrap=True,
            )
            # A live display would overwrite what is typed: off unless asked for.
            progress = False if progress is None else progress
        if not outputs.quiet and state is None and err.is_terminal:
            for pipe in _named_pipes(sources.sources):
                err.print(
                    f"ctsync: {escape(pipe)} is a named pipe: reading it waits until a "
                    "program writes to it (Ctrl-C to stop)",
                    highlight=False,
                    soft_wrap=True,
                )
        with _progress(err, progress, outputs.quiet, _total_size(sources.sources)) as view:
            summary = api.upload(job, observer=view, handle_signals=True)
        _finish(summary, err, outputs)


@app.command(short_help="Delete CleverTap profiles (irreversible).")
@with_connection
@with_outputs
def delete(
    ctx: typer.Context,
    identity: Annotated[
        list[str] | None,
        typer.Option("--identity", metavar="ID", help="An identity to delete (repeatable)."),
    ] = None,
    from_file: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="FILE", help="A file of identities, one per line (`-`: stdin)."
        ),
    ] = None,
    guid: Annotated[
        bool,
        typer.Option("--guid", help="The values are CleverTap IDs (objectId), not identities."),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Do not ask for confirmation at a terminal (never asked otherwise)."
        ),
    ] = False,
    s3_endpoint_url: S3Endpoint = None,
    connection: Connection = None,  # type: ignore[assignment]  # with_connection fills it
    concurrency: Concurrency = AUTO,
    outputs: OutputOptions = None,  # type: ignore[assignment]  # with_outputs fills it
) -> None:
    """Delete CleverTap profiles by identity (or CleverTap ID with --guid), 100 per request.

    Deletion is irreversible: at a terminal, ctsync says how many profiles it will delete
    and asks first (--yes skips the question).
    """
    err = _error_console()
    with _errors_to_exit(err, json_out=outputs.json_out, quiet=outputs.quiet):
        if not identity and from_file is None:
            raise UsageError(
                "name the profiles to delete: --identity ID (repeatable) or --from FILE"
            )
        if identity and from_file is None and not any(value.strip() for value in identity):
            # (`--identity "$ID"` with ID unset: a script must not read it as done)
            raise UsageError("--identity is empty: name the profiles to delete")
        files = outputs.files()
        client = _client_settings(
            ctx, err, connection, parse_concurrency(concurrency), outputs.dry_run
        )
        identities = [(Origin("--identity", i), v) for i, v in enumerate(identity or [], start=1)]
        if from_file is not None:
            identities.extend(_identity_lines(from_file, s3_endpoint_url))
        if client is not None and not yes and _stdin_is_terminal():
            _confirm_delete(err, identities, guid, client)
        job = api.DeleteJob(
            identities=identities,
            key="guid" if guid else "identity",
            client=client,
            outputs=files,
        )
        with _progress(err, outputs.progress, outputs.quiet, None) as view:
            summary = api.delete(job, observer=view, handle_signals=True)
        _finish(summary, err, outputs)


def _refuse_named_non_exports(err: Stderr, paths: list[str]) -> None:
    """A file named on the command line that holds no JSON line at all and looks like
    something else (a CSV, an HTML page, binary data): one line per file saying what it
    looks like, and exit 1 before anything is sent. (In a directory such a file is
    skipped with a note instead.) Other text is read, each line an invalid record: a
    dead-letter file may start with a broken line."""
    lines = []
    for name in paths:
        path = Path(name)
        if name == STDIN or is_url(name) or not path.is_file():
            continue
        reason = sniff_file(path)
        if reason is None or reason == "empty":
            continue
        head = _head(path)
        if head is None:
            continue
        packed = _compressed(head)
        if packed is not None:
            lines.append(
                f"{name}: not a Segment export: {packed} (ctsync reads NDJSON or JSON, plain "
                "or gzipped: decompress it first)"
            )
            continue
        if _binary(head) and not _any_json_line(head):
            lines.append(f"{name}: not a Segment export: binary data (ctsync reads NDJSON or JSON)")
            continue
        if any(row.lstrip()[:1] in (b"{", b"[") for row in head.splitlines()):
            continue
        looks = _looks_like(head, reason)
        if looks is not None:
            lines.append(f"{name}: {looks}")
    for line in lines:
        err.print("[bold red]ctsync:[/]", escape(line), highlight=False, soft_wrap=True)
    if lines:
        raise typer.Exit(ExitCode.INCOMPLETE)


def _head(path: Path) -> bytes | None:
    """The first 64 KiB of `path`, gunzipped; None when damaged (reading it says why)."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path) as g:
                head = g.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error):
        return None
    return head


_PACKED = (
    (b"\x1f\x8b", "gzip data inside gzip"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"BZh", "bzip2 data"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
)


def _compressed(head: bytes) -> str | None:
    """The compression `head` (gunzipped once) starts with, if any: no export starts so
    (JSON starts with a brace, a bracket or blank)."""
    for magic, kind in _PACKED:
        if head.startswith(magic):
            return kind
    return None


def _binary(head: bytes) -> bool:
    """Whether `head` is not text: a NUL byte, or bytes that are not UTF-8 (a character
    cut at the end of the head aside)."""
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 3
    return False


def _any_json_line(head: bytes) -> bool:
    """Whether a whole line of `head` is a JSON object or array: a damaged export (a line
    of binary garbage among its messages) is still read, its bad lines invalid records.
    The last line may be cut at the head's end: one that starts as JSON and is a long run
    of text counts too (no run of random bytes is)."""
    rows = head.splitlines()
    for row in rows[:-1]:
        try:
            if isinstance(orjson.loads(row), dict | list):
                return True
        except orjson.JSONDecodeError:
            continue
    last = rows[-1].lstrip() if len(rows) > 1 else b""
    return len(last) >= 1024 and last[:1] in (b"{", b"[") and not _binary(last)


def _looks_like(head: bytes, reason: str) -> str | None:
    """What a file that is not an export seems to be, from its first line (`reason`,
    the reader's, when that line is not text); None for text of no known kind."""
    try:
        text = head.split(b"\n", 1)[0].decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return reason
    if not text.isprintable():  # binary data that happens to decode
        return reason
    if text.startswith("<"):
        kind = "HTML or XML"
    elif "\t" in text:
        kind = "tab-separated values"
    elif "," in text or ";" in text:
        kind = "CSV"
    else:
        return None
    shown = text if len(text) <= 40 else text[:37] + "..."
    return (
        f"not a Segment export: its first line {shown!r} looks like {kind} "
        "(ctsync reads NDJSON or JSON)"
    )


def _mapping_source(name: str | None) -> str | Path | None:
    """`--mapping -` reads the mapping file from stdin (e.g. from `ctsync mappings show`)."""
    if name is None:
        return None
    if name == STDIN:
        return _read_stdin_text("--mapping -")
    path = Path(name)
    if path.is_dir():
        raise UsageError(f"{name}: a folder, not a mapping file (give the file's path)")
    if not path.is_file():
        raise UsageError(f"{name}: no such mapping file")
    return path


def _identity_lines(name: str, s3_endpoint_url: str | None) -> list[tuple[Origin, str]]:
    """The identities of `--from`: read like exports (gzip, BOM, CRLF, bucket paths); a
    folder or prefix, every file in it. A line that is JSON stops the command before
    anything is deleted: the file is an export or a report, not a list of identities
    (its lines would each have been deleted as one identity)."""
    try:
        lines = list(text_lines(name, InputOptions(s3_endpoint_url=s3_endpoint_url)))
    except OSError as exc:
        raise UsageError(f"{name}: cannot read the identity file ({exc.strerror})") from None
    for origin, value in lines:
        looks = None
        if value.lstrip()[:1] in ("{", "["):
            looks = "a JSON line, not an identity"
        elif _CONTROL.search(value) is not None:
            looks = "control characters (binary data?), not an identity"
        if looks is not None:
            raise UsageError(
                f"{describe_where(origin)}: {looks}: --from reads one identity (or "
                "CleverTap ID) a line, and this looks like another kind of file (an export, "
                "a report); nothing was deleted"
            )
    return lines


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # (a tab or a line end may surround a value)


def _client_settings(
    ctx: typer.Context,
    err: Stderr,
    connection: Connection,
    concurrency: ConcurrencyLimit,
    dry_run: bool,
) -> ClientSettings | None:
    """The client's settings from the connection options (None for a dry run, which
    sends nothing); missing or malformed credentials are a UsageError naming where they
    came from."""
    if dry_run:
        return None
    passcode = connection.passcode
    secret: Secret | None = None
    if connection.passcode_file is not None:
        if passcode and _from_command_line(ctx, "passcode"):
            raise UsageError(
                "--passcode and --passcode-file both give the passcode: give one of them "
                "(--passcode-file keeps it out of `ps`)"
            )
        secret = Secret.from_file(connection.passcode_file)
    elif passcode:
        from_command_line = _from_command_line(ctx, "passcode")
        secret = Secret(
            passcode, source="--passcode" if from_command_line else "CLEVERTAP_PASSCODE"
        )
        if from_command_line:
            err.print(
                "[yellow]warning:[/] --passcode on the command line is visible to other users "
                "in `ps`; set CLEVERTAP_PASSCODE or use --passcode-file instead"
            )
    account_id = (connection.account_id or "").strip()
    missing = [
        name
        for name, value in (
            ("--account-id (or CLEVERTAP_ACCOUNT_ID)", account_id),
            ("--passcode (or CLEVERTAP_PASSCODE, --passcode-file)", secret),
        )
        if not value
    ]
    if missing:
        raise UsageError(
            "missing CleverTap credentials: "
            + ", ".join(missing)
            + ". Find them in the dashboard under Settings > Project; or try --dry-run."
        )
    assert secret is not None
    problem = header_value_problem(account_id)
    if problem:
        raise UsageError(f"--account-id (or CLEVERTAP_ACCOUNT_ID): the account ID {problem}")
    return ClientSettings(
        account_id=account_id,
        passcode=secret,
        base_url=resolve_base_url(connection.region, connection.endpoint),
        concurrency=concurrency,
        timeout=connection.timeout,
        retry=RetryPolicy(max_retries=connection.max_retries),
    )


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _total_size(sources: list[Source]) -> int | None:
    sizes = [s.size for s in sources]
    return None if any(size is None for size in sizes) else sum(s for s in sizes if s is not None)


def _progress(
    err: Stderr, wanted: bool | None, quiet: bool, total: int | None
) -> RunView | contextlib.nullcontext[None]:
    """Live progress at a terminal; with --progress elsewhere a plain line every 10 s;
    otherwise only the notice of a first Ctrl-C (none at all with --quiet)."""
    if quiet:
        return contextlib.nullcontext()
    from ctsync.console import PlainProgress, ProgressView, RunView  # (Rich: not if quiet)

    show = err.is_terminal if wanted is None else wanted
    if not show:
        return RunView(err.console, total)
    if err.is_terminal:
        return ProgressView(err.console, total)
    return PlainProgress(err.console, total)


def _error_console() -> Stderr:
    """stderr. What it shows from outside (answers, library errors) is masked where it
    enters (`ctsync.redact`), so ctsync's own sentences are never masked."""
    forget_all()  # a new run: only its own passcode is masked (tests run many in one process)
    return Stderr()


def _named_pipes(sources: list[Source]) -> list[str]:
    """The inputs that are named pipes: opening one waits, silently, for a writer."""
    found = []
    for source in sources:
        if isinstance(source, LocalFile):
            with contextlib.suppress(OSError):
                # (lstat: `<(cmd)` is /dev/fd/N, a link to a pipe whose writer runs)
                if stat.S_ISFIFO(os.lstat(source.file).st_mode):
                    found.append(source.name)
    return found


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _read_stdin_text(what: str) -> str:
    """All of stdin as text, for `--mapping -` and `--from -`."""
    if sys.stdin is None:
        raise UsageError(f"{what}: standard input is closed; give a file instead")
    if sys.stdin.isatty():
        Stderr().print(
            f"ctsync: {what} reads standard input (Ctrl-D to finish, Ctrl-C to stop)",
            highlight=False,
        )
    return sys.stdin.read()


def _confirm_delete(
    err: Stderr, identities: list[tuple[Origin, str]], guid: bool, client: ClientSettings
) -> None:
    """At a terminal, say how many profiles will go, from which account and endpoint, and
    ask: deletion is irreversible. Anything but yes exits 1, nothing deleted. A value
    named twice is one profile (the run deletes it once)."""
    count = len({value.strip() for _, value in identities if value.strip()})
    named = plural(count, "CleverTap ID") if guid else plural(count, "identity", "identities")
    err.print(
        f"ctsync: this deletes the CleverTap profiles of {named} from account "
        f"{client.account_id} at {client.base_url}; deleted profiles cannot be restored.",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    try:
        answer = _ask("Delete them? [y/N]: ")
    except KeyboardInterrupt:  # Ctrl-C at the question: as anywhere else
        err.print("\nctsync: interrupted; nothing deleted", highlight=False)
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    if answer is None:  # Ctrl-D: no answer, so not a yes
        err.print()
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        err.print("ctsync: nothing deleted", highlight=False)
        raise typer.Exit(ExitCode.INCOMPLETE)


def _ask(question: str) -> str | None:
    """The line typed at the terminal after `question`; None on Ctrl-D. A Ctrl-C raises
    KeyboardInterrupt whenever it comes (`read_terminal`: click's prompt reads with
    input(), which can miss one that lands just before its read starts)."""
    typer.echo(question, nl=False, err=True)
    fd = sys.stdin.fileno()
    line = b""
    while not line.endswith(b"\n"):
        data = read_terminal(fd, 1024)
        if not data:
            return line.decode(errors="replace") if line else None
        line += data
    return line.decode(errors="replace")


def _finish(summary: Summary, err: Stderr, outputs: OutputOptions) -> NoReturn:
    _show(summary, err, json_out=outputs.json_out, quiet=outputs.quiet)
    if summary.interrupted:
        code = ExitCode.TERMINATED if summary.signal == "SIGTERM" else ExitCode.INTERRUPTED
    else:
        code = ExitCode.OK if summary.complete else ExitCode.INCOMPLETE
    raise typer.Exit(code)


def _show(summary: Summary, err: Stderr, *, json_out: bool, quiet: bool) -> None:
    """The summary: one JSON object on stdout with --json, else a table on stderr."""
    if json_out:
        try:
            sys.stdout.buffer.write(
                orjson.dumps(summary.as_dict(), option=orjson.OPT_APPEND_NEWLINE)
            )
            sys.stdout.flush()
        except BrokenPipeError:  # `ctsync ... --json | head`: the reader is gone
            quiet_stdout()
        except OSError as exc:
            err.print(f"[bold red]ctsync:[/] cannot write the summary ({exc.strerror})")
            raise typer.Exit(ExitCode.USAGE) from None
    elif not quiet:
        from ctsync.console import render_summary  # (Rich: not if quiet)

        render_summary(summary, err.console)


@contextlib.contextmanager
def _errors_to_exit(err: Stderr, *, json_out: bool = False, quiet: bool = False) -> Iterator[None]:
    """A CtsyncError becomes one line on stderr and its exit code: no traceback for a
    person's mistake. When it stopped a run that had started, the summary comes first."""
    try:
        yield
    except CtsyncError as exc:
        if exc.summary is not None:
            _show(exc.summary, err, json_out=json_out, quiet=quiet)
        err.print("[bold red]ctsync:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]ctsync: interrupted[/]")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
