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

    def checkpoint(self) -> None:
        """Write each input's progress to the state file (with --state), and with it the
        length of each output file: what the state calls settled is in the outputs, and
        what they hold beyond that a resumed run takes out and writes again."""
        ledger = self._accounts.ledger
        inputs = self._feed.inputs
        if self._state is None or self._control.frozen or not (inputs or ledger.files):
            return
        ledger.flush()  # what the state calls settled is in the report first
        if ledger.output_error is not None:
            # Some lines are missing from an output: the state must not call their records
            # settled. It stays at the last checkpoint, and the next run does them again.
            raise ledger.output_error
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
        for name, progress in list(inputs.items()):
            if progress.finished_reading and not (live[name].batches or live[name].spans):
                del inputs[name]
