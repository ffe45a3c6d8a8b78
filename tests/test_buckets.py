"""s3:// and gs:// inputs against real local servers on 127.0.0.1: moto's S3 server and
gcp-storage-emulator, each started by these tests and stopped after them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import http.server
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import orjson
import pytest
from google.cloud import storage
from typer.testing import CliRunner

from ctsync import remote
from ctsync.cli import app
from ctsync.errors import UsageError
from ctsync.reader import InputOptions, OpenSource, collect_inputs, read_source
from tests.helpers import identify, serving

runner = CliRunner()
BIN = Path(sys.executable).parent
STARTUP_SECONDS = 30.0
DAY = "segment-logs/Xa1b2/1732579200000/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a local server until the test module is done; its URL on 127.0.0.1."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start on 127.0.0.1:{port}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake AWS credentials, no profile files, no instance metadata, no proxy."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "CLEVERTAP_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    port = free_port()
    with server([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port) as url:
        yield url


@pytest.fixture(scope="module")
def gcs_url() -> Iterator[str]:
    port = free_port()
    command = [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1"]
    with server([*command, "--port", str(port), "--in-memory"], port) as url:
        yield url


def ndjson(*messages: object) -> bytes:
    return b"".join(orjson.dumps(m) + b"\n" for m in messages)


def s3_client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url)


def new_bucket(s3: Any, name: str) -> str:
    s3.create_bucket(Bucket=name)
    return name


def dry_run(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = runner.invoke(app, ["upload", *args, "--dry-run", "--json"], env=env)
    summary = orjson.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, summary, result.stderr


# -- S3 ---------------------------------------------------------------------------------


def test_s3_segment_layout_is_read_in_key_order_and_stray_objects_are_named(
    s3_url: str,
) -> None:
    s3 = s3_client(s3_url)
    bucket = new_bucket(s3, "segment-layout")
    s3.put_object(
        Bucket=bucket,
        Key=DAY + "1732590000000.0b4d21.gz",
        Body=gzip.compress(ndjson(identify("u3"))),
    )
    s3.put_object(
        Bucket=bucket,
        Key=DAY + "1732580000000.7f3a9c.gz",
        Body=gzip.compress(ndjson(identify("u1"), identify("u2"))),
    )
    s3.put_object(Bucket=bucket, Key=DAY + "_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key=DAY + "manifest.csv", Body=b"key,size\n")
    s3.put_object(
        Bucket=bucket,
        Key="segment-logs/Xa1b2-other/1.gz",
        Body=gzip.compress(ndjson(identify("other"))),
    )

    inputs = collect_inputs(
        [f"s3://{bucket}/segment-logs/Xa1b2"], InputOptions(s3_endpoint_url=s3_url)
    )
    assert [s.url for s in inputs.sources] == [
        f"s3://{bucket}/{DAY}1732580000000.7f3a9c.gz",
        f"s3://{bucket}/{DAY}1732590000000.0b4d21.gz",
    ]
    assert all(s.version and s.state_key == s.url for s in inputs.sources)
    users = [
        r.message["userId"]
        for s in inputs.sources
        for r in read_source(OpenSource(s))
        if r.message is not None
    ]
    assert users == ["u1", "u2", "u3"]
    assert {Path(s.name).name: s.reason for s in inputs.skipped}.keys() == {
        "_SUCCESS",
        "manifest.csv",
    }

    code, summary, _ = dry_run(f"s3://{bucket}/segment-logs/Xa1b2/", "--s3-endpoint-url", s3_url)
    assert (code, summary["read"], summary["accepted"]) == (0, 3, 3)
    assert any(note.endswith("_SUCCESS: skipped, empty") for note in summary["notes"])


def test_s3_single_object_and_the_standard_endpoint_variable(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = s3_client(s3_url)
    bucket = new_bucket(s3, "single")
    s3.put_object(Bucket=bucket, Key="a/export", Body=ndjson(identify("u1")))
    s3.put_object(Bucket=bucket, Key="a/export-2", Body=ndjson(identify("u2")))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_url)  # read by boto3 itself
    code, summary, _ = dry_run(f"s3://{bucket}/a/export")
    assert (code, summary["read"]) == (0, 1)


def stamped(user: str, timestamp: str) -> dict[str, Any]:
    return {**identify(user), "timestamp": timestamp}


# Segment day folders (epoch ms of UTC midnights) from 2024-02-27 to 2024-03-01 (2024 is
# a leap year), each holding a message stamped at noon of its day, and one received just
# before the folder's day ended from a sender whose clock ran 23 hours ahead: stamped
# 23:00Z the next day, written at +02:00.
WINDOW_DAYS = {
    "1708992000000": ("2024-02-27", "2024-02-29T01:00:00+02:00"),
    "1709078400000": ("2024-02-28", "2024-03-01T01:00:00+02:00"),
    "1709164800000": ("2024-02-29", "2024-03-02T01:00:00+02:00"),
    "1709251200000": ("2024-03-01", "2024-03-03T01:00:00+02:00"),
}


def window_objects() -> dict[str, bytes]:
    objects = {}
    for folder, (day, ahead) in WINDOW_DAYS.items():
        messages = ndjson(stamped(f"noon-{day}", f"{day}T12:00:00Z"), stamped("ahead", ahead))
        objects[f"segment-logs/src1/{folder}/{folder}.a1b2.gz"] = gzip.compress(messages)
    # Neither of these could be read: a folder passed over is never even sniffed.
    objects["segment-logs/src1/1708992000000/broken.gz"] = b"\x1f\x8b" + b"not gzip"
    objects["segment-logs/src1/1708992000000/_SUCCESS"] = b""
    return objects


def test_s3_window_passes_over_day_folders_before_since(s3_url: str) -> None:
    s3 = s3_client(s3_url)
    bucket = new_bucket(s3, "window")
    for key, body in window_objects().items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    code, summary, _ = dry_run(
        f"s3://{bucket}/segment-logs/", "--s3-endpoint-url", s3_url, "--since", "2024-03-01"
    )
    # Passed over: 02-27 (3 objects) and 02-28 (its latest message, clock skew included,
    # is 2024-02-29T23:00Z). Read: 02-29 and 03-01. Sent: 02-29's clock-ahead message
    # (2024-03-01T23:00Z) and both of 03-01's.
    assert (code, summary["read"], summary["accepted"]) == (0, 4, 3)
    assert summary["skipped_by_reason"] == {"outside-window": 1}
    assert summary["unreadable_files"] == 0
    assert "4 files not read: in Segment day folders" in " ".join(summary["notes"])
    assert not any("_SUCCESS" in note for note in summary["notes"])


@pytest.mark.slow
def test_s3_prefix_of_thousands_of_objects_is_listed_across_pages(s3_url: str) -> None:
    s3 = s3_client(s3_url)
    bucket = new_bucket(s3, "many")
    count = 2100  # S3 lists at most 1000 keys a page
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(Bucket=bucket, Key=f"day/{i:05d}.gz", Body=b""),
                range(count),
            )
        )
    s3.put_object(Bucket=bucket, Key="day/99999.gz", Body=gzip.compress(ndjson(identify("u"))))
    inputs = collect_inputs([f"s3://{bucket}/day"], InputOptions(s3_endpoint_url=s3_url))
    assert [s.url for s in inputs.sources] == [f"s3://{bucket}/day/99999.gz"]
    assert len(inputs.skipped) == count
    assert [s.name for s in inputs.skipped[:2]] == [
        f"s3://{bucket}/day/00000.gz",
        f"s3://{bucket}/day/00001.gz",
    ]
    assert inputs.skipped[-1].name == f"s3://{bucket}/day/{count - 1:05d}.gz"


def test_an_object_rewritten_after_listing_is_not_read_as_a_mix(s3_url: str) -> None:
    s3 = s3_client(s3_url)
    bucket = new_bucket(s3, "rewritten")
    s3.put_object(Bucket=bucket, Key="d/1.gz", Body=gzip.compress(ndjson(identify("old"))))
    (listed,) = collect_inputs([f"s3://{bucket}/d/"], InputOptions(s3_endpoint_url=s3_url)).sources
    s3.put_object(Bucket=bucket, Key="d/1.gz", Body=gzip.compress(ndjson(identify("new"))))
    (again,) = collect_inputs([f"s3://{bucket}/d/"], InputOptions(s3_endpoint_url=s3_url)).sources
    assert again.version != listed.version  # what a state file keys a rewrite on
    with pytest.raises(OSError, match="rewritten"):
        OpenSource(listed)
    assert [r.message for r in read_source(OpenSource(again))] == [identify("new")]


def test_s3_refused_credentials_exit_2_naming_the_bucket_without_a_traceback() -> None:
    port = free_port()
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with server(command, port, env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        code, _, err = dry_run("s3://private-exports/segment-logs/", "--s3-endpoint-url", url)
    assert code == 2
    assert "s3://private-exports: access refused" in err
    assert "Traceback" not in err and "testing-secret" not in err


def test_s3_missing_bucket_and_missing_credentials_are_usage_errors(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = dry_run("s3://no-such-bucket/x/", "--s3-endpoint-url", s3_url)
    assert (code, err.strip()) == (2, "ctsync: s3://no-such-bucket: no such bucket")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UsageError, match="no AWS credentials found"):
        collect_inputs(["s3://segment-layout/x/"], InputOptions(s3_endpoint_url=s3_url))


def test_run_from_a_checkout_the_install_command_is_the_checkouts_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From a checkout (as the README's quick start runs it), `pip install 'ctsync[s3]'`
    would fetch ctsync from the index, into whatever `pip` is first on PATH: the hint
    names the checkout's extra and the interpreter running ctsync."""
    monkeypatch.setitem(sys.modules, "boto3", None)
    root = remote.checkout()
    assert root is not None and (root / "ctsync" / "remote.py").is_file()
    with pytest.raises(UsageError) as caught:
        collect_inputs(["s3://bucket/prefix/"])
    assert str(caught.value) == (
        "s3:// paths need boto3, which is not installed: "
        f"{sys.executable} -m pip install -e '{root}[s3]'"
    )


