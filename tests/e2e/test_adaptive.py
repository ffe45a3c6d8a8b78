"""`--concurrency auto` (the default) against a real sandbox that answers 429 above K
uploads in flight: the window shrinks on the 429s, every record still arrives once, and
the window grows back once the pressure is gone."""

from __future__ import annotations

from pathlib import Path

from ctsync.sandbox import SandboxConfig, running_sandbox

from ._support import Message, assert_adds_up, identify, run_upload, write_export

K = 4  # the sandbox's limit: 429 for a fifth upload in flight


def test_auto_shrinks_on_429s_delivers_everything_and_grows_back(tmp_path: Path) -> None:
    # Many profiles first (15 lanes busy: far above K), then one profile written 400
    # times: one lane, one request at a time, so nothing is refused any more.
    messages: list[Message] = [identify(f"u-{i}", n=i) for i in range(2000)]
    messages += [identify("steady", n=i) for i in range(400)]
    export = tmp_path / "export.ndjson"
    write_export(export, messages)

    config = SandboxConfig(latency_ms=20, max_concurrent_uploads=K)
    with running_sandbox(config) as sandbox:
        run = run_upload(sandbox.url, export, "--batch-size", "10", timeout=120)
        stats = sandbox.stats()
        steady = sandbox.read(lambda store: store.profile("steady"))

    assert run.returncode == 0, run.describe()
    summary = run.summary
    assert_adds_up(summary)
    assert summary["accepted"] == 2400 and summary["failed"] == 0
    assert stats.records_accepted == 2400 and stats.profiles == 2001
    assert steady is not None and steady.data["n"] == 399  # in order, under 429s

    upload = summary["concurrency"]["upload"]
    assert upload["mode"] == "auto" and upload["limit"] == 15
    assert summary["http_429"] == upload["http_429"] == stats.requests_by_status[429] > 0
    # Shrunk: each 429 halves the window; it must have gone down to K or below.
    assert upload["lowest_limit"] <= K
    # ... and it kept the 429s rare: a fixed 15 would be refused 11 times in 15 at first.
    assert summary["http_429"] * 3 < summary["requests"]
    # Grown back: the steady profile's requests, one at a time, were each acknowledged.
    # (Not necessarily to 15 at the very end: the lanes' last batches, joined into full
    # requests, go out together after them and may meet 429s again.)
    assert upload["final_limit"] > upload["lowest_limit"]
    assert "delete" not in summary["concurrency"]


def test_a_fixed_concurrency_is_not_adapted(tmp_path: Path) -> None:
    export = tmp_path / "export.ndjson"
    write_export(export, [identify(f"u-{i}", n=i) for i in range(200)])
    config = SandboxConfig(latency_ms=20, max_concurrent_uploads=K)
    with running_sandbox(config) as sandbox:
        run = run_upload(
            sandbox.url, export, "--batch-size", "10", "--concurrency", "3", timeout=120
        )
        stats = sandbox.stats()

    assert run.returncode == 0, run.describe()
    upload = run.summary["concurrency"]["upload"]
    assert upload == {
        "mode": "fixed",
        "limit": 3,
        "peak_in_flight": 3,
        "final_limit": 3,
        "lowest_limit": 3,
        "http_429": 0,
    }
    assert stats.peak_in_flight["upload"] <= 3 and 429 not in stats.requests_by_status
