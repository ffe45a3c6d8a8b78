"""`--state` over s3:// and gs:// inputs, against moto's S3 server and gcp-storage-emulator
on 127.0.0.1 (started by these tests): an object is identified by bucket, key, size and
version (S3's ETag, GCS's generation), so a cron over a prefix sends each object once,
resumes a half-done object from its line, and reads a rewritten object again."""

from __future__ import annotations

import gzip
import itertools
import os
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from ctsync import api
from ctsync.errors import AuthError
from ctsync.ledger import Summary
from ctsync.reader import InputOptions
from ctsync.run import RunOptions
from ctsync.sandbox import SandboxConfig, running_sandbox
from ctsync.settings import ClientSettings
from ctsync.summary import Routine
from tests import test_buckets as buckets
from tests.e2e import _support as e2e
from tests.helpers import identify
from tests.test_buckets import DAY, ndjson, s3_client

# The local servers and the AWS environment of the bucket tests (fixtures, used by name).
aws_env, s3_url, gcs_url, gcs = buckets.aws_env, buckets.s3_url, buckets.gcs_url, buckets.gcs

_names = itertools.count()


def fresh_bucket(s3: Any) -> str:
    """A new, empty bucket (the S3 server lives as long as this module)."""
    name = f"state-{next(_names)}"
    s3.create_bucket(Bucket=name)
    return name


def users(first: int, count: int) -> list[dict[str, Any]]:
    return [identify(f"u{i}") for i in range(first, first + count)]


class CleverTap:
    """A stand-in CleverTap on an httpx transport: stores the identity of every record
    it is sent, in order; after `refuse_after` requests it answers 401 (and stores
    nothing), which stops the run as a wrong passcode does."""

    def __init__(self, refuse_after: int | None = None) -> None:
        self.received: list[str] = []
        self.refuse_after = refuse_after
        self.requests = 0

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            if self.refuse_after is not None and self.requests > self.refuse_after:
                return httpx.Response(401, json={"status": "fail", "error": "Unauthorized"})
            records = orjson.loads(request.content)["d"]
            self.received.extend(r["identity"] for r in records)
            return httpx.Response(
                200, json={"status": "success", "processed": len(records), "unprocessed": []}
            )

        return httpx.MockTransport(handle)


def upload(
    url: str,
    options: InputOptions,
    state: Path,
    server: CleverTap,
    settings: ClientSettings,
    batch_size: int = 10,
) -> Summary:
    """One `ctsync upload URL --state STATE` (one lane: requests go one at a time, so a
    401 leaves nothing on the wire and what the next run owes is exact)."""
    job = api.UploadJob(
        paths=[url],
        client=settings,
        state=state,
        inputs=options,
        run=RunOptions(batch_size=batch_size, lanes=1),
    )
    try:
        return api.upload(job, transport=server.transport())
    except AuthError as stopped:
        assert stopped.summary is not None
        return stopped.summary


# -- S3 ----------------------------------------------------------------------------------


def test_a_cron_over_an_s3_prefix_sends_each_object_once(
    s3_url: str, tmp_path: Path, settings: ClientSettings
) -> None:
    s3, options, state = s3_client(s3_url), InputOptions(s3_endpoint_url=s3_url), tmp_path / "st"
    bucket = fresh_bucket(s3)
    s3.put_object(Bucket=bucket, Key=DAY + "1.a.gz", Body=gzip.compress(ndjson(*users(0, 25))))
    s3.put_object(Bucket=bucket, Key=DAY + "2.b.gz", Body=ndjson(*users(25, 5)))
    prefix, server = f"s3://{bucket}/segment-logs/", CleverTap()

    first = upload(prefix, options, state, server, settings)
    assert (first.read, first.accepted) == (30, 30)
    assert server.received == [f"u{i}" for i in range(30)]

    for _ in range(3):  # night after night, nothing new: nothing sent, nothing read
        again = upload(prefix, options, state, server, settings)
        assert (again.read, len(server.received)) == (0, 30)
        assert again.routine[Routine.FINISHED_EARLIER] == 2

    # The next day's object arrives: only it is sent.
    s3.put_object(
        Bucket=bucket,
        Key="segment-logs/Xa1b2/1732665600000/3.c.gz",
        Body=gzip.compress(ndjson(*users(30, 3))),
    )
    third = upload(prefix, options, state, server, settings)
    assert (third.read, third.accepted) == (3, 3)
    assert server.received[30:] == ["u30", "u31", "u32"]


