"""One source of truth per job: an `UploadJob` holds its inputs and builds its own mapper;
`upload` and `delete` take their connection options from one shared group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from ctsync import api
from ctsync.cli import Connection, OutputOptions, app
from ctsync.errors import UsageError
from ctsync.options import MappingOptions, Nested
from ctsync.presets import Preset
from ctsync.reader import collect_inputs
from tests.helpers import assert_accounted

runner = CliRunner()


def export(tmp_path: Path, name: str, users: list[str]) -> Path:
    path = tmp_path / name
    lines = [
        {"type": "track", "userId": u, "event": "Bought", "properties": {"cart": {"n": 1}}}
        for u in users
    ]
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in lines))
    return path


def test_a_job_takes_paths_or_collected_sources_not_both(tmp_path: Path) -> None:
    path = export(tmp_path, "a.ndjson", ["u1"])
    with pytest.raises(ValueError, match="not both"):
        api.UploadJob(paths=[str(path)], sources=collect_inputs([str(path)]))


def test_a_job_with_collected_sources_reads_those(tmp_path: Path) -> None:
    a = export(tmp_path, "a.ndjson", ["u1", "u2"])
    job = api.UploadJob(sources=collect_inputs([str(a)]), preset=Preset.CLASSIC)
    summary = api.upload(job)
    assert (summary.read, summary.accepted) == (2, 2)
    assert_accounted(summary)


def test_a_broken_mapping_file_stops_the_making_of_the_job(tmp_path: Path) -> None:
    broken = tmp_path / "mapping.json"
    broken.write_text('{"subscriptions": [')
    with pytest.raises(UsageError, match=r"mapping\.json"):
        api.UploadJob(paths=["-"], mapping_file=broken)


def test_each_run_of_a_job_has_its_own_mapper(tmp_path: Path) -> None:
    """Mappers count what they drop: a job run twice reports the same counts twice."""
    a = export(tmp_path, "a.ndjson", ["u1", "u2"])
    job = api.UploadJob(
        paths=[str(a)], preset=Preset.CLASSIC, mapping=MappingOptions(nested=Nested.DROP)
    )
    first, second = api.upload(job), api.upload(job)
    assert first.dropped.total() == 2
    assert second.dropped == first.dropped


def params(command: str) -> dict[str, Any]:
    """The click parameters of a subcommand, by name (typer may vendor its own click)."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    return {p.name: p for p in commands[command].params if p.name}


def test_upload_and_delete_share_every_connection_option() -> None:
    upload, delete = params("upload"), params("delete")
    for name in Connection.__slots__:
        a, b = upload[name], delete[name]
        assert (a.opts, a.envvar, a.default) == (b.opts, b.envvar, b.default), name
        assert a.help == b.help, name
    # --concurrency is each command's own (deletes go at most 3 at a time); both adapt.
    assert (upload["concurrency"].default, delete["concurrency"].default) == ("auto", "auto")


def test_upload_and_delete_share_every_output_option() -> None:
    upload, delete = params("upload"), params("delete")
    for name in OutputOptions.__slots__:
        a, b = upload[name], delete[name]
        assert (a.opts, a.secondary_opts, a.default, a.help) == (
            b.opts,
            b.secondary_opts,
            b.default,
            b.help,
        ), name
    assert {"dry_run", "output", "report", "failed", "json_out", "progress", "quiet"} <= set(
        OutputOptions.__slots__
    )


def test_a_python_callers_concurrency_is_honoured(tmp_path: Path) -> None:
    """`ClientSettings(concurrency=4)` from Python, with no command line: at most 4
    requests in flight, and the run's lanes follow the client (4, not CleverTap's 15)."""
    import asyncio

    import httpx

    from ctsync.run import RunOptions
    from ctsync.settings import ClientSettings, Secret
    from tests.helpers import confirm_every_record

    lines = [
        {"type": "identify", "userId": f"u{i}", "timestamp": "2024-05-01T00:00:00Z"}
        for i in range(60)
    ]
    path = tmp_path / "identifies.ndjson"
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in lines))
    in_flight, most = 0, 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.002)  # let the other lanes' requests come in meanwhile
        in_flight -= 1
        return confirm_every_record(request)

    client = ClientSettings(
        account_id="acct",
        passcode=Secret("python-caller-0001"),
        base_url="http://clevertap.test",
        concurrency=4,
    )
    job = api.UploadJob(paths=[str(path)], client=client, run=RunOptions(batch_size=1))
    assert job.run_options().lanes == 4
    assert api.UploadJob(paths=[str(path)]).run_options().lanes == 15, "a dry run keeps its own"
    few = api.UploadJob(paths=[str(path)], client=client, run=RunOptions(lanes=2))
    assert few.run_options().lanes == 2, "fewer lanes asked for are kept"
    summary = api.upload(job, transport=httpx.MockTransport(answer))
    assert (summary.read, summary.accepted) == (60, 60)
    assert summary.requests == 60
    assert 1 <= most <= 4


def test_only_a_run_that_may_delete_remembers_its_links(tmp_path: Path) -> None:
    # The classic preset never deletes: what links merged (up to ~90 MB) is no use there.
    mapping = tmp_path / "m.json"
    mapping.write_text(runner.invoke(app, ["mappings", "show", "--preset", "classic"]).stdout)
    classic = api.UploadJob(paths=["-"], preset=Preset.CLASSIC)
    assert not classic.run_options().remember_links
    assert api.UploadJob(paths=["-"], preset=Preset.ACTIONS).run_options().remember_links
    with_file = api.UploadJob(paths=["-"], preset=Preset.CLASSIC, mapping_file=mapping)
    assert with_file.run_options().remember_links, "a mapping file may link and delete"
