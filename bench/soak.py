"""A fault soak with real processes: `make soak`, or

    python -m bench.soak [--seed N] [--seeds K] [--messages N] [--kills N] [--preset P]

For each preset (actions: identifies and `Delete User` deletions; classic: identifies,
events and device tokens), it writes a Segment export with repeated identities
(identifies whose traits change, tracks, `Delete User` tracks, `{"batch": [...]}`
envelope lines, tracks that also carry a device token), starts `ctsync sandbox --db FILE`
with per-request latency jitter and every fault (429/500/503 and dropped connections,
which store nothing; stored-then-500/504 and stored-then-dropped, which do), runs
`ctsync upload FILE --state ST --endpoint URL` as a child process and SIGKILLs it at
random moments, many times, then runs it to completion, and once more (which must send
nothing). It then checks what the sandbox's database holds against its own model of the
input, built here from the messages it generated and from nothing of ctsync's:

- every profile equals the input's identifies merged in order, deletions applied in
  order (a deleted profile is gone, or re-created by later identifies);
- every event is stored exactly once, except one that a run reported failed with
  `outcome-unknown` (in its `--report`): that one is stored once or not at all. An event
  stored twice is a duplicate (allowed only with `--retry-unknown`, which asks ctsync for
  at-least-once);
- every device token is stored; every finished run's summary adds up; the last run sends
  no request.

It prints the figures (runs, kills, records, lost, duplicates, largest in-flight window)
and exits 1 if any check fails, naming the seed to reproduce it. Everything is on
127.0.0.1, every child has a time limit, and the whole soak a deadline (`--max-seconds`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ctsync.sandbox import SandboxConfig, SandboxProcess, sandbox_process

PRESETS = ("actions", "classic")
ACCOUNT = "sandbox"
PASSCODE = "sandbox"
EPOCH = 1_714_564_800  # 2024-05-01T12:00:00Z
TRAITS = ("plan", "score", "city", "tier")
IN_FLIGHT_NOTE = re.compile(r"([\d,]+) records? (?:were|was) on the wire when an earlier run")
UNKNOWN = "outcome-unknown"

Message = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakConfig:
    """One soak: how much input, how many kills, which faults."""

    seed: int = 1
    messages: int = 3000
    users: int = 60
    kills: int = 8
    presets: Sequence[str] = PRESETS
    # Seconds after its start at which a run is killed, drawn uniformly.
    kill_after: tuple[float, float] = (0.4, 2.0)
    batch_size: int = 50
    concurrency: int = 8
    max_retries: int = 8
    latency_ms: tuple[int, int] = (20, 400)
    fault_rate: float = 0.06
    drop_rate: float = 0.04
    store_then_fail_rate: float = 0.06
    store_then_drop_rate: float = 0.04
    retry_unknown: bool = False
    # --workers; above 1 the workers start at once, on blocks of a few lines, so that
    # they prepare the soak's small input.
    workers: int = 1
    # The kills stop after half of max_seconds (split between the presets); then come
    # two runs to the end, each stopped after run_timeout seconds.
    max_seconds: float = 110.0
    run_timeout: float = 120.0


DEFAULT = SoakConfig()


# -- the input and its model ----------------------------------------------------------


@dataclass(slots=True)
class Model:
    """What CleverTap must hold once the export went through, per preset."""

    lines: list[bytes] = field(default_factory=list)
    # Every message in input order (envelopes unfolded).
    messages: list[Message] = field(default_factory=list)

    def profiles(self, preset: str) -> dict[str, dict[str, Any]]:
        """identity -> profileData: identifies merged key by key in order; under the
        actions preset a `Delete User` removes the profile."""
        profiles: dict[str, dict[str, Any]] = {}
        for message in self.messages:
            user = message["userId"]
            if message["type"] == "identify":
                profiles.setdefault(user, {}).update(message["traits"])
            elif message["event"] == "Delete User" and preset == "actions":
                profiles.pop(user, None)
        return profiles

    def held_after(self, preset: str, user: str, profile: dict[str, Any] | None) -> str | None:
        """The messageId of the last message after which `user`'s profile was `profile`
        (a stale profile: the writes after it were lost or overtaken), or None."""
        current: dict[str, Any] | None = None
        found = None
        for message in self.messages:
            if message["userId"] != user:
                continue
            if message["type"] == "identify":
                current = {**(current or {}), **message["traits"]}
            elif message["event"] == "Delete User" and preset == "actions":
                current = None
            else:
                continue
            if current == profile:
                found = message["messageId"]
        return found

    def events(self, preset: str) -> dict[int, str]:
        """seq -> messageId of every track that becomes an event (classic: all tracks)."""
        if preset != "classic":
            return {}
        return {
            message["properties"]["seq"]: message["messageId"]
            for message in self.messages
            if message["type"] == "track"
        }

    def tokens(self, preset: str) -> set[tuple[str, str]]:
        """(objectId, token id) of every device token (classic only)."""
        if preset != "classic":
            return set()
        return {
            (message["anonymousId"], message["context"]["device"]["token"])
            for message in self.messages
            if "context" in message
        }

    def records(self, preset: str) -> int:
        """How many CleverTap records (profiles, events, tokens, deletions) the input makes."""
        count = 0
        for message in self.messages:
            if message["type"] == "identify":
                count += 1
            elif preset == "classic":
                count += 2 if "context" in message else 1
            elif message["event"] == "Delete User":
                count += 1
        return count


def generate(config: SoakConfig) -> Model:
    """A seeded export: repeated identities, changing traits, tracks, deletions,
    envelopes of up to 3 batches, tracks with a device token."""
    rng = random.Random(f"soak-input-{config.seed}")
    model = Model()
    users = [f"u-{n:04d}" for n in range(config.users)]
    seq = 0

    def message() -> Message:
        nonlocal seq
        seq += 1
        user = rng.choice(users)
        ts = f"2024-05-01T{12 + seq // 3600 % 10:02d}:{seq // 60 % 60:02d}:{seq % 60:02d}Z"
        draw = rng.random()
        if draw < 0.5:
            keys = rng.sample(TRAITS, rng.randint(1, len(TRAITS)))
            traits = {key: f"{key}-{seq}" if key != "score" else seq for key in keys}
            return {
                "type": "identify",
                "userId": user,
                "messageId": f"m-{seq}",
                "timestamp": ts,
                "traits": traits,
            }
        name = "Delete User" if draw < 0.515 else "Product Viewed"
        track: Message = {
            "type": "track",
            "event": name,
            "userId": user,
            "messageId": f"m-{seq}",
            "timestamp": ts,
            "properties": {"seq": seq, "sku": f"sku-{seq % 97}"},
        }
        if draw > 0.93:
            track["anonymousId"] = f"anon-{user}"
            track["context"] = {"device": {"token": f"tok-{user}-{seq}", "type": "android"}}
        return track

    big_envelope_at = config.messages // 3  # at least one envelope of several batches
    while len(model.messages) < config.messages:
        if len(model.messages) >= big_envelope_at or rng.random() < 0.06:
            # An envelope line: usually a few messages, sometimes more than two batches.
            forced = len(model.messages) >= big_envelope_at
            if forced:
                big_envelope_at = config.messages + 1
            big = forced or rng.random() < 0.2
            size = rng.randint(120, 160) if big else rng.randint(2, 8)
            batch = [message() for _ in range(size)]
            model.messages.extend(batch)
            model.lines.append(orjson.dumps({"batch": batch}))
        else:
            single = message()
            model.messages.append(single)
            model.lines.append(orjson.dumps(single))
    return model


# -- running ctsync -------------------------------------------------------------------


def _env() -> dict[str, str]:
    """Credentials for the sandbox; no proxy (every request stays on loopback)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CLEVERTAP_")
        and key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env.update(
        CLEVERTAP_ACCOUNT_ID=ACCOUNT,
        CLEVERTAP_PASSCODE=PASSCODE,
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass(frozen=True, slots=True)
class Run:
    """One ctsync run: killed, or finished with its exit code and `--json` summary."""

    killed: bool
    returncode: int
    summary: dict[str, Any] | None
    report: Path
    stderr: str


class Uploads:
    """Runs `ctsync upload` over one export and one state file, each with its own report."""

    def __init__(self, url: str, export: Path, work: Path, preset: str, config: SoakConfig):
        self._url = url
        self._export = export
        self._work = work
        self._preset = preset
        self._config = config
        self.runs: list[Run] = []

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        n = len(self.runs) + 1
        report = self._work / f"report-{n}.ndjson"
        command = [
            sys.executable,
            "-m",
            "ctsync",
            "upload",
            str(self._export),
            "--state",
            str(self._work / "state.db"),
            "--endpoint",
            self._url,
            "--preset",
            self._preset,
            "--batch-size",
            str(self._config.batch_size),
            "--concurrency",
            str(self._config.concurrency),
            "--max-retries",
            str(self._config.max_retries),
            "--report",
            str(report),
            "--failed",
            str(self._work / f"failed-{n}.ndjson"),
            "--json",
            "--no-progress",
        ]
        if self._config.retry_unknown:
            command.append("--retry-unknown")
        command += ["--workers", str(self._config.workers)]
        env = _env()
        if self._config.workers > 1:
            env.update(CTSYNC_WORKER_BLOCK_BYTES="4096", CTSYNC_WORKER_START_AFTER="0")
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return process, report

    def run(self, kill_after: float | None) -> Run:
        """One run, SIGKILLed after `kill_after` seconds if it is still running then."""
        process, report = self.start()
        killed = False
        try:
            process.wait(self._config.run_timeout if kill_after is None else kill_after)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                process.kill()
                process.communicate()
                raise SoakError(
                    f"a ctsync run took longer than {self._config.run_timeout:.0f} s"
                ) from None
            process.send_signal(signal.SIGKILL)
            killed = True
        stdout, stderr = process.communicate()
        summary = None
        if not killed:
            lines = stdout.decode().strip().splitlines()
            summary = orjson.loads(lines[-1]) if lines else None
        result = Run(killed, process.returncode, summary, report, stderr.decode())
        self.runs.append(result)
        return result


class SoakError(Exception):
    """The soak could not be carried out (not a finding about ctsync)."""


# -- checking -------------------------------------------------------------------------


@dataclass(slots=True)
class Findings:
    """What one preset's soak found."""

    preset: str
    runs: int = 0
    kills: int = 0
    records: int = 0
    lost: int = 0
    duplicates: int = 0
    unknown_reported: int = 0
    unknown_stored: int = 0
    wrong_profiles: int = 0
    missing_tokens: int = 0
    largest_in_flight: int = 0
    largest_unknown_per_run: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def figures(self) -> str:
        return (
            f"{self.preset}: runs {self.runs}, kills {self.kills}, records {self.records:,},"
            f" lost {self.lost}, duplicates {self.duplicates}, wrong profiles"
            f" {self.wrong_profiles}, missing tokens {self.missing_tokens}, outcome-unknown"
            f" reported {self.unknown_reported} (stored {self.unknown_stored}), largest"
            f" in-flight window {self.largest_in_flight} noted /"
            f" {self.largest_unknown_per_run} reported unknown in one run"
        )


def _report_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a `--report` file; a killed run may have left its last line cut."""
    if not path.exists():
        return
    for line in path.read_bytes().splitlines():
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def _adds_up(summary: dict[str, Any]) -> bool:
    parts = ("skipped", "invalid", "accepted", "rejected", "failed")
    return bool(summary["read"] == sum(summary[part] for part in parts))


def check(preset: str, model: Model, runs: Sequence[Run], db: Path, config: SoakConfig) -> Findings:
    """Compare the sandbox's database with the model and the runs' reports."""
    found = Findings(preset, runs=len(runs), records=model.records(preset))
    found.kills = sum(run.killed for run in runs)
    problems = found.problems
    *_, last, after = runs
    if last.killed or last.returncode not in (0, 1) or last.summary is None:
        problems.append(f"the run to completion ended with exit {last.returncode}: {last.stderr}")
    if after.summary is None or after.summary.get("requests", 0) != 0:
        sent = None if after.summary is None else after.summary.get("requests")
        problems.append(f"a run after completion still sent {sent} requests (must send none)")
    # What the runs said of the records they could not settle.
    unknown_ids: set[str] = set()
    other_failures: Counter[str] = Counter()
    for run in runs:
        in_run = 0
        for line in _report_lines(run.report):
            if line.get("code") == UNKNOWN:
                unknown_ids.add(str(line.get("messageId")))
                in_run += 1
            else:
                other_failures[str(line.get("code"))] += 1
        found.largest_unknown_per_run = max(found.largest_unknown_per_run, in_run)
        if run.summary is not None:
            if not _adds_up(run.summary):
                problems.append(f"a summary does not add up: {run.summary}")
            # The records an earlier run left on the wire: re-sent ones plus unknown ones.
            noted = sum(
                int(match.group(1).replace(",", ""))
                for note in run.summary.get("notes", [])
                for match in IN_FLIGHT_NOTE.finditer(note)
            )
            found.largest_in_flight = max(found.largest_in_flight, noted)
    if other_failures:
        problems.append(f"records reported failed other than {UNKNOWN}: {dict(other_failures)}")

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        stored_profiles = {
            identifier: orjson.loads(data)
            for identifier, data in conn.execute(
                "SELECT identifier, data FROM profiles WHERE id_kind = 'identity'"
            )
        }
        stored_events = Counter(
            orjson.loads(data).get("seq") for (data,) in conn.execute("SELECT evt_data FROM events")
        )
        stored_tokens = set(conn.execute("SELECT object_id, token_id FROM tokens"))

    expected_profiles = model.profiles(preset)
    for user in sorted(expected_profiles.keys() | stored_profiles.keys()):
        if expected_profiles.get(user) != stored_profiles.get(user):
            found.wrong_profiles += 1
            if found.wrong_profiles <= 3:
                stored = stored_profiles.get(user)
                when = model.held_after(preset, user, stored)
                problems.append(
                    f"profile {user}: stored {stored}, the input applied in order gives"
                    f" {expected_profiles.get(user)}"
                    + (
                        f" (what it was after {when}: later writes lost or overtaken)"
                        if when
                        else ""
                    )
                )
    if found.wrong_profiles > 3:
        problems.append(f"... {found.wrong_profiles} profiles differ from the input in all")

    expected_events = model.events(preset)
    found.unknown_reported = sum(mid in unknown_ids for mid in expected_events.values())
    for seq, message_id in expected_events.items():
        copies = stored_events.get(seq, 0)
        unknown = message_id in unknown_ids
        found.unknown_stored += unknown and copies > 0
        if copies == 0 and not unknown:
            found.lost += 1
        found.duplicates += max(0, copies - 1)
    unexpected = set(stored_events) - set(expected_events)
    if unexpected:
        problems.append(f"{len(unexpected)} stored events are not in the input")
    if found.lost:
        problems.append(f"{found.lost} events never stored and not reported {UNKNOWN}")
    if found.duplicates and not config.retry_unknown:
        problems.append(
            f"{found.duplicates} extra copies of events (largest in-flight window noted:"
            f" {found.largest_in_flight})"
        )
    found.missing_tokens = len(model.tokens(preset) - stored_tokens)
    if found.missing_tokens:
        problems.append(f"{found.missing_tokens} device tokens never stored")
    return found


# -- the soak -------------------------------------------------------------------------


def soak_preset(preset: str, model: Model, config: SoakConfig, work: Path) -> Findings:
    """Upload the export with one preset under kills and faults; check the sandbox."""
    work.mkdir(parents=True, exist_ok=True)
    export = work / "export.ndjson"
    export.write_bytes(b"".join(line + b"\n" for line in model.lines))
    db = work / "sandbox.db"
    sandbox = SandboxConfig(
        db=db,
        latency_ms=config.latency_ms,
        fault_rate=config.fault_rate,
        drop_rate=config.drop_rate,
        store_then_fail_rate=config.store_then_fail_rate,
        store_then_drop_rate=config.store_then_drop_rate,
        seed=config.seed,
    )
    rng = random.Random(f"soak-kills-{config.seed}-{preset}")
    kills_end = time.monotonic() + config.max_seconds / len(config.presets) / 2
    with sandbox_process(sandbox) as running:
        uploads = Uploads(running.url, export, work, preset, config)
        for _ in range(config.kills):
            if time.monotonic() > kills_end:
                break
            if uploads.run(rng.uniform(*config.kill_after)).killed:
                _wait_until_idle(running)
        uploads.run(None)  # to completion
        uploads.run(None)  # after completion: must find nothing to send
    # The sandbox merged every pending profile write when it stopped.
    return check(preset, model, uploads.runs, db, config)


def _wait_until_idle(sandbox: SandboxProcess, timeout: float = 15.0) -> None:
    """Wait until the sandbox has answered every request of a killed run.

    The sandbox still stores a request whose sender was killed, once its latency has
    passed. Had the next run already sent a later write of the same profile, that late
    arrival would overwrite it, and no client could prevent it; a cron run starts long
    after the last one died, so the soak waits as long as that takes.
    """
    deadline = time.monotonic() + timeout
    while any(sandbox.stats().in_flight.values()):
        if time.monotonic() > deadline:
            raise SoakError(f"the sandbox still had requests in flight after {timeout:.0f} s")
        time.sleep(0.05)


def soak(config: SoakConfig, work: Path) -> list[Findings]:
    """Soak every preset in `config`; the findings per preset."""
    model = generate(config)
    return [soak_preset(preset, model, config, work / preset) for preset in config.presets]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seed", type=int, default=None, help="default: drawn, and printed")
    parser.add_argument("--seeds", type=int, default=1, help="soaks in a row, seed, seed+1, ...")
    parser.add_argument("--messages", type=int, default=DEFAULT.messages)
    parser.add_argument("--users", type=int, default=DEFAULT.users)
    parser.add_argument("--kills", type=int, default=DEFAULT.kills)
    parser.add_argument("--preset", choices=[*PRESETS, "both"], default="both")
    parser.add_argument("--retry-unknown", action="store_true", help="pass it to ctsync")
    parser.add_argument("--workers", type=int, default=1, help="pass it to ctsync")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per seed")
    parser.add_argument("--keep", type=Path, default=None, help="keep the files here")
    args = parser.parse_args(argv)
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    failed: list[int] = []
    for seed in range(first, first + args.seeds):
        config = SoakConfig(
            seed=seed,
            messages=args.messages,
            users=args.users,
            kills=args.kills,
            presets=PRESETS if args.preset == "both" else (args.preset,),
            retry_unknown=args.retry_unknown,
            max_seconds=args.max_seconds,
            workers=args.workers,
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ctsync-soak-") as tmp:
            work = args.keep / str(seed) if args.keep else Path(tmp)
            try:
                findings = soak(config, work)
            except SoakError as error:
                print(f"soak seed {seed}: could not run: {error}", file=sys.stderr)
                return 2
        print(f"soak seed {seed} ({time.monotonic() - started:.0f} s):")
        for found in findings:
            print(f"  {found.figures()}")
            for problem in found.problems:
                print(f"    FAIL: {problem}")
        if not all(found.ok for found in findings):
            failed.append(seed)
    if failed:
        print(f"soak FAILED for seed(s) {failed}: rerun with --seed N to reproduce")
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