def test_a_bucket_path_without_the_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now fails
    monkeypatch.setattr(remote, "checkout", lambda: None)  # an installed ctsync
    with pytest.raises(UsageError, match=r"pip install 'ctsync\[s3\]'"):
        collect_inputs(["s3://bucket/prefix/"])
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    with pytest.raises(UsageError, match=r"pip install 'ctsync\[gcs\]'"):
        collect_inputs(["gs://bucket/prefix/"])


def test_mappings_check_and_delete_read_bucket_paths(s3_url: str, tmp_path: Path) -> None:
    s3 = s3_client(s3_url)
    bucket = new_bucket(s3, "other-commands")
    s3.put_object(Bucket=bucket, Key="gdpr.txt.gz", Body=gzip.compress(b"u-1\nu-2\n"))
    s3.put_object(Bucket=bucket, Key="samples.gz", Body=gzip.compress(ndjson(identify("u1"))))
    out = tmp_path / "requests.ndjson"
    result = runner.invoke(
        app,
        [
            "delete",
            "--from",
            f"s3://{bucket}/gdpr.txt.gz",
            "--dry-run",
            "--output",
            str(out),
            "--s3-endpoint-url",
            s3_url,
        ],
    )
    assert result.exit_code == 0, result.output
    # (deletions go out by lane: gather the identities of every request)
    bodies = [orjson.loads(line)["body"] for line in out.read_bytes().splitlines()]
    assert sorted(i for body in bodies for i in body["identity"]) == ["u-1", "u-2"]
    mapping = tmp_path / "m.json"
    mapping.write_text(runner.invoke(app, ["mappings", "show"]).stdout)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_S3", s3_url)
        checked = runner.invoke(
            app, ["mappings", "check", str(mapping), f"s3://{bucket}/samples.gz"]
        )
    assert checked.exit_code == 0, checked.output
    assert "line 1: fires: Event Type is Identify" in checked.stdout


