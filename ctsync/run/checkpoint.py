"""The state file (`--state`), written from what the run holds: each input's progress,
the positions of every batch without an answer (sent or not) and of every held verdict,
and the length of each output file, in one transaction."""

from __future__ import annotations

from ctsync.run.accounts import Accounts
from ctsync.run.dispatch import Dispatcher
from ctsync.run.feed import Feed
from ctsync.run.options import Control
from ctsync.state import Live, Span, StateFile, runs_json


class Checkpointer:
    def __init__(
        self,
        state: StateFile | None,
        *,
        feed: Feed,
        dispatcher: Dispatcher,
        accounts: Accounts,
        control: Control,
    ) -> None:
        self._state = state
        self._feed = feed
        self._dispatcher = dispatcher
        self._accounts = accounts
        self._control = control
        summary = accounts.ledger.summary
        # The skipped and invalid counts as of the last checkpoint written (`unsettle`).
        self._settled = (summary.skipped.copy(), summary.invalid.copy())

    def unsettle(self) -> int:
        """After a stop on a file that could not be written (the state, or an output it
        commits): the records counted skipped or invalid since the last checkpoint are
        not settled (the state does not say they were read, their report lines may be
        missing), and the run that resumes reads and counts them again. Taken out of
        those counts here; how many (the caller counts them failed, as the records not
        sent), so that the two runs' counts add up to the input's."""
        summary = self._accounts.ledger.summary
        moved = 0
        for counts, before in zip((summary.skipped, summary.invalid), self._settled, strict=True):
            for reason, count in list(counts.items()):
                extra = count - before.get(reason, 0)
                if extra > 0:
                    moved += extra
                    counts[reason] -= extra
                    if not counts[reason]:
                        del counts[reason]
        return moved

    def checkpoint(self, *, final: bool = False) -> None:
        """Write each input's progress to the state file (with --state), and with it the
        length of each output file: what the state calls settled is in the outputs, and
        what they hold beyond that a resumed run takes out and writes again. Without a
        state file, flush the outputs (not at the `final` one, as the run ends: closing
        them writes what is left, and says if its last lines are missing)."""
        ledger = self._accounts.ledger
        inputs = self._feed.inputs
        if self._control.frozen or not (inputs or ledger.files):
            return
        if self._state is None and (final or not ledger.files):
            return
        # What the state calls settled is in the report first. Without a state file too:
        # an output on a full disk then stops the run at once, as the README says,
        # rather than after a megabyte of lines held, or at the end.
        ledger.flush()
        if ledger.output_error is not None:
            # Some lines are missing from an output: the state must not call their records
            # settled. It stays at the last checkpoint, and the next run does them again.
            raise ledger.output_error
        if self._state is None:
            self._settled = (ledger.summary.skipped.copy(), ledger.summary.invalid.copy())
            return
        live: dict[str, Live] = {name: Live() for name in inputs}
        for batch in self._dispatcher.live():
            for name, runs in batch.runs.items():
                found = live.get(name)
                if found is None or not runs:
                    continue
                if not batch.frozen:  # still filling: as it is, no copy, no object
                    found.batches.append((batch.sent, runs))
                    continue
                fragment = batch.fragments.get(name)  # on its way: its runs are final
                if fragment is None:
                    fragment = batch.fragments[name] = runs_json(runs)
                found.batches.append((batch.sent, fragment))
        for positions in self._accounts.held.values():
            for name, position, v in positions:
                found = live.get(name)
                if found is not None:
                    verdict = (v.outcome.value, v.code, v.message, v.stage.value)
                    found.spans.append(Span(position, position, True, verdict))
        self._state.checkpoint(
            [(progress, live[name]) for name, progress in inputs.items()], ledger.lengths()
        )
        self._settled = (ledger.summary.skipped.copy(), ledger.summary.invalid.copy())
        for name, progress in list(inputs.items()):
            if progress.finished_reading and not (live[name].batches or live[name].spans):
                del inputs[name]
