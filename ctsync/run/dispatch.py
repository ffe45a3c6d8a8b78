"""Sending: sealed upload batches wait in their lanes, and each lane sends one request
at a time, the next only after the final answer to the one before (retries included), so
a profile's writes reach CleverTap in input order. A deletion batch goes out once no
upload batch without its answer holds one of its profiles, and its answer lets their
later operations be planned (see batching). On a stop, what is in flight may finish;
what never got an answer fails, as sent (CleverTap may have it) or not."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ctsync.batching import Batch, Lane, Planner
from ctsync.errors import AuthError, DiskFull, OutputError
from ctsync.ledger import DISK_FULL, OUTPUT_FAILED
from ctsync.model import Request, Sender, Verdict
from ctsync.prepare import OpKind
from ctsync.records import DeleteKey, Outcome, Stage
from ctsync.run.accounts import Accounts
from ctsync.run.options import Control, RunOptions

ABORTED = Verdict(
    Outcome.FAILED,
    "aborted",
    "the run stopped before CleverTap answered; CleverTap may or may not have this record",
    Stage.TRANSPORT,
)
INTERRUPTED = Verdict(
    Outcome.FAILED,
    "interrupted",
    "not sent: the run was interrupted before this record's batch went out",
    Stage.TRANSPORT,
)


REFUSED_CREDENTIALS = Verdict(
    Outcome.FAILED,
    "interrupted",
    "not stored: the run stopped when CleverTap refused the credentials (HTTP 401); "
    "a run with the right ones sends it",
    Stage.TRANSPORT,
)


def _refusal(status: int) -> Verdict:
    """Why a record was not sent after an answer that stopped the run (`AuthError`)."""
    if status == 401:
        return REFUSED_CREDENTIALS
    return Verdict(
        Outcome.FAILED,
        "interrupted",
        f"not stored: the run stopped when a request was answered HTTP {status} (a wrong "
        "endpoint, or an account without API access); a run that is let in sends it",
        Stage.TRANSPORT,
    )


def _refused(batch: Batch, exc: BaseException) -> None:
    """A batch whose request CleverTap refused as a whole (401, 403, 404, 405: the run
    stops) before it could store any of it, or whose request never left (the checkpoint
    before it failed: a full disk), was not sent: `give_up` settles it so, and the state
    file keeps it for the next run to send (not as an unknown outcome, which would never
    send its events)."""
    if (isinstance(exc, AuthError) and exc.stored_nothing) or (
        isinstance(exc, OutputError) and exc.before_request
    ):
        batch.sent = False


@runtime_checkable
class WaitsForPermits(Protocol):
    """A sender whose requests may wait for a permit before they go out (the client)."""

    def stop_waiting(self) -> None:
        """Requests still waiting for a permit end with CancelledError, unsent."""


class Dispatcher:
    """The lanes' queues and the tasks that send them."""

    def __init__(
        self,
        *,
        planner: Planner,
        sender: Sender,
        accounts: Accounts,
        control: Control,
        options: RunOptions,
        checkpoint: Callable[[], None],
        notify: Callable[[], None],
    ) -> None:
        self._planner = planner
        self._sender = sender
        self._accounts = accounts
        self._control = control
        self._options = options
        self._checkpoint = checkpoint
        self._notify = notify
        self.tasks: set[asyncio.Task[None]] = set()
        self.queued = 0  # sealed batches without their final answer
        self.waiting: list[Batch] = []  # deletion batches waiting for upload batches
        self.deleting: list[Batch] = []  # deletion batches on their way
        self.held: list[Lane] = []  # lanes whose next batch waits for another lane's (a link)
        self._changed = asyncio.Event()  # a batch settled, a lane stopped, or a stop

    def enqueue(self, batches: list[Batch]) -> None:
        """Sealed batches join their lanes' queues; an idle lane starts sending. A
        deletion batch goes out once nothing it waits for is left."""
        lanes = self._planner.lanes
        # Upload batches first: a deletion sealed with the upload batch it waits for
        # (`Planner.unblock`) must find that batch in its lane, or it would go first.
        deletions = [batch for batch in batches if batch.lane < 0]
        for batch in batches:
            batch.freeze()
            if batch.lane < 0:
                continue
            lane = lanes[batch.lane]
            lane.queue.append(batch)
            self.queued += 1
            self._start(lane)
        for batch in deletions:
            self.queued += 1
            self.waiting.append(batch)
            self._start_deletions(batch)

    def _start(self, lane: Lane) -> None:
        """An idle lane with batches starts sending."""
        if not lane.busy and lane.queue and not self._control.stopping:
            lane.busy = True
            task = asyncio.create_task(self._drive(lane))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _release_held(self) -> None:
        """Lanes whose next batch waited for batches that now have their answers."""
        for lane in list(self.held):
            if not lane.queue or all(b.answered for b in lane.queue[0].after):
                self.held.remove(lane)
                self._start(lane)

    def wake(self) -> None:
        """Something changed that `until` waits for (a stop)."""
        self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until `done()` holds, the run stops, or a lane fails. Deletion batches
        that wait for upload batches still being filled, while nothing is on its way,
        get them sealed as they are: the reader may be waiting for them."""
        self._notify()
        control = self._control
        while not done() and not control.stopping and control.fatal is None:
            # A task that just ended may still be in `tasks` (its done callback runs
            # later): only a task not done yet will wake this loop again.
            if self.waiting and all(task.done() for task in self.tasks):
                self.enqueue(self._planner.unblock(self.waiting))
                self.start_deletions()
                if all(task.done() for task in self.tasks):  # a bug: never a silent hang
                    control.fail(RuntimeError("deletion batches wait for nothing"))
                continue
            if self.held and all(task.done() for task in self.tasks):  # a bug, as above
                control.fail(RuntimeError("a lane waits for a batch that is not on its way"))
                continue
            self._changed.clear()
            await self._changed.wait()
        control.check()

    def live(self) -> list[Batch]:
        """Every batch holding operations without a final verdict."""
        lanes = self._planner.lanes
        queued = [b for lane in lanes for b in lane.queue]
        return queued + self.waiting + self.deleting + self._planner.open_batches()

    def lanes_idle(self) -> bool:
        """No upload batch waits in a lane or is on its way."""
        return self.queued == len(self.waiting) + len(self.deleting)

    def start_deletions(self) -> bool:
        """Send every waiting deletion batch nothing holds back; whether one went."""
        before = len(self.deleting)
        self._start_deletions(None)
        return len(self.deleting) > before

    def _start_deletions(self, answered: Batch | None) -> None:
        """Send the waiting deletion batches nothing holds back any more: those that
        share a profile with `answered` (None: all of them)."""
        if not self.waiting or self._control.stopping or self._control.fatal is not None:
            return
        planner = self._planner
        for deletion in list(self.waiting):
            if answered is not None and deletion.keyset.isdisjoint(answered.keyset):
                continue  # what was answered held none of its profiles: nothing changed
            if planner.blocked(deletion):
                continue
            self.waiting.remove(deletion)
            self.deleting.append(deletion)
            task = asyncio.create_task(self._drive_deletion(deletion))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _drive_deletion(self, batch: Batch) -> None:
        control = self._control
        if control.stopping or control.fatal is not None:
            return  # unsent: `give_up` settles it
        try:
            verdicts = await self._send(batch)
            self.deleting.remove(batch)
            self.queued -= 1
            self._accounts.answer(batch, verdicts)
            self.enqueue(self._planner.release(batch))
            self._checkpoint()
            self._notify()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            _refused(batch, exc)
            control.fail(exc)
        finally:
            self._changed.set()  # answered, or failed: `until` looks again

    async def _drive(self, lane: Lane) -> None:
        """Send a lane's batches one at a time, in order: the next only after the final
        answer to the one before, so a retried request never lands after a later one."""
        control = self._control
        batch: Batch | None = None
        try:
            while lane.queue and not control.stopping and control.fatal is None:
                batch = lane.queue[0]
                if batch.after and not all(b.answered for b in batch.after):
                    if lane not in self.held:  # a link: the other lane's batch goes first
                        self.held.append(lane)
                    batch = None
                    break
                verdicts = await self._send(batch)
                lane.queue.popleft()
                self.queued -= 1
                self._accounts.answer(batch, verdicts)
                self._planner.answered(batch)
                if self.held:
                    self._release_held()
                self._start_deletions(batch)
                self._changed.set()
                self._checkpoint()
                self._notify()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # AuthError, a state file that cannot be written, a bug
            if batch is not None:
                _refused(batch, exc)
            control.fail(exc)  # the reader raises it: never a silent hang
        finally:
            lane.busy = False
            self._changed.set()

    async def _send(self, batch: Batch) -> list[Verdict]:
        def on_wire() -> None:
            if not batch.sent:
                batch.sent = True
                self._checkpoint()  # a kill from here on leaves this batch "sent"

        delete: DeleteKey | None = None
        if batch.kind is not OpKind.UPLOAD:
            delete = "identity" if batch.kind is OpKind.DELETE_IDENTITY else "guid"
        # A deletion's operations are all safe (see `prepare.encode`).
        resend = [True] * len(batch) if self._options.retry_unknown else batch.safe
        request = Request(delete, batch.bodies, batch.keys, resend)
        return await self._sender.send(request, on_wire)

    # -- stopping -----------------------------------------------------------------

    async def drain(self) -> None:
        """After a stop: nothing more is sent; what is in flight may finish."""
        await self._finish_in_flight()
        self._control.check()

    async def refused(self) -> None:
        """After a 401: nothing more is sent, and the requests on the wire get their own
        answers (a 401 each, with the same credentials): cancelled, their batches would
        stay of unknown outcome though CleverTap stored none of them."""
        await self._finish_in_flight()

    async def _finish_in_flight(self) -> None:
        if isinstance(self._sender, WaitsForPermits):
            # Lanes waiting for a permit (the client's limit may be below the lanes, as
            # with --concurrency auto after 429s) have nothing on the wire: they would
            # send new requests after the stop. Their batches stay unsent instead.
            self._sender.stop_waiting()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=self._options.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        self.give_up()

    async def abort(self) -> None:
        """Stop sending; every record without an answer fails, so the counts still add up."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.give_up()

    def give_up(self) -> None:
        """Fail every batch without an answer: ABORTED if it went out (CleverTap may
        have it), INTERRUPTED if not. The state file first keeps them all pending, so
        a re-run sends the unsent ones and reports the ones whose outcome is unknown."""
        control = self._control
        if control.frozen:
            return
        try:
            self._checkpoint()
        except OutputError as exc:  # the state file cannot be written: still count them all
            control.fail(exc)
        control.frozen = True
        unsent = self._unsent()
        live = sorted(self.live(), key=lambda b: b.seq)
        self._planner.clear()
        self.waiting.clear()
        self.deleting.clear()
        self.held.clear()
        settle = self._accounts.ledger.settle
        for batch in live:
            self.queued -= batch.sealed
            for owner in batch.owners_of():
                settle(owner, ABORTED if batch.sent else unsent)

    def _unsent(self) -> Verdict:
        """Why the records never sent were not: an output that could not be written (a
        full disk), or an interruption."""
        cause = self._control.fatal or self._accounts.ledger.output_error
        if isinstance(cause, AuthError):  # (its own request's records too: none stored)
            return _refusal(cause.status)
        if not isinstance(cause, OutputError):
            return INTERRUPTED
        code = DISK_FULL if isinstance(cause, DiskFull) else OUTPUT_FAILED
        why = "a disk is full" if code == DISK_FULL else "an output could not be written"
        return Verdict(
            Outcome.FAILED, code, f"not sent: the run stopped because {why}", Stage.TRANSPORT
        )
