"""The CLI's terminal output helpers: Rich consoles that behave when piped, and progress bars.

On a terminal, `stdout_console()` wraps to the window as usual. Piped or redirected, it never wraps
or cuts: op names stay whole and header lines stay one line, so `grep` and `cut` see full text.
`progress_bar()` yields a qdbg.progress callback that draws a transient bar on stderr when stderr
is a terminal, and does nothing otherwise (no escape codes in logs).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

from qdbg.progress import Progress

PIPE_WIDTH = 1 << 16  # wide enough that Rich never wraps a piped line


def stdout_console() -> Console:
    """A Console for stdout: the terminal's width, or (piped) no wrapping and no cutting."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=PIPE_WIDTH, soft_wrap=True, no_color=True, highlight=False)


def plain_table(*columns: str, **kw):
    """A Rich Table whose cells never wrap or get cut with an ellipsis when stdout is piped."""
    from rich.table import Table

    t = Table(*columns, **kw)
    if not sys.stdout.isatty():
        for c in t.columns:
            c.no_wrap, c.overflow = True, "ignore"
    return t


@contextmanager
def progress_bar(title: str) -> Iterator[Progress | None]:
    """A progress callback drawing "title: what [bar] done/total ETA" on stderr, or None if not a tty."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(title, total=None)

        def update(what: str, done: int, total: int | None) -> None:
            bar.update(task, description=f"{title}: {what}", completed=done, total=total)

        yield update
