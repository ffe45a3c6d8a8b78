"""A local fake CleverTap server: `POST /1/upload`, `POST /1/delete/profiles.json`.

Used by end-to-end tests (the real `ctsync upload` over real HTTP), `make demo` and the
throughput benchmark. It checks credentials, CleverTap's limits (1000 records and 15
concurrent uploads, 100 ids and 3 concurrent deletes) and the per-record rules, answers
as CleverTap does, stores what it accepted in SQLite and can inject latency, error
answers and dropped connections.

From Python::

    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:
        ...  # point the client at sandbox.url, account "sandbox", passcode "sandbox"
        assert sandbox.stats().peak_in_flight["upload"] <= 15
        events = sandbox.read(lambda store: store.events("u1"))

From the shell: `ctsync sandbox --port 0` (or `python -m ctsync.sandbox --port 0`) prints
`ctsync sandbox listening on http://127.0.0.1:PORT`; `GET /_sandbox/stats` answers the
counters; `POST /_sandbox/hold` keeps every CleverTap answer waiting (in flight) until
`POST /_sandbox/release`; `ctsync sandbox show --db FILE` summarises a stored database.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import DELETE_PATH, HOLD_PATH, RELEASE_PATH, RESET_PATH, STATS_PATH, UPLOAD_PATH
    from ._config import (
        DEFAULT_ACCOUNT_ID,
        DEFAULT_CLI_PORT,
        DEFAULT_HOST,
        DEFAULT_PASSCODE,
        MAX_CONCURRENT_DELETES,
        MAX_CONCURRENT_UPLOADS,
        MAX_IDS_PER_DELETE,
        MAX_RECORDS_PER_UPLOAD,
        MAX_TOKENS_PER_UPLOAD,
        SandboxConfig,
    )
    from ._process import LISTENING_PREFIX, SandboxProcess, read_listening_url, sandbox_process
    from ._server import Sandbox, SandboxServer, running_sandbox, serve
    from ._stats import Endpoint, Fault, SandboxStats
    from ._store import (
        SandboxStore,
        StoreCounts,
        StoredDeletion,
        StoredEvent,
        StoredProfile,
        StoredToken,
    )
    from ._validation import RESTRICTED_EVENT_NAMES, Code, IdentifierKind, RecordType

# What the package offers loads on first use (PEP 562): `ctsync` mounts the sandbox's
# commands at every start, and an upload must not pay for the server and store it
# never runs.
_LAZY = {
    "Code": "._validation",
    "DEFAULT_ACCOUNT_ID": "._config",
    "DEFAULT_CLI_PORT": "._config",
    "DEFAULT_HOST": "._config",
    "DEFAULT_PASSCODE": "._config",
    "DELETE_PATH": "._app",
    "Endpoint": "._stats",
    "Fault": "._stats",
    "HOLD_PATH": "._app",
    "IdentifierKind": "._validation",
    "LISTENING_PREFIX": "._process",
    "MAX_CONCURRENT_DELETES": "._config",
    "MAX_CONCURRENT_UPLOADS": "._config",
    "MAX_IDS_PER_DELETE": "._config",
    "MAX_RECORDS_PER_UPLOAD": "._config",
    "MAX_TOKENS_PER_UPLOAD": "._config",
    "RELEASE_PATH": "._app",
    "RESET_PATH": "._app",
    "RESTRICTED_EVENT_NAMES": "._validation",
    "RecordType": "._validation",
    "STATS_PATH": "._app",
    "Sandbox": "._server",
    "SandboxConfig": "._config",
    "SandboxProcess": "._process",
    "SandboxServer": "._server",
    "SandboxStats": "._stats",
    "SandboxStore": "._store",
    "StoreCounts": "._store",
    "StoredDeletion": "._store",
    "StoredEvent": "._store",
    "StoredProfile": "._store",
    "StoredToken": "._store",
    "UPLOAD_PATH": "._app",
    "read_listening_url": "._process",
    "running_sandbox": "._server",
    "sandbox_process": "._process",
    "serve": "._server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_CLI_PORT",
    "DEFAULT_HOST",
    "DEFAULT_PASSCODE",
    "DELETE_PATH",
    "HOLD_PATH",
    "LISTENING_PREFIX",
    "MAX_CONCURRENT_DELETES",
    "MAX_CONCURRENT_UPLOADS",
    "MAX_IDS_PER_DELETE",
    "MAX_RECORDS_PER_UPLOAD",
    "MAX_TOKENS_PER_UPLOAD",
    "RELEASE_PATH",
    "RESET_PATH",
    "RESTRICTED_EVENT_NAMES",
    "STATS_PATH",
    "UPLOAD_PATH",
    "Code",
    "Endpoint",
    "Fault",
    "IdentifierKind",
    "RecordType",
    "Sandbox",
    "SandboxConfig",
    "SandboxProcess",
    "SandboxServer",
    "SandboxStats",
    "SandboxStore",
    "StoreCounts",
    "StoredDeletion",
    "StoredEvent",
    "StoredProfile",
    "StoredToken",
    "read_listening_url",
    "running_sandbox",
    "sandbox_process",
    "serve",
]