def test_delete_from_a_prefix_reads_every_identity_object_in_it(
    s3_url: str, tmp_path: Path
) -> None:
    # A prefix was looked into as a folder of exports: its lists of identities skipped.
    s3 = s3_client(s3_url)
    bucket = new_bucket(s3, "gdpr-prefix")
    s3.put_object(Bucket=bucket, Key="gdpr/2024-05-01.txt", Body=b"u-1\nu-2\n")
    s3.put_object(Bucket=bucket, Key="gdpr/2024-05-02.txt.gz", Body=gzip.compress(b"u-3\n"))
    s3.put_object(Bucket=bucket, Key="gdpr/_SUCCESS", Body=b"")
    out = tmp_path / "requests.ndjson"
    args = ["delete", "--from", f"s3://{bucket}/gdpr/", "--dry-run", "--output", str(out)]
    result = runner.invoke(app, [*args, "--s3-endpoint-url", s3_url])
    assert result.exit_code == 0, result.output
    bodies = [orjson.loads(line)["body"] for line in out.read_bytes().splitlines()]
    assert sorted(i for body in bodies for i in body["identity"]) == ["u-1", "u-2", "u-3"]
    s3.put_object(Bucket=bucket, Key="gdpr/export.ndjson", Body=ndjson(identify("u1")))
    out.unlink()
    refused = runner.invoke(app, [*args, "--s3-endpoint-url", s3_url])
    assert refused.exit_code == 2, refused.output
    assert f"s3://{bucket}/gdpr/export.ndjson:1: a JSON line, not an identity" in refused.stderr
    assert not out.exists() or out.read_bytes() == b""


