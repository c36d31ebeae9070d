"""The key map: every app binding with an id (remappable with App.set_keymap / make_app(keymap=)),
shown in the footer, the help screen and the command palette."""

from __future__ import annotations

from textual.binding import Binding

BINDINGS = [
    Binding("s,n,right", "step", "step", id="step", tooltip="one op forward, computing it if needed"),
    Binding("b,left", "back", "back", id="back", tooltip="one op back through history"),
    Binding("l", "next_layer", "layer", id="next_layer", tooltip="run to the next layer's first op"),
    Binding("c", "cont", "cont", id="continue", tooltip="run to a breakpoint or the end"),
    Binding("e", "run_to_end", "end", id="run_to_end", tooltip="run to the end, ignoring breakpoints"),
    Binding("t", "toggle_breakpoint", "bp", id="toggle_breakpoint", tooltip="breakpoint on this op, on/off"),
    Binding("a", "add_condition", "cond", id="add_condition", tooltip="add a conditional breakpoint"),
    Binding("d", "decode", "dec", id="decode",
            tooltip="feed one more token (A's argmax) to every side and step into its pass"),
    Binding("R", "restart", "reset", id="restart", tooltip="back to before the first op"),
    Binding("p", "patch('B')", "patch", id="patch", show=False,
            tooltip="A computes this op with B's weight (P: R's); re-run from the start (breakpoints kept)"),
    Binding("u", "patches", "patches", id="patches", show=False, tooltip="list the weight patches; remove one and re-run"),
    Binding("o", "scope", "scope", id="scope", tooltip="metrics over the last token, all, or one position"),
    Binding("slash", "goto", "go to", id="goto", tooltip="go to an op by name, glob or layer"),
    Binding("w", "save_trace", "save", id="save_trace", tooltip="save the session as a trace"),
    Binding("r", "export_report", "rep", id="export_report", tooltip="write the markdown report"),
    Binding("question_mark", "help", "help", id="help", tooltip="keys and breakpoint conditions"),
    Binding("escape", "interrupt", "stop", id="interrupt", tooltip="interrupt a running verb"),
    Binding("q", "quit", "quit", id="quit", tooltip="quit qdbg"),
]

HIDDEN_BINDINGS = [
    Binding("tab", "focus_pane", "next pane", id="focus_pane", show=False,
            tooltip="focus the breakpoint list (first row chosen); again: its input, the timeline"),
]
"""Bindings kept out of the footer and the palette (listed in `?` help with the pane's keys)."""

UNLISTED_BINDINGS = [
    Binding("P", "patch('R')", "patch from R", id="patch_r", show=False,
            tooltip="A computes this op with R's weight; re-run from the start (breakpoints kept)"),
]
"""Bindings only named in another binding's help text (P, in p's)."""

VERB_LABELS = {"step": "step", "next_layer": "next layer", "cont": "continue", "run_to_end": "run to end",
               "run_to": "go to", "set_scope": "scope", "decode": "decode", "restart": "restart",
               "patch": "patch and re-run"}
"""What the status line calls each verb run in a worker."""
