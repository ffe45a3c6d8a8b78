"""What a sandbox counts, and the snapshot `GET /_sandbox/stats` answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from ._store import StoreCounts


class Endpoint(StrEnum):
    """The CleverTap endpoints whose requests in flight are limited and counted."""

    UPLOAD = "upload"
    DELETE = "delete"


class Fault(StrEnum):
    """An injected fault: an error answer, or a connection dropped without one.

    The first four store nothing; the `stored-` ones store the request first and then
    answer badly, so the client cannot know that its records arrived.
    """

    TOO_MANY_REQUESTS = "429"
    INTERNAL_ERROR = "500"
    UNAVAILABLE = "503"
    DROP = "drop"
    STORED_THEN_500 = "stored-500"
    STORED_THEN_504 = "stored-504"
    STORED_THEN_DROP = "stored-drop"

    @property
    def stores(self) -> bool:
        """Whether the request is stored before the fault."""
        return self.value.startswith("stored-")


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxStats:
    """A snapshot of a sandbox: what it stores and what it has answered.

    `records_accepted`/`records_rejected` count stored uploads only; records of dry runs
    are counted in `records_dry_run`. `requests_by_status` counts answers to CleverTap
    paths (`/1/...` and unknown paths), not to `/_sandbox/...`. `peak_in_flight` counts
    every authenticated request while it is being handled, including those answered 429,
    so `peak_in_flight["upload"] <= 15` means the client kept CleverTap's limit.
    """

    profiles: int
    events: int
    tokens: int
    deletions: int
    records_accepted: int
    records_rejected: int
    records_dry_run: int
    rejected_by_code: Mapping[int, int]
    requests_by_status: Mapping[int, int]
    requests_by_endpoint: Mapping[str, int]
    in_flight: Mapping[str, int]
    peak_in_flight: Mapping[str, int]
    faults: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (integer keys become strings)."""
        data = asdict(self)
        for key in ("rejected_by_code", "requests_by_status"):
            data[key] = {str(k): v for k, v in sorted(data[key].items())}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxStats:
        """Read what `to_json` wrote (e.g. the answer of `GET /_sandbox/stats`)."""
        values = dict(data)
        for key in ("rejected_by_code", "requests_by_status"):
            values[key] = {int(k): v for k, v in values[key].items()}
        return cls(**values)


@dataclass(slots=True)
class Counters:
    """The running counts behind `SandboxStats`; owned by the server's event loop."""

    records_accepted: int = 0
    records_rejected: int = 0
    records_dry_run: int = 0
    rejected_by_code: Counter[int] = field(default_factory=Counter)
    requests_by_status: Counter[int] = field(default_factory=Counter)
    requests_by_endpoint: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    peak_in_flight: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def enter(self, endpoint: Endpoint) -> int:
        """Count one more request in flight; return how many are now in flight."""
        now = self.in_flight[endpoint] + 1
        self.in_flight[endpoint] = now
        if now > self.peak_in_flight[endpoint]:
            self.peak_in_flight[endpoint] = now
        return now

    def leave(self, endpoint: Endpoint) -> None:
        self.in_flight[endpoint] -= 1

    def reset(self) -> None:
        """Forget everything but the requests in flight right now."""
        in_flight = self.in_flight
        fresh = Counters()
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))
        self.in_flight = in_flight

    def snapshot(self, counts: StoreCounts) -> SandboxStats:
        endpoints = [e.value for e in Endpoint]
        return SandboxStats(
            profiles=counts.profiles,
            events=counts.events,
            tokens=counts.tokens,
            deletions=counts.deletions,
            records_accepted=self.records_accepted,
            records_rejected=self.records_rejected,
            records_dry_run=self.records_dry_run,
            rejected_by_code=dict(self.rejected_by_code),
            requests_by_status=dict(self.requests_by_status),
            requests_by_endpoint={e: self.requests_by_endpoint[e] for e in endpoints},
            in_flight={e: self.in_flight[e] for e in endpoints},
            peak_in_flight={e: self.peak_in_flight[e] for e in endpoints},
            faults={f.value: self.faults[f] for f in Fault},
        )