# -- Google Cloud Storage ----------------------------------------------------------------


@pytest.fixture
def gcs(gcs_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_url)
    from google.auth.credentials import AnonymousCredentials

    return storage.Client(project="test", credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]


def test_gcs_segment_layout_is_read_in_key_order(gcs: Any) -> None:
    bucket = gcs.create_bucket("gcs-layout")
    bucket.blob(DAY + "1732590000000.0b4d21.gz").upload_from_string(
        gzip.compress(ndjson(identify("u3")))
    )
    bucket.blob(DAY + "1732580000000.7f3a9c.gz").upload_from_string(
        gzip.compress(ndjson(identify("u1"), identify("u2")))
    )
    bucket.blob(DAY + "_SUCCESS").upload_from_string(b"")
    code, summary, _ = dry_run("gs://gcs-layout/segment-logs/")
    assert (code, summary["read"], summary["accepted"]) == (0, 3, 3)
    assert any(note.endswith("_SUCCESS: skipped, empty") for note in summary["notes"])
    sources = collect_inputs(["gs://gcs-layout/segment-logs"]).sources
    assert [s.url for s in sources] == [
        f"gs://gcs-layout/{DAY}1732580000000.7f3a9c.gz",
        f"gs://gcs-layout/{DAY}1732590000000.0b4d21.gz",
    ]
    users = [
        r.message["userId"]
        for s in sources
        for r in read_source(OpenSource(s))
        if r.message is not None
    ]
    assert users == ["u1", "u2", "u3"]


def test_gcs_window_passes_over_day_folders_before_since(gcs: Any) -> None:
    bucket = gcs.create_bucket("gcs-window")
    for key, body in window_objects().items():
        bucket.blob(key).upload_from_string(body)
    code, summary, _ = dry_run(
        "gs://gcs-window/segment-logs/src1", "--since", "2024-02-29", "--until", "2024-03-01"
    )
    # Passed over: 02-27. Read: 02-28, 02-29, 03-01. Sent: 02-28's clock-ahead message
    # (2024-02-29T23:00Z) and 02-29's noon.
    assert (code, summary["read"], summary["accepted"]) == (0, 6, 2)
    assert "3 files not read" in " ".join(summary["notes"])


