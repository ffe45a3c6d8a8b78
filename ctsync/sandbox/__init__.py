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