def test_a_stopped_run_resumes_a_half_done_object_with_exactly_the_rest(
    s3_url: str, tmp_path: Path, settings: ClientSettings
) -> None:
    s3, options, state = s3_client(s3_url), InputOptions(s3_endpoint_url=s3_url), tmp_path / "st"
    bucket = fresh_bucket(s3)
    s3.put_object(Bucket=bucket, Key="d/1.gz", Body=gzip.compress(ndjson(*users(0, 95))))
    s3.put_object(Bucket=bucket, Key="d/2", Body=ndjson(*users(95, 40)))
    prefix = f"s3://{bucket}/d/"

    # Four requests of 10 are taken, the fifth is refused: the run stops 40 records into
    # the first object, with the rest of it and all of the second still owed.
    refusing = CleverTap(refuse_after=4)
    stopped = upload(prefix, options, state, refusing, settings)
    assert refusing.received == [f"u{i}" for i in range(40)]
    assert stopped.accepted == 40 and stopped.balanced

    resumed_server = CleverTap()
    resumed = upload(prefix, options, state, resumed_server, settings)
    assert resumed_server.received == [f"u{i}" for i in range(40, 135)]  # exactly the rest
    assert resumed.accepted == 95 and resumed.balanced
    assert resumed.routine[Routine.DONE_EARLIER] == 40
    last = upload(prefix, options, state, CleverTap(), settings)
    assert last.read == 0


def test_a_rewritten_s3_object_is_sent_again_with_a_note(
    s3_url: str, tmp_path: Path, settings: ClientSettings
) -> None:
    s3, options, state = s3_client(s3_url), InputOptions(s3_endpoint_url=s3_url), tmp_path / "st"
    bucket = fresh_bucket(s3)
    before = ndjson(identify("aa"), identify("bb"))
    after = ndjson(identify("cc"), identify("dd"))
    assert len(before) == len(after)  # same size: only the ETag tells them apart
    s3.put_object(Bucket=bucket, Key="d/1.gz", Body=gzip.compress(before, mtime=0))
    s3.put_object(Bucket=bucket, Key="d/2.gz", Body=gzip.compress(ndjson(identify("ee"))))
    old_etag = s3.head_object(Bucket=bucket, Key="d/1.gz")["ETag"].strip('"')
    server = CleverTap()
    upload(f"s3://{bucket}/d/", options, state, server, settings)
    assert server.received == ["aa", "bb", "ee"]

    s3.put_object(Bucket=bucket, Key="d/1.gz", Body=gzip.compress(after, mtime=0))
    new_etag = s3.head_object(Bucket=bucket, Key="d/1.gz")["ETag"].strip('"')
    again = upload(f"s3://{bucket}/d/", options, state, server, settings)
    assert server.received == ["aa", "bb", "ee", "cc", "dd"]
    assert (again.read, again.accepted) == (2, 2)
    assert f"s3://{bucket}/d/1.gz: rewritten since the last run (ETag {old_etag} -> " in "\n".join(
        again.notes
    )
    assert any(new_etag in note for note in again.notes)
    assert upload(f"s3://{bucket}/d/", options, state, server, settings).read == 0


def test_an_object_whose_last_line_is_cut_is_finished_not_waited_for(
    s3_url: str, tmp_path: Path, settings: ClientSettings
) -> None:
    """A file may still be written to, so its incomplete last line waits for the next
    run; an object is never appended to (a rewrite is a new version), so the cut line
    is invalid now and the object finished, instead of being read again every night."""
    s3, options, state = s3_client(s3_url), InputOptions(s3_endpoint_url=s3_url), tmp_path / "st"
    bucket = fresh_bucket(s3)
    s3.put_object(Bucket=bucket, Key="d/1", Body=ndjson(identify("a")) + b'{"type":"ident')
    server = CleverTap()
    first = upload(f"s3://{bucket}/d/", options, state, server, settings)
    assert (first.read, first.accepted, first.invalid) == (2, 1, {"malformed-json": 1})
    second = upload(f"s3://{bucket}/d/", options, state, server, settings)
    assert second.read == 0 and server.received == ["a"]
    assert second.routine[Routine.FINISHED_EARLIER] == 1


def test_many_finished_objects_are_counted_not_listed_one_by_one(
    s3_url: str, tmp_path: Path, settings: ClientSettings
) -> None:
    s3, options, state = s3_client(s3_url), InputOptions(s3_endpoint_url=s3_url), tmp_path / "st"
    bucket = fresh_bucket(s3)
    for i in range(26):
        s3.put_object(Bucket=bucket, Key=f"d/{i:02d}", Body=ndjson(identify(f"u{i}")))
    upload(f"s3://{bucket}/d/", options, state, CleverTap(), settings)
    again = upload(f"s3://{bucket}/d/", options, state, CleverTap(), settings)
    assert again.note_lines() == ["26 inputs finished in an earlier run; skipped"]


@pytest.mark.slow
@examples(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    gzipped=st.lists(st.booleans(), min_size=3, max_size=3),
    batch_size=st.integers(1, 12),
    stops=st.lists(st.integers(0, 8), min_size=1, max_size=3),
)
def test_any_sequence_of_stops_sends_every_record_of_a_prefix_exactly_once(
    s3_url: str,
    settings: ClientSettings,
    sizes: list[int],
    gzipped: list[bool],
    batch_size: int,
    stops: list[int],
) -> None:
    """Runs stopped after any number of requests, then one that finishes: every record
    of every object reaches CleverTap once, in order, and a last run reads nothing."""
    s3, options = s3_client(s3_url), InputOptions(s3_endpoint_url=s3_url)
    bucket = fresh_bucket(s3)
    expected, first = [], 0
    for n, (size, packed) in enumerate(zip(sizes, gzipped, strict=False)):
        body = ndjson(*users(first, size))
        s3.put_object(Bucket=bucket, Key=f"p/{n}", Body=gzip.compress(body) if packed else body)
        expected += [f"u{i}" for i in range(first, first + size)]
        first += size
    received: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch) / "state.db"
        for stop in [*stops, None]:
            server = CleverTap(refuse_after=stop)
            summary = upload(f"s3://{bucket}/p/", options, state, server, settings, batch_size)
            assert summary.balanced
            received += server.received
        assert received == expected
        assert upload(f"s3://{bucket}/p/", options, state, CleverTap(), settings).read == 0


