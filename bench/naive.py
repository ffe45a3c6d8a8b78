"""The uploader a user might write instead of ctsync: the baseline of `make bench`.

    python -m bench.naive EXPORT --endpoint URL [--account-id sandbox] [--batch 1000]

Reads the export line by line (gzip too), turns each identify into a profile and each
track into an event the obvious way (stdlib `json`, no validation, no Convert
Timestamps, no per-profile ordering, no retries), collects 1,000 records and POSTs
them, one request at a time, with a keep-alive `httpx.Client`. Prints one JSON line:
messages read, records and requests sent, seconds. The passcode comes from
`CLEVERTAP_PASSCODE`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx


def records(lines: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(1, record or None) per message: identify -> profile, track -> event, else None."""
    for line in lines:
        if not line.strip():
            continue
        message = json.loads(line)
        yield 1, to_record(message)


def to_record(message: dict[str, Any]) -> dict[str, Any] | None:
    """What a first attempt at CleverTap's upload format looks like."""
    identity = message.get("userId") or message.get("anonymousId")
    if not identity:
        return None
    stamp = message.get("timestamp")
    ts = (
        int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
        if isinstance(stamp, str)
        else int(time.time())
    )
    kind = message.get("type")
    if kind == "identify":
        return {
            "type": "profile",
            "identity": identity,
            "ts": ts,
            "profileData": message.get("traits") or {},
        }
    if kind == "track":
        return {
            "type": "event",
            "identity": identity,
            "ts": ts,
            "evtName": message.get("event"),
            "evtData": message.get("properties") or {},
        }
    return None


def upload(path: Path, endpoint: str, account_id: str, passcode: str, batch: int) -> dict[str, Any]:
    """Send every record, `batch` per request, one request at a time."""
    started = time.perf_counter()
    messages = sent = requests = refused = 0
    opener = gzip.open if path.suffix == ".gz" else open
    headers = {
        "X-CleverTap-Account-Id": account_id,
        "X-CleverTap-Passcode": passcode,
        "Content-Type": "application/json; charset=utf-8",
    }
    with httpx.Client(base_url=endpoint, headers=headers, timeout=60.0) as client:
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal sent, requests, refused
            if not pending:
                return
            answer = client.post("/1/upload", content=json.dumps({"d": pending}))
            requests += 1
            if answer.status_code != 200:
                refused += len(pending)
            else:
                sent += len(pending)
            pending.clear()

        with opener(path, "rb") as lines:
            for count, record in records(lines):  # type: ignore[arg-type]
                messages += count
                if record is not None:
                    pending.append(record)
                    if len(pending) >= batch:
                        flush()
        flush()
    return {
        "messages": messages,
        "records": sent,
        "refused": refused,
        "requests": requests,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__)
    parser.add_argument("export", type=Path)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--account-id", default="sandbox")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)
    passcode = os.environ.get("CLEVERTAP_PASSCODE", "")
    result = upload(args.export, args.endpoint, args.account_id, passcode, args.batch)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if not result["refused"] else 1


if __name__ == "__main__":
    sys.exit(main())