def test_gcs_rewritten_object_has_a_new_generation(gcs: Any) -> None:
    bucket = gcs.create_bucket("gcs-rewritten")
    bucket.blob("d/1.gz").upload_from_string(gzip.compress(ndjson(identify("old"))))
    (listed,) = collect_inputs(["gs://gcs-rewritten/d/"]).sources
    bucket.blob("d/1.gz").upload_from_string(gzip.compress(ndjson(identify("new"))))
    (again,) = collect_inputs(["gs://gcs-rewritten/d/"]).sources
    assert again.version != listed.version  # what a state file keys a rewrite on
    # (Reading the old generation is not tried: the emulator ignores `generation` on reads
    # and serves the newest; GCS answers 404, which ends the read as an unreadable file.)
    assert [r.message for r in read_source(OpenSource(again))] == [identify("new")]


class Refusing(http.server.BaseHTTPRequestHandler):
    """A storage endpoint that refuses every request, as GCS does for a stranger."""

    def do_GET(self) -> None:
        body = orjson.dumps({"error": {"code": 403, "message": "caller has no access"}})
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_gcs_refused_credentials_exit_2_naming_the_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(Refusing) as url:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        code, _, err = dry_run("gs://private-exports/segment-logs/")
    assert code == 2
    assert "gs://private-exports: access refused" in err and "Traceback" not in err