# -- GCS ---------------------------------------------------------------------------------


def test_gcs_objects_are_sent_once_resumed_and_sent_again_when_rewritten(
    gcs: Any, tmp_path: Path, settings: ClientSettings
) -> None:
    bucket = gcs.create_bucket("gcs-state")
    bucket.blob("d/1.gz").upload_from_string(gzip.compress(ndjson(*users(0, 30))))
    bucket.blob("d/2").upload_from_string(ndjson(*users(30, 5)))
    state, options, prefix = tmp_path / "st", InputOptions(), "gs://gcs-state/d/"

    stopped = CleverTap(refuse_after=2)
    upload(prefix, options, state, stopped, settings)
    assert stopped.received == [f"u{i}" for i in range(20)]
    resumed = CleverTap()
    upload(prefix, options, state, resumed, settings)
    assert resumed.received == [f"u{i}" for i in range(20, 35)]
    assert upload(prefix, options, state, CleverTap(), settings).read == 0

    old = bucket.get_blob("d/2").generation
    bucket.blob("d/2").upload_from_string(ndjson(*users(40, 2)))
    new = bucket.get_blob("d/2").generation
    assert new != old
    rewritten = CleverTap()
    summary = upload(prefix, options, state, rewritten, settings)
    assert rewritten.received == ["u40", "u41"]
    assert f"gs://gcs-state/d/2: rewritten since the last run (generation {old} -> {new}); " in (
        "\n".join(summary.notes)
    )


# -- a real process, killed ---------------------------------------------------------------


@pytest.fixture
def aws_process_env(s3_url: str) -> Iterator[dict[str, str]]:
    env = e2e.ctsync_env()
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="AKIATESTING",
        AWS_SECRET_ACCESS_KEY="testing-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL_S3=s3_url,
    )
    yield env


def test_kill_9_mid_object_then_resume_stores_no_event_twice(
    s3_url: str, aws_process_env: dict[str, str], tmp_path: Path
) -> None:
    """`ctsync upload s3://... --state` killed with SIGKILL while its requests are in
    flight, then run until it finishes: no event stored twice, every event stored or
    reported as outcome-unknown, and one more run sends nothing."""
    events = 1500
    s3 = s3_client(s3_url)
    bucket = fresh_bucket(s3)
    messages = [e2e.track(f"u-{i % 41}", "Played", i) for i in range(events)]
    s3.put_object(Bucket=bucket, Key=DAY + "1.gz", Body=gzip.compress(ndjson(*messages[:1000])))
    s3.put_object(Bucket=bucket, Key=DAY + "2", Body=ndjson(*messages[1000:]))
    state = tmp_path / "state.db"
    args: tuple[str | Path, ...] = (f"s3://{bucket}/segment-logs/", "--preset", "classic")
    args += ("--state", state, "--batch-size", "20", "--concurrency", "4")
    processes = e2e.Processes()
    try:
        with running_sandbox(SandboxConfig(latency_ms=30)) as sandbox:
            process = processes.start_upload(sandbox.url, *args, env=aws_process_env)
            e2e.wait_until(
                lambda: sandbox.stats().events > 0 or process.poll() is not None,
                20,
                "the first stored event",
            )
            assert process.poll() is None, e2e.finish(process).describe()
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            before = sandbox.stats().events
            runs = [e2e.run_upload(sandbox.url, *args, env=aws_process_env) for _ in range(2)]
            counts = e2e.seqs_of(sandbox.read(lambda store: store.events()))
    finally:
        processes.kill_all()
    assert 0 < before < events, "the kill came before the first or after the last event"
    for run in runs:
        e2e.assert_adds_up(run.summary)
    unknown = runs[0].summary["failed_by_code"].get("outcome-unknown", 0)
    # Whether a request was on the wire at the kill is a race: the first resume fails
    # exactly the records it reports outcome-unknown (exit 1), else none (exit 0).
    assert runs[0].returncode == (1 if unknown else 0), runs[0].describe()
    assert runs[1].returncode == 0, runs[1].describe()  # nothing left to send
    assert runs[1].summary["read"] == 0, "a finished prefix was read again"
    assert e2e.duplicates(counts) == 0, "an event was stored twice"
    missing = set(range(events)) - set(counts)
    assert len(missing) <= unknown, f"{len(missing)} events missing, {unknown} reported unknown"
    assert Counter(counts.values()) == Counter({1: events - len(missing)})
