"""A readable summary of what a sandbox database holds (`ctsync sandbox show`)."""

from __future__ import annotations

import orjson
from rich.console import Console, Group, RenderableType
from rich.table import Table

from ._store import SandboxStore

TOP = 10


def summary(store: SandboxStore, *, top: int = TOP) -> RenderableType:
    """Tables of counts, event names, the busiest identifiers, the first profiles and the
    recent deletions."""
    counts = store.counts()
    totals = Table(title="Sandbox database", show_header=False)
    totals.add_column("what")
    totals.add_column("count", justify="right")
    for label, value in (
        ("profiles", counts.profiles),
        ("events", counts.events),
        ("tokens", counts.tokens),
        ("deletions", counts.deletions),
    ):
        totals.add_row(label, f"{value:,}")

    names = Table(title=f"Events by name (top {top})")
    names.add_column("evtName")
    names.add_column("events", justify="right")
    for name, count in list(store.event_names().items())[:top]:
        names.add_row(name, f"{count:,}")

    busiest = Table(title=f"Identifiers with the most events (top {top})")
    busiest.add_column("identifier")
    busiest.add_column("events", justify="right")
    per_identifier = sorted(store.events_per_identifier().items(), key=lambda kv: -kv[1])
    for identifier, count in per_identifier[:top]:
        busiest.add_row(identifier, f"{count:,}")

    profiles = Table(title=f"Profiles (first {top})")
    profiles.add_column("identifier")
    profiles.add_column("writes", justify="right")
    profiles.add_column("profileData")
    for profile in store.profiles(limit=top):
        data = orjson.dumps(dict(profile.data), option=orjson.OPT_SORT_KEYS).decode()
        profiles.add_row(f"{profile.kind}:{profile.identifier}", str(profile.writes), data)

    deletions = Table(title=f"Deletions (last {top})")
    deletions.add_column("seq", justify="right")
    deletions.add_column("key")
    deletions.add_column("value")
    deletions.add_column("profile existed")
    for deletion in store.deletions(last=top):
        deletions.add_row(
            str(deletion.seq), deletion.key, deletion.value, "yes" if deletion.existed else "no"
        )
    # The counts always; a detail table only when it has rows (no empty Deletions table
    # after a run that deleted nothing).
    return Group(totals, *(t for t in (names, busiest, profiles, deletions) if t.row_count))


def print_summary(store: SandboxStore, console: Console) -> None:
    console.print(summary(store))
