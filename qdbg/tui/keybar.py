"""KeyBar: the bottom line of keys, fitted to the terminal's width.

Textual's Footer cuts the line at the right edge, which at 80 columns hides `?` help and `q` quit.
KeyBar lists the app's bindings with their current keys (a user key map shows), and drops the
least needed ones first (by `PRIORITY`) so that help and quit always stay.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text
from textual.widget import Widget

PRIORITY = ("help", "quit", "step", "back", "continue", "next_layer", "run_to_end", "goto",
            "toggle_breakpoint", "add_condition", "interrupt", "scope", "decode", "restart",
            "save_trace", "export_report")
"""Binding ids, most needed first: the last ones are dropped first when the line is short."""


def fit_keys(items: Sequence[tuple[str, str, str]], width: int) -> Text:
    """One line of `key label` items (id, key, label) in their given order, keeping the items of
    highest PRIORITY that fit in `width` cells."""
    rank = {bid: i for i, bid in enumerate(PRIORITY)}
    order = sorted(range(len(items)), key=lambda i: rank.get(items[i][0], len(PRIORITY)))
    keep: set[int] = set()
    used = 0
    for i in order:
        _, key, label = items[i]
        w = len(key) + 1 + len(label) + (1 if keep else 0)
        if used + w <= width:
            keep.add(i)
            used += w
    out = Text(no_wrap=True, overflow="crop")
    for i in sorted(keep):
        _, key, label = items[i]
        if out.cell_len:
            out.append(" ")
        out.append(key, style="bold reverse")
        out.append(f" {label}", style="")
    return out


class KeyBar(Widget):
    """The app's keys on one line; call `refresh()` after the key map changes."""

    DEFAULT_CSS = """
    KeyBar { height: 1; dock: bottom; background: $panel; color: $text; }
    """

    def render(self) -> Text:
        return fit_keys(key_items(self.app, self.screen), self.size.width)


def key_items(app: Any, screen: Any) -> list[tuple[str, str, str]]:
    """(id, first key as displayed, footer label) of every app binding shown in the footer."""
    keys: dict[str, str] = {}
    for key, ab in screen.active_bindings.items():
        if ab.binding.id and ab.binding.id not in keys:
            keys[ab.binding.id] = app.get_key_display(ab.binding)
    return [(b.id, keys.get(b.id, b.key.split(",")[0]), b.description)
            for b in getattr(app, "COMMAND_BINDINGS", ()) if b.show]
