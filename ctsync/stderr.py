"""Standard error for people, and standard output when its reader has gone. Rich is
loaded only once something is printed: a quiet run (`--quiet --json`, cron) never
loads it, a fifth of the imports of a one-line dry run."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class Stderr:
    """stderr as a Rich console, built on first use."""

    __slots__ = ("_console",)

    def __init__(self) -> None:
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def print(self, *objects: Any, **options: Any) -> None:
        """`rich.console.Console.print`."""
        self.console.print(*objects, **options)


def escape(text: str) -> str:
    """`rich.markup.escape`: `text` printed as written, never read as markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def quiet_stdout() -> None:
    """Point stdout at /dev/null (its reader gone, or its disk full), so that closing it at
    exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no stdout to speak of
        pass
