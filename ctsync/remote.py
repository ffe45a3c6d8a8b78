"""Exports in buckets: `s3://bucket/prefix` and `gs://bucket/prefix` as inputs.

S3 through boto3 and GCS through google-cloud-storage (the extras `ctsync[s3]` and
`ctsync[gcs]`): each cloud's own SDK, so credentials come from its standard chain
(AWS: environment, profile, instance role; Google: application-default credentials)
with nothing of ours in between. Objects are listed in key order (listing is paged by
the SDK) and streamed: an object is never held whole in memory.

A URL naming an object is that object; otherwise it is a folder (`/` added), scanned
like a directory: each object whose first bytes are an export is an input, the others
are listed as skipped. An object keeps its ETag (S3) or generation (GCS) as `version`,
and is read at that version: an object rewritten while it is read ends the read with
an error instead of mixing two versions.

Errors a person can fix (no credentials, access refused, no such bucket) are UsageErrors
naming the bucket; failures while an object is read are OSErrors, which end that object
as an unreadable file.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctsync.errors import RemoteReadError as RemoteReadError
from ctsync.errors import UsageError
from ctsync.redact import redact
from ctsync.sources import (
    BucketObject,
    InputOptions,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
    SkippedFile,
    selected,
    sniff,
)

SCHEMES = ("s3://", "gs://")
SNIFF_THREADS = 8
READ_ATTEMPTS = 3  # a dropped connection resumes at the byte where it stopped


def is_url(name: str) -> bool:
    """Whether a command-line path names a bucket (`s3://` or `gs://`)."""
    return name.startswith(SCHEMES)


def split_url(url: str) -> tuple[str, str, str]:
    """`s3://bucket/key` -> ("s3", "bucket", "key"). Raises UsageError without a bucket."""
    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"{url}: no bucket named (write {scheme}://BUCKET/PREFIX)")
    return scheme, bucket, key


def collect(url: str, options: InputOptions) -> tuple[list[BucketObject], list[SkippedFile], int]:
    """The sources a bucket URL names (see the module's docstring), the skipped objects,
    and how many objects sit in day folders `options.window` passes over (never sniffed)."""
    scheme, bucket, key = split_url(url)
    store = open_store(scheme, bucket, options)
    base = f"{scheme}://{bucket}/"
    window = options.window
    single = store.stat(key) if key and not key.endswith("/") else None
    if single is not None:
        if window is not None and window.passes_over(single.key):
            return [], [], 1
        return [_source(store, base, single, options)], [], 0
    prefix = key if not key or key.endswith("/") else key + "/"
    passed_over = 0
    candidates = []
    for info in store.list(prefix):
        if info.key.endswith("/") or not selected(info.key[len(prefix) :], options):
            continue
        if window is not None and window.passes_over(info.key):
            passed_over += 1
            continue
        candidates.append(info)
    candidates.sort(key=lambda info: info.key)

    def verdict(info: ObjectInfo) -> str | None:
        if info.size == 0:
            return "empty"
        return None if options.text else sniff(store.head(info, 1 << 16))

    with concurrent.futures.ThreadPoolExecutor(SNIFF_THREADS) as pool:
        verdicts = list(pool.map(verdict, candidates))
    sources, skipped = [], []
    for info, reason in zip(candidates, verdicts, strict=True):
        if reason is None:
            sources.append(_source(store, base, info, options))
        else:
            skipped.append(SkippedFile(base + info.key, reason))
    return sources, skipped, passed_over


def _source(store: ObjectStore, base: str, info: ObjectInfo, options: InputOptions) -> BucketObject:
    url = base + info.key
    return BucketObject(
        url,
        None,
        info.size,
        url=url,
        version=info.version,
        max_line_bytes=options.max_line_bytes,
        store=store,
    )


def open_store(scheme: str, bucket: str, options: InputOptions) -> ObjectStore:
    """The store for one bucket; a clear UsageError when its extra is not installed."""
    if scheme == "s3":
        try:
            importlib.import_module("boto3")
        except ImportError:
            raise UsageError(_missing_extra("s3", "s3", "boto3")) from None
        return S3Store(bucket, options.s3_endpoint_url)
    if scheme == "gs":
        try:
            importlib.import_module("google.cloud.storage")
        except ImportError:
            raise UsageError(_missing_extra("gs", "gcs", "google-cloud-storage")) from None
        return GCSStore(bucket)
    raise UsageError(f"{scheme}://: not a bucket scheme (use s3:// or gs://)")


def _missing_extra(scheme: str, extra: str, package: str) -> str:
    """What to install for a bucket scheme: the extra of the installed ctsync, or, run
    from a checkout, the checkout's extra into the environment that runs it (`pip
    install 'ctsync[s3]'` there would fetch ctsync from the index)."""
    root = checkout()
    how = (
        f"pip install 'ctsync[{extra}]'"
        if root is None
        else f"{sys.executable} -m pip install -e '{root}[{extra}]'"
    )
    return f"{scheme}:// paths need {package}, which is not installed: {how}"


def checkout() -> Path | None:
    """The source checkout this ctsync runs from (its pyproject.toml beside the package),
    or None for an installed ctsync."""
    root = Path(__file__).resolve().parent.parent
    try:
        project = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "ctsync"' in project else None


# -- S3 -----------------------------------------------------------------------------


class S3Store:
    """A bucket on S3 or an S3-compatible store (`--s3-endpoint-url`, or the standard
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL variables, which boto3 reads itself)."""

    scheme = "s3"

    def __init__(self, bucket: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=SNIFF_THREADS * 2,
        )
        try:
            self._client: Any = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, config=config
            )
        except Exception as exc:  # a broken profile or config file: botocore raises many kinds
            raise UsageError(
                f"s3://{bucket}: cannot set up the S3 client ({redact(str(exc))})"
            ) from None

    def stat(self, key: str) -> ObjectInfo | None:
        head = self._call(self._client.head_object, Bucket=self.bucket, Key=key, _missing=None)
        if head is None:
            return None
        return ObjectInfo(key, int(head["ContentLength"]), _etag(head["ETag"]))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix)
        iterator = iter(pages)
        while True:
            page = self._call(next, iterator, None)
            if page is None:
                return
            for item in page.get("Contents", ()):
                yield ObjectInfo(item["Key"], int(item["Size"]), _etag(item["ETag"]))

    def head(self, info: ObjectInfo, size: int) -> bytes:
        answer = self._call(
            self._client.get_object,
            Bucket=self.bucket,
            Key=info.key,
            Range=f"bytes=0-{size - 1}",
            IfMatch=_quoted(info.version),
        )
        data: bytes = answer["Body"].read()
        return data

    def open(self, source: BucketObject) -> ObjectReader:
        return _S3Reader(self, source)

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call boto3; what a person can fix becomes a UsageError naming the bucket."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        missing = "_missing" in kwargs
        missing_value = kwargs.pop("_missing", None)
        try:
            return function(*args, **kwargs)
        except NoCredentialsError:
            raise UsageError(
                f"s3://{self.bucket}: no AWS credentials found. Set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an instance role applies"
            ) from None
        except ClientError as exc:
            if missing and _s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return missing_value
            raise self._usage_error(exc) from None
        except BotoCoreError as exc:
            raise UsageError(f"s3://{self.bucket}: {redact(str(exc))}") from None

    def _usage_error(self, exc: Any) -> UsageError:
        code = _s3_code(exc)
        message = redact(str(exc.response.get("Error", {}).get("Message") or code))
        if code in (
            "403",
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidToken",
            "AllAccessDisabled",
        ):
            return UsageError(
                f"s3://{self.bucket}: access refused ({code}: {message}). Check the AWS "
                "credentials (environment, AWS_PROFILE or instance role) and that they may "
                "list and read this bucket"
            )
        if code == "NoSuchBucket":
            return UsageError(f"s3://{self.bucket}: no such bucket")
        return UsageError(f"s3://{self.bucket}: {code}: {message}")


class _S3Reader:
    """An S3 object's body as a stream, read at its ETag; a connection lost mid-object
    resumes with a ranged GET where it stopped (READ_ATTEMPTS times)."""

    def __init__(self, store: S3Store, source: BucketObject) -> None:
        self._store = store
        self._key = source.key
        self._version = source.version
        self._offset = 0
        self._body: Any = None
        self._body = self._get()

    def _get(self) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self._store.bucket, "Key": self._key}
        if self._version:
            kwargs["IfMatch"] = _quoted(self._version)
        if self._offset:
            kwargs["Range"] = f"bytes={self._offset}-"
        try:
            return self._store._client.get_object(**kwargs)["Body"]
        except ClientError as exc:
            if _s3_code(exc) in ("412", "PreconditionFailed"):
                raise RemoteReadError(
                    "the object was rewritten while it was read; the next run reads it again"
                ) from None
            raise RemoteReadError(redact(str(self._store._usage_error(exc)))) from None
        except BotoCoreError as exc:
            raise RemoteReadError(redact(str(exc))) from None

    def read(self, size: int, /) -> bytes:
        for attempt in range(READ_ATTEMPTS):
            try:
                data: bytes = self._body.read(size)
            except Exception as exc:  # urllib3 and botocore raise several kinds mid-body
                if attempt + 1 == READ_ATTEMPTS:
                    raise RemoteReadError(
                        f"connection lost while reading ({redact(str(exc))})"
                    ) from None
                self._body.close()
                self._body = self._get()
                continue
            self._offset += len(data)
            return data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._body is not None:
            self._body.close()


def _s3_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _etag(value: str) -> str:
    return value.strip('"')


def _quoted(etag: str) -> str:
    return f'"{etag}"'


# -- Google Cloud Storage -------------------------------------------------------------


GCS_CHUNK = 4 << 20  # bytes per ranged request while streaming an object
GCS_PAGE_SIZE = 1000  # objects per listing request (GCS's largest page)


class GCSStore:
    """A bucket on Google Cloud Storage (STORAGE_EMULATOR_HOST points the SDK elsewhere)."""

    scheme = "gs"

    def __init__(self, bucket: str) -> None:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        self.bucket = bucket
        try:
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                self._client: Any = storage.Client(
                    project="ctsync",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                )
            else:
                self._client = storage.Client()
        except DefaultCredentialsError:
            raise UsageError(
                f"gs://{bucket}: no Google credentials found. Run `gcloud auth "
                "application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service account key file, or run where a service account applies"
            ) from None
        self._bucket = self._client.bucket(bucket)

    def stat(self, key: str) -> ObjectInfo | None:
        blob = self._call(self._bucket.get_blob, key)
        if blob is None:
            return None
        return ObjectInfo(blob.name, int(blob.size or 0), str(blob.generation))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        blobs = iter(
            self._call(self._client.list_blobs, self.bucket, prefix=prefix, page_size=GCS_PAGE_SIZE)
        )
        while True:
            blob = self._call(next, blobs, None)
            if blob is None:
                return
            yield ObjectInfo(blob.name, int(blob.size or 0), str(blob.generation))

    def head(self, info: ObjectInfo, size: int) -> bytes:
        blob = self._bucket.blob(info.key, generation=int(info.version))
        data: bytes = self._call(blob.download_as_bytes, start=0, end=size - 1, raw_download=True)
        return data

    def open(self, source: BucketObject) -> ObjectReader:
        from google.api_core.exceptions import GoogleAPIError

        generation = int(source.version) if source.version else None
        blob = self._bucket.blob(source.key, generation=generation)
        try:
            reader: ObjectReader = blob.open("rb", chunk_size=GCS_CHUNK, raw_download=True)
        except GoogleAPIError as exc:
            raise RemoteReadError(redact(str(exc))) from None
        return _GCSReader(reader)

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        from google.api_core.exceptions import Forbidden, GoogleAPIError, NotFound, Unauthorized
        from google.auth.exceptions import GoogleAuthError

        try:
            return function(*args, **kwargs)
        except (Forbidden, Unauthorized) as exc:
            why = redact(str(exc.message))
            raise UsageError(
                f"gs://{self.bucket}: access refused ({exc.code}: {why}). Check the "
                "application-default credentials and that they may list and read this bucket"
            ) from None
        except NotFound as exc:
            raise UsageError(
                f"gs://{self.bucket}: not found ({redact(str(exc.message))})"
            ) from None
        except (GoogleAPIError, GoogleAuthError) as exc:
            raise UsageError(f"gs://{self.bucket}: {redact(str(exc))}") from None


class _GCSReader:
    """A BlobReader whose failures are OSErrors (the object ends as unreadable)."""

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader

    def read(self, size: int, /) -> bytes:
        from google.api_core.exceptions import GoogleAPIError

        try:
            return self._reader.read(size)
        except GoogleAPIError as exc:
            raise RemoteReadError(f"cannot read the object ({redact(str(exc))})") from None

    def close(self) -> None:
        self._reader.close()
