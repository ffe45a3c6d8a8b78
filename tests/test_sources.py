"""Each kind of `Source` opens itself: a file, standard input (or a stream handed in),
a bucket object through its store."""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctsync import remote
from ctsync.errors import UsageError
from ctsync.remote import open_store
from ctsync.sources import (
    STDIN,
    BucketObject,
    InputOptions,
    LocalFile,
    ObjectInfo,
    ObjectReader,
    Source,
    StandardInput,
)


def test_the_fields_of_a_source_make_its_kind(tmp_path: Path) -> None:
    export = tmp_path / "a.ndjson"
    export.write_bytes(b"{}\n")
    assert type(Source(str(export), export, 3)) is LocalFile
    assert type(Source(STDIN, None, None)) is StandardInput
    assert type(Source("s3://b/k", None, 3, url="s3://b/k", version="e1")) is BucketObject
    # Made either way, a source is the same value.
    assert Source(str(export), export, 3) == LocalFile(str(export), export, 3)
    assert Source(STDIN, None, None) == StandardInput(STDIN, None, None)


def test_a_file_opens_itself_and_is_known_by_its_resolved_path(tmp_path: Path) -> None:
    export = tmp_path / "a.ndjson"
    export.write_bytes(b'{"type":"identify"}\n')
    link = tmp_path / "link.ndjson"
    link.symlink_to(export)
    source = LocalFile(str(link), link, 20)
    stream = source.open()
    try:
        assert stream.read(1 << 16) == b'{"type":"identify"}\n'
    finally:
        stream.close()
    assert source.state_key == str(export.resolve())
    assert source.resumable and source.grows


def test_standard_input_reads_the_stream_handed_in_and_leaves_it_open() -> None:
    given = io.BytesIO(b"{}\n")
    source = StandardInput(STDIN, None, None)
    stream = source.open(given)
    assert stream.read(10) == b"{}\n"
    stream.close()
    assert not given.closed, "the caller's stream is the caller's to close"
    assert source.state_key == STDIN
    assert not source.resumable


class _Store:
    scheme = "s3"
    bucket = "b"

    def __init__(self) -> None:
        self.opened: list[str] = []

    def stat(self, key: str) -> ObjectInfo | None:
        return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(())

    def head(self, info: ObjectInfo, size: int) -> bytes:
        return b""

    def open(self, source: BucketObject) -> ObjectReader:
        self.opened.append(source.key)
        return io.BytesIO(b"{}\n")


def test_a_bucket_object_opens_through_its_store_and_is_written_whole() -> None:
    store = _Store()
    source = BucketObject("s3://b/day/k.gz", None, 3, url="s3://b/day/k.gz", store=store)
    assert source.open().read(10) == b"{}\n"
    assert store.opened == ["day/k.gz"]
    assert source.key == "day/k.gz"
    assert source.state_key == "s3://b/day/k.gz"
    assert source.resumable and not source.grows


@pytest.mark.parametrize(
    ("scheme", "module", "says"),
    [
        ("s3", "boto3", "s3:// paths need boto3, which is not installed: pip install 'ctsync[s3]'"),
        (
            "gs",
            "google.cloud.storage",
            "gs:// paths need google-cloud-storage, which is not installed: "
            "pip install 'ctsync[gcs]'",
        ),
    ],
)
def test_a_bucket_without_its_extra_names_the_scheme_and_the_extra(
    monkeypatch: pytest.MonkeyPatch, scheme: str, module: str, says: str
) -> None:
    """The gs:// message said `gcs:// paths`, a scheme ctsync does not take."""
    monkeypatch.setattr(remote, "checkout", lambda: None)  # an installed ctsync
    real = importlib.import_module

    def missing(name: str, package: str | None = None) -> Any:
        if name == module:
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(UsageError) as refused:
        open_store(scheme, "bucket", InputOptions())
    assert str(refused.value) == says