class PagingProxy(http.server.BaseHTTPRequestHandler):
    """In front of the GCS emulator (which answers a listing whole), a listing paged as
    GCS's JSON API pages it: at most `maxResults` objects (GCS: 1,000 by default), and a
    `nextPageToken` to send back as `pageToken` for the rest. Other requests are passed
    through. Each listing request is kept in `listings`."""

    upstream: ClassVar[str] = ""
    listings: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        params = urllib.parse.parse_qs(query)
        listing = path.startswith("/storage/v1/b/") and path.endswith("/o")
        if listing:
            type(self).listings.append(params)
            query = urllib.parse.urlencode(
                {k: v for k, v in params.items() if k not in ("maxResults", "pageToken")},
                doseq=True,
            )
        request = urllib.request.Request(f"{self.upstream}{path}?{query}")
        if "Range" in self.headers:
            request.add_header("Range", self.headers["Range"])
        try:
            with urllib.request.urlopen(request) as answer:
                status, body = answer.status, answer.read()
                kind = answer.headers.get("Content-Type", "application/octet-stream")
        except urllib.error.HTTPError as refused:  # a 404 is an answer too: pass it on
            status, body = refused.code, refused.read()
            kind = refused.headers.get("Content-Type", "application/json")
        if listing:
            page = orjson.loads(body)
            items = sorted(page.get("items", []), key=lambda item: item["name"])
            size = int(params.get("maxResults", ["1000"])[0])
            start = int(params.get("pageToken", ["0"])[0])
            page["items"] = items[start : start + size]
            if start + size < len(items):
                page["nextPageToken"] = str(start + size)
            body = orjson.dumps(page)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_gcs_prefix_of_many_objects_is_listed_across_pages(
    gcs: Any, gcs_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator stores an object in time that grows with the bucket (1,000 objects
    take about 30 s), so a page is made small instead: 250 objects in pages of 60."""
    bucket = gcs.create_bucket("gcs-many")
    count = 250
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda i: bucket.blob(f"day/{i:05d}.gz").upload_from_string(b""), range(count))
        )
    bucket.blob("day/99999.gz").upload_from_string(gzip.compress(ndjson(identify("u"))))
    bucket.blob("other/1.gz").upload_from_string(gzip.compress(ndjson(identify("x"))))

    PagingProxy.upstream, PagingProxy.listings = gcs_url, []
    with serving(PagingProxy) as url:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        monkeypatch.setattr("ctsync.remote.GCS_PAGE_SIZE", 60)
        inputs = collect_inputs(["gs://gcs-many/day"])
        code, summary, _ = dry_run("gs://gcs-many/day/")
    assert [s.url for s in inputs.sources] == ["gs://gcs-many/day/99999.gz"]
    assert len(inputs.skipped) == count
    assert inputs.skipped[0].name == "gs://gcs-many/day/00000.gz"
    assert inputs.skipped[-1].name == f"gs://gcs-many/day/{count - 1:05d}.gz"
    tokens = [params.get("pageToken", [None])[0] for params in PagingProxy.listings]
    pages = [None, "60", "120", "180", "240"]
    assert tokens == pages + pages  # collect_inputs, then the dry run's own listing
    assert all(params["maxResults"] == ["60"] for params in PagingProxy.listings)
    assert (code, summary["read"], summary["accepted"]) == (0, 1, 1)


def test_gcs_without_credentials_exits_2_naming_the_bucket(tmp_path: Path) -> None:
    """No application-default credentials anywhere (no key file, no gcloud login, not on
    a Google machine: the metadata server is pointed at a closed local port)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_", "STORAGE_EMULATOR", "CLEVERTAP_"))
    }
    env.update(
        HOME=str(tmp_path),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        NO_GCE_CHECK="true",
        GCE_METADATA_HOST="127.0.0.1:9",
        GCE_METADATA_IP="127.0.0.1:9",
    )
    done = subprocess.run(
        [sys.executable, "-m", "ctsync", "upload", "gs://private-exports/logs/", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("ctsync: gs://private-exports: no Google credentials found")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


class FlakyBody:
    """A response body that drops the connection after `cut` bytes."""

    def __init__(self, data: bytes, cut: int | None) -> None:
        self.data, self.cut, self.at = data, cut, 0

    def read(self, size: int) -> bytes:
        if self.cut is not None and self.at >= self.cut:
            raise ConnectionResetError("connection reset by peer")
        end = self.at + size if self.cut is None else min(self.at + size, self.cut)
        out = self.data[self.at : end]
        self.at += len(out)
        return out

    def close(self) -> None:
        pass


def test_a_connection_lost_mid_object_resumes_where_it_stopped() -> None:
    from ctsync.reader import Source
    from ctsync.remote import S3Store

    data = ndjson(*[identify(f"u{i}") for i in range(3000)])  # about 190 KB
    calls: list[dict[str, Any]] = []

    class Client:
        def get_object(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            start = int(kwargs.get("Range", "bytes=0-")[6:-1])
            assert start < len(data)
            cut = None if len(calls) > 2 else 5000 * len(calls)  # two drops, then whole
            return {"Body": FlakyBody(data[start:], cut)}

    store = S3Store.__new__(S3Store)
    store.bucket, store._client = "b", Client()
    source = Source("s3://b/k", None, len(data), url="s3://b/k", version="v1", store=store)
    users = [r.message["userId"] for r in read_source(OpenSource(source)) if r.message]
    assert users == [f"u{i}" for i in range(3000)]
    # (each body's cut counts from where it starts: 5000, then 5000 + 10000)
    assert [c.get("Range") for c in calls] == [None, "bytes=5000-", "bytes=15000-"]
    assert all(c["IfMatch"] == '"v1"' and c["Key"] == "k" for c in calls)


def test_a_connection_lost_for_good_ends_the_object_as_unreadable() -> None:
    from ctsync.reader import Source
    from ctsync.remote import S3Store

    data = ndjson(*[identify(f"u{i}") for i in range(3000)])

    class Client:
        def get_object(self, **kwargs: Any) -> dict[str, Any]:
            start = int(kwargs.get("Range", "bytes=0-")[6:-1])
            return {"Body": FlakyBody(data[start:], 0 if start else 70_000)}

    store = S3Store.__new__(S3Store)
    store.bucket, store._client = "b", Client()
    source = Source("s3://b/k", None, len(data), url="s3://b/k", version="v1", store=store)
    records = list(read_source(OpenSource(source)))
    assert records[-1].origin.line == 0 and records[-1].error is not None
    assert "connection lost while reading" in records[-1].error.message
    assert 0 < len(records) - 1 < 3000  # what was read before the fault is kept
