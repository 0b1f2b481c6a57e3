"""Progress of long commands: a bar on standard error, only when it is a terminal.

Piped or redirected output (a log file, ``--json`` read by a program) never gets a
progress line; a terminal gets a bar that disappears when the work is done, so what
stays on the screen is the command's report.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

__all__ = ["Advance", "progress", "shown"]

#: Called with the number of items just done.
Advance = Callable[[int], None]


def _ignore(_done: int) -> None:
    return None


def shown(enabled: bool = True) -> bool:
    """True when a progress bar would be shown: ``enabled`` and standard error a terminal."""
    return enabled and sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str, *, total: int | None, enabled: bool = True) -> Iterator[Advance]:
    """A progress bar of ``total`` items on standard error; yields the `Advance` to call.

    Shown only when ``enabled`` (commands pass ``not as_json``) and standard error is a
    terminal; otherwise the `Advance` does nothing.
    """
    if not shown(enabled):
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int) -> None:
            bar.advance(task, done)

        yield advance
