"""`ctsync sandbox`: run a local fake CleverTap, or show what one stored.

The main CLI mounts `app` with `add_typer(app, name="sandbox")`; `python -m ctsync.sandbox`
runs it alone.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ctsync.errors import ExitCode, missing_folder
from ctsync.stderr import Stderr, escape

from ._config import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_CLI_PORT,
    DEFAULT_HOST,
    DEFAULT_PASSCODE,
    SandboxConfig,
    parse_latency,
)

# The server, the store and their dependencies load when a sandbox command runs, not when
# `ctsync` starts: every other command mounts this app without using it.

app = typer.Typer(
    name="sandbox",
    help="A local fake CleverTap server for tests, demos and benchmarks.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def run(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")] = (
        DEFAULT_HOST
    ),
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port; 0 picks a free one.")
    ] = DEFAULT_CLI_PORT,
    account_id: Annotated[
        str, typer.Option(metavar="ID", help="Accepted X-CleverTap-Account-Id.")
    ] = (DEFAULT_ACCOUNT_ID),
    passcode: Annotated[
        str, typer.Option(metavar="TEXT", help="Accepted X-CleverTap-Passcode.")
    ] = (DEFAULT_PASSCODE),
    db: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="SQLite file to store into (default: in memory)."),
    ] = None,
    latency_ms: Annotated[
        str,
        typer.Option(
            metavar="MS",
            help="Milliseconds to wait before answering each /1/ request: N, or LOW-HIGH"
            " for a delay drawn per request (requests then overtake each other).",
        ),
    ] = "0",
    fault_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="F",
            help="Share of /1/ requests answered 429, 500 or 503; stores nothing.",
        ),
    ] = 0.0,
    drop_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="F",
            help="Share of /1/ requests whose connection is aborted; stores nothing.",
        ),
    ] = 0.0,
    store_then_fail_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="F",
            help="Share of /1/ requests stored, then answered 500/504.",
        ),
    ] = 0.0,
    store_then_drop_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, metavar="F", help="Share of /1/ requests stored, then dropped."
        ),
    ] = 0.0,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Seed of the fault and latency draws.")
    ] = 0,
    max_concurrent_uploads: Annotated[
        int, typer.Option(min=1, metavar="N", help="Uploads at once before 429.")
    ] = 15,
    max_concurrent_deletes: Annotated[
        int, typer.Option(min=1, metavar="N", help="Deletes at once before 429.")
    ] = 3,
    sink: Annotated[
        bool,
        typer.Option(
            "--sink",
            help="Answer like CleverTap (auth, limits, latency, faults) that every record was"
            " processed, without checking or storing anything: a lean receiver for benchmarks.",
        ),
    ] = False,
) -> None:
    """Serve CleverTap's upload and delete API until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        config = SandboxConfig(
            host=host,
            port=port,
            account_id=account_id,
            passcode=passcode,
            db=db,
            latency_ms=parse_latency(latency_ms),
            fault_rate=fault_rate,
            drop_rate=drop_rate,
            store_then_fail_rate=store_then_fail_rate,
            store_then_drop_rate=store_then_drop_rate,
            seed=seed,
            max_concurrent_uploads=max_concurrent_uploads,
            max_concurrent_deletes=max_concurrent_deletes,
            sink=sink,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    from ._server import serve

    try:
        serve(config, _announce)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            _fail(
                f"port {port} on {host} is already in use (another sandbox?): stop it, or "
                "pick another port; --port 0 picks a free one"
            )
        if error.errno == errno.EADDRNOTAVAIL:
            _fail(f"cannot listen on {host}: not an address of this machine")
        _fail(f"cannot listen on {host}:{port} ({error.strerror or error})")
    except sqlite3.DatabaseError as error:
        _fail(_not_a_database(db, error))


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit 2: the person can fix this."""
    Stderr().print(
        f"[bold red]ctsync sandbox:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(ExitCode.USAGE)


def _not_a_database(db: Path | None, error: sqlite3.DatabaseError) -> str:
    why = missing_folder(db) if db is not None else None
    if why is not None:
        return f"{db}: cannot create the database: {why}"
    return (
        f"{db}: not a sandbox database ({error}); give the file a sandbox wrote with --db, "
        "or a new file name"
    )


def _announce(url: str) -> None:
    from ._process import LISTENING_PREFIX

    # Exactly one line, flushed: scripts and tests read the URL from it.
    sys.stdout.write(f"{LISTENING_PREFIX}{url}\n")
    sys.stdout.flush()


@app.command()
def show(
    db: Annotated[Path, typer.Option(metavar="FILE", help="The sandbox's SQLite file.")],
) -> None:
    """Print a summary of what a sandbox database holds."""
    from rich.console import Console

    from ._show import print_summary
    from ._store import SandboxStore

    try:
        store = SandboxStore.open(db, create=False)
    except FileNotFoundError as error:
        _fail(str(error))
    except sqlite3.DatabaseError as error:
        _fail(_not_a_database(db, error))
    except OSError as error:
        _fail(f"{db}: cannot open the sandbox database ({error.strerror or error})")
    try:
        print_summary(store, Console())
    except sqlite3.DatabaseError as error:
        _fail(_not_a_database(db, error))
    finally:
        store.close()
