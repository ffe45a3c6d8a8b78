"""`ctsync sandbox`: run a local fake CleverTap, or show what one stored.

The main CLI mounts `app` with `add_typer(app, name="sandbox")`; `python -m ctsync.sandbox`
runs it alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ._config import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_CLI_PORT,
    DEFAULT_HOST,
    DEFAULT_PASSCODE,
    SandboxConfig,
    parse_latency,
)
from ._process import LISTENING_PREFIX
from ._server import serve
from ._show import print_summary
from ._store import SandboxStore

app = typer.Typer(
    name="sandbox",
    help="A local fake CleverTap server for tests, demos and benchmarks.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)


@app.callback()
def run(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")
    ] = DEFAULT_CLI_PORT,
    account_id: Annotated[str, typer.Option(help="Accepted X-CleverTap-Account-Id.")] = (
        DEFAULT_ACCOUNT_ID
    ),
    passcode: Annotated[str, typer.Option(help="Accepted X-CleverTap-Passcode.")] = (
        DEFAULT_PASSCODE
    ),
    db: Annotated[
        Path | None, typer.Option(help="SQLite file to store into (default: in memory).")
    ] = None,
    latency_ms: Annotated[
        str,
        typer.Option(
            help="Milliseconds to wait before answering each /1/ request: N, or LOW-HIGH"
            " for a delay drawn uniformly per request (requests then overtake each other)."
        ),
    ] = "0",
    fault_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of /1/ requests answered 429, 500 or 503; stores nothing."
        ),
    ] = 0.0,
    drop_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of /1/ requests whose connection is aborted; stores nothing.",
        ),
    ] = 0.0,
    store_then_fail_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of /1/ requests stored, then answered 500 or 504 (outcome unknown).",
        ),
    ] = 0.0,
    store_then_drop_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of /1/ requests stored, then their connection aborted without an answer.",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault and latency draws.")] = 0,
    max_concurrent_uploads: Annotated[int, typer.Option(min=1)] = 15,
    max_concurrent_deletes: Annotated[int, typer.Option(min=1)] = 3,
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
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    serve(config, _announce)


def _announce(url: str) -> None:
    # Exactly one line, flushed: scripts and tests read the URL from it.
    sys.stdout.write(f"{LISTENING_PREFIX}{url}\n")
    sys.stdout.flush()


@app.command()
def show(
    db: Annotated[Path, typer.Option(help="The sandbox's SQLite file.")],
) -> None:
    """Print a summary of what a sandbox database holds."""
    try:
        store = SandboxStore.open(db, create=False)
    except FileNotFoundError as error:
        Console(stderr=True).print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    try:
        print_summary(store, Console())
    finally:
        store.close()
