"""The small fault soak (`make soak` runs the long one): real `ctsync upload --state` runs
SIGKILLed at random moments against a sandbox with latency jitter and every fault, then
run to completion; the sandbox's database must hold the input applied in order.

`CTSYNC_SOAK_SEED=N` picks the seed (default 1); a failure names it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from bench.soak import PRESETS, SoakConfig, generate, soak

SECONDS = 100.0  # about what the soak takes; it stops killing after half of it
RUN_TIMEOUT = 30.0  # for each run to the end (they take a few seconds)


def test_kills_and_faults_lose_nothing_duplicate_nothing_and_keep_profile_order(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CTSYNC_SOAK_SEED", "1"))
    config = SoakConfig(
        seed=seed, messages=1500, kills=6, max_seconds=SECONDS, run_timeout=RUN_TIMEOUT
    )
    started = time.monotonic()
    findings = soak(config, tmp_path)
    elapsed = time.monotonic() - started
    figures = "\n".join(
        [found.figures() + "".join(f"\n  FAIL: {p}" for p in found.problems) for found in findings]
    )
    assert [found.preset for found in findings] == list(PRESETS)
    assert all(found.kills > 0 for found in findings), figures
    assert all(found.ok for found in findings), f"soak seed {seed} failed:\n{figures}"
    # Bounded: the kill rounds by SECONDS, the four runs to the end by RUN_TIMEOUT each.
    assert elapsed < SECONDS / 2 + 4 * RUN_TIMEOUT + 30, figures


def test_the_soak_input_is_a_pure_function_of_the_seed() -> None:
    first, again, other = (generate(SoakConfig(seed=s, messages=400)) for s in (5, 5, 6))
    assert first.lines == again.lines
    assert first.lines != other.lines
    kinds = {(m["type"], m.get("event")) for m in first.messages}
    assert kinds == {("identify", None), ("track", "Product Viewed"), ("track", "Delete User")}
    envelopes = [
        orjson.loads(line)["batch"] for line in first.lines if line.startswith(b'{"batch":')
    ]
    assert max(map(len, envelopes)) > 2 * SoakConfig().batch_size  # one line, several batches
    assert first.tokens("classic") and not first.tokens("actions")
    # Identities repeat, so the order of their writes matters.
    assert len({m["userId"] for m in first.messages}) < len(first.messages) / 4
