"""show(): put a pane's text into its Static without re-laying out the screen when it can.

A Static's `update` lays the whole screen out again by default (its height may change), which
redraws every pane; the panes redraw on each step, so that cost is paid per key press. Their
bodies never wrap (`text-wrap: nowrap`) and have a fixed width, so the height is the number of
lines: an update that keeps it redraws the Static alone.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text

from qdbg.tui.fmt import lines


def line_count(text: Text) -> int:
    return text.plain.count("\n") + 1


def show(body: Any, content: Text | Sequence[Text]) -> None:
    """`body.update(content)`, with a layout only when the number of lines changed (or the first
    time: the composed content's height is not known here)."""
    text = content if isinstance(content, Text) else lines(content)
    n = line_count(text)
    same = getattr(body, "_qdbg_lines", None) == n
    body._qdbg_lines = n
    body.update(text, layout=not same)
