"""BreakpointsPane: the session's breakpoints with hit counts, an input to add a condition, and the
parse error shown inline with a caret under the column at fault.

The pane only shows state and reports what the user asked for (ExpressionSubmitted,
BreakpointToggleRequested, BreakpointRemoveRequested); the app changes the BreakpointList.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from qdbg.tui.messages import BreakpointRemoveRequested, BreakpointToggleRequested, ExpressionSubmitted

PLACEHOLDER = "add: rel_rms > 0.1 and layer >= 1"


def caret_text(expr: str, message: str, column: int) -> Group:
    """The expression, a caret under 1-based `column` (none if 0), and the message (wrapped)."""
    t = Text(no_wrap=True, overflow="crop")
    t.append(f" {expr}", style="bold")
    if column > 0:
        t.append("\n " + " " * (column - 1) + "^", style="bold red")
    return Group(t, Text(f" {message}", style="red"))


def bp_prompt(bp: Any) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("● " if bp.enabled else "○ ", style="bold red" if bp.enabled else "dim")
    t.append(f"#{bp.id} ", style="bold")
    t.append(bp.expr, style="" if bp.enabled else "dim strike")
    if bp.temporary:
        t.append(" (once)", style="dim")
    t.append(f"  hits {bp.hits}", style="yellow" if bp.hits else "dim")
    return t


class BreakpointList(OptionList):
    """The list of breakpoints; focusing it chooses its first row if none is, so Space right after
    Tab acts on a visible row."""

    def on_focus(self, event: events.Focus) -> None:
        if self.highlighted is None:
            first = next((i for i in range(self.option_count) if not self.get_option_at_index(i).disabled), None)
            if first is not None:
                self.highlighted = first


class BreakpointsPane(Vertical):
    """Set `session`, bump `revision` when its breakpoints change; `show_error` / `clear_error`."""

    DEFAULT_CSS = """
    BreakpointsPane > OptionList { height: 1fr; border: none; padding: 0; }
    BreakpointsPane > Input { height: 3; margin: 0; }
    BreakpointsPane > #bp-error { height: auto; max-height: 8; overflow: hidden; }
    BreakpointsPane > #bp-error.-empty { display: none; }
    """
    BINDINGS = [
        Binding("space", "toggle_selected", "toggle bp", id="bp.toggle",
                tooltip="enable/disable the chosen breakpoint (enter too)"),
        Binding("x,delete", "remove_selected", "delete bp", id="bp.delete", tooltip="delete the chosen breakpoint"),
        Binding("escape", "leave", "done", id="bp.leave", tooltip="leave the list or the input (keys step again)"),
    ]

    revision: reactive[int] = reactive(0, always_update=True)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session: Any = None

    def compose(self) -> ComposeResult:
        yield BreakpointList(id="bp-list")
        yield Input(placeholder=PLACEHOLDER, id="bp-input")
        yield Static("", id="bp-error", classes="-empty")

    def watch_revision(self) -> None:
        ol = self.query_one("#bp-list", OptionList)
        keep = ol.highlighted
        ol.clear_options()
        bps = list(self.session.breakpoints) if self.session is not None else []
        if not bps:
            ol.add_option(Option(Text("no breakpoints — t on an op, a for a condition", style="dim"),
                                 id="none", disabled=True))
            return
        ol.add_options([Option(bp_prompt(bp), id=f"bp-{bp.id}") for bp in bps])
        if keep is not None:
            ol.highlighted = min(keep, len(bps) - 1)

    # -- input and errors ------------------------------------------------------------------
    def focus_input(self) -> None:
        self.query_one("#bp-input", Input).focus()

    def show_error(self, expr: str, message: str, column: int) -> None:
        err = self.query_one("#bp-error", Static)
        err.update(caret_text(expr, message, column))
        err.remove_class("-empty")

    def clear_error(self) -> None:
        err = self.query_one("#bp-error", Static)
        err.update("")
        err.add_class("-empty")

    @on(Input.Submitted, "#bp-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.post_message(ExpressionSubmitted(event.value))

    def accept(self) -> None:
        """The app added the submitted condition: empty the input and the error, and hand the keys
        back to the debugger so the next `c` continues instead of being typed into the field."""
        self.query_one("#bp-input", Input).value = ""
        self.clear_error()
        self.screen.set_focus(None)

    # -- list --------------------------------------------------------------------------------
    def _selected_id(self) -> int | None:
        ol = self.query_one("#bp-list", OptionList)
        if ol.highlighted is None:
            return None
        opt = ol.get_option_at_index(ol.highlighted)
        return int(opt.id[3:]) if opt.id and opt.id.startswith("bp-") else None

    @on(OptionList.OptionSelected, "#bp-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_toggle_selected()

    def action_toggle_selected(self) -> None:
        bp_id = self._selected_id()
        if bp_id is not None:
            self.post_message(BreakpointToggleRequested(bp_id))

    def action_remove_selected(self) -> None:
        bp_id = self._selected_id()
        if bp_id is not None:
            self.post_message(BreakpointRemoveRequested(bp_id))

    def action_leave(self) -> None:
        self.screen.set_focus(None)
