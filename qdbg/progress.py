"""Progress reporting for long work (a forward pass, a requantization, a synthetic family).

The engine, the quantizer and synth call a `Progress` callback; they never draw anything. The CLI
passes one that renders a Rich progress bar on a terminal (qdbg/cli_progress.py); everyone else
passes nothing, and `report` below turns None into a no-op.

    def progress(what: str, done: int, total: int | None) -> None: ...

`what` says what is being done now ("pass 2/3, layer 5/24", "blk.3.ffn_down.weight"); `done` of
`total` units are finished (total None when unknown). Calls are cheap and may be frequent.
"""

from __future__ import annotations

from typing import Callable, Optional

__all__ = ["Progress", "report"]

Progress = Callable[[str, int, Optional[int]], None]


def report(progress: Progress | None, what: str, done: int, total: int | None) -> None:
    """Call `progress` if there is one."""
    if progress is not None:
        progress(what, done, total)
