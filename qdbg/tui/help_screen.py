"""HelpScreen: the key map (as currently bound) and the breakpoint condition language."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from qdbg.expr import ALIASES, VARIABLES


def keys_table(rows: list[tuple[str, str, str]], title: str = "keys") -> Table:
    """Key, what it does, binding id (the name a key map uses)."""
    t = Table(title=title, box=None, pad_edge=False, title_justify="left", title_style="bold")
    t.add_column("key", style="bold cyan", no_wrap=True)
    t.add_column("action")
    t.add_column("id", style="dim")
    for key, desc, bid in rows:
        t.add_row(key, desc, bid)
    return t


def variables_table() -> Table:
    t = Table(title="breakpoint conditions  (e.g.  rel_rms > 0.05 and layer >= 3,  op ~ \"ffn_*\",  flip)",
              box=None, pad_edge=False, title_justify="left", title_style="bold")
    t.add_column("name", style="bold green", no_wrap=True)
    t.add_column("type", style="dim")
    t.add_column("meaning")
    for name, (typ, meaning) in VARIABLES.items():
        t.add_row(name, typ, meaning)
    t.add_row("aliases", "", ", ".join(f"{a} = {b}" for a, b in ALIASES.items()))
    return t


class HelpScreen(ModalScreen[None]):
    """Keys and condition language; any of Esc, q, ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 100; max-width: 100%; height: 90%; padding: 0 1;
        border: thick $accent; background: $surface;
    }
    """
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close", id="help.close")]

    def __init__(self, keys: list[tuple[str, str, str]], pane_keys: list[tuple[str, str, str]] = (),
                 keymap_note: str = "") -> None:
        super().__init__()
        self.keys, self.pane_keys, self.keymap_note = keys, list(pane_keys), keymap_note

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "qdbg help"
            yield Static(keys_table(self.keys))
            if self.pane_keys:
                yield Static(Text(""))
                yield Static(keys_table(self.pane_keys, "breakpoint list (after tab)"))
            if self.keymap_note:
                yield Static(Text(f"\n{self.keymap_note}", style="dim"), id="keymap-note")
            yield Static(Text(""))
            yield Static(variables_table())
            yield Static(Text("\nOps are colored by rel_rms = ||a-b|| / ||b|| on a log scale: "
                              "green 0.1% → yellow 1% → orange 10% → red 100%.", style="dim"))
