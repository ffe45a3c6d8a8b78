"""ctsync as a library: the same runs the command line makes, callable from Python.

    from ctsync.api import UploadJob, upload
    summary = upload(UploadJob(paths=["events.ndjson.gz"], client=settings))

`client=None` is a dry run: everything but sending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from ctsync.client import CleverTapClient
from ctsync.errors import UsageError
from ctsync.ledger import Ledger, Summary
from ctsync.pipeline import (
    DryRunSender,
    Observer,
    RunOptions,
    Sender,
    UploadRun,
    Validator,
    deletion_mapper,
    deletion_records,
)
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.reader import collect_sources
from ctsync.records import DeleteKey, Mapper, Origin
from ctsync.settings import ClientSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class Outputs:
    """Files a run writes: the per-record report, dead letters, dry-run requests."""

    report: Path | None = None
    failed: Path | None = None
    requests: Path | None = None  # --output, dry run only


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadJob:
    """Everything `ctsync upload` does, as data."""

    paths: Sequence[str] = ()
    client: ClientSettings | None = None  # None: dry run
    preset: Preset = Preset.ACTIONS
    mapping: MappingOptions = field(default_factory=MappingOptions)
    run: RunOptions = field(default_factory=RunOptions)
    outputs: Outputs = field(default_factory=Outputs)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteJob:
    """Everything `ctsync delete` does: `identities` are (origin, value) pairs."""

    identities: Sequence[tuple[Origin, str]]
    key: DeleteKey = "identity"
    client: ClientSettings | None = None
    outputs: Outputs = field(default_factory=Outputs)


def upload(
    job: UploadJob,
    *,
    mapper: Mapper | None = None,
    validator: Validator | None = None,
    observer: Observer | None = None,
    stdin: IO[bytes] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Run an upload to the end and return its summary. Raises CtsyncError subclasses for
    what stops a run (bad paths, refused credentials)."""
    sources = collect_sources(job.paths)
    mapper = mapper or build_preset(job.preset, job.mapping)
    with _files(job.outputs) as (report, failed, requests):
        ledger = Ledger(report=report, dead_letters=failed)

        async def go(sender: Sender) -> Summary:
            run = UploadRun(
                sources,
                mapper=mapper,
                sender=sender,
                ledger=ledger,
                options=job.run,
                validator=validator,
                observer=observer,
                stdin=stdin,
            )
            return await run.run()

        return asyncio.run(_with_sender(job.client, requests, transport, go))


def delete(
    job: DeleteJob,
    *,
    observer: Observer | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Delete profiles by identity (or CleverTap ID) and return the summary."""
    with _files(job.outputs) as (report, failed, requests):
        ledger = Ledger(report=report, dead_letters=failed)

        async def go(sender: Sender) -> Summary:
            run = UploadRun(
                records=deletion_records(job.identities),
                mapper=deletion_mapper(job.key),
                sender=sender,
                ledger=ledger,
                observer=observer,
            )
            return await run.run()

        return asyncio.run(_with_sender(job.client, requests, transport, go))


async def _with_sender(
    client: ClientSettings | None,
    requests: IO[bytes] | None,
    transport: httpx.AsyncBaseTransport | None,
    go: Callable[[Sender], Awaitable[Summary]],
) -> Summary:
    if client is None:
        summary = await go(DryRunSender(requests))
        summary.dry_run = True
        return summary
    async with CleverTapClient(client, transport=transport) as sender:
        return await go(sender)


@contextlib.contextmanager
def _files(
    outputs: Outputs,
) -> Iterator[tuple[IO[bytes] | None, IO[bytes] | None, IO[bytes] | None]]:
    with contextlib.ExitStack() as stack:

        def open_for_writing(path: Path | None, what: str) -> IO[bytes] | None:
            if path is None:
                return None
            try:
                return stack.enter_context(open(path, "wb"))
            except OSError as exc:
                raise UsageError(f"{path}: cannot write the {what} ({exc.strerror})") from None

        yield (
            open_for_writing(outputs.report, "report"),
            open_for_writing(outputs.failed, "dead-letter file"),
            open_for_writing(outputs.requests, "request output"),
        )
