"""QdbgApp: the Textual front end of a qdbg Session, and `make_app`, the factory shared by the CLI
and the tests.

The app owns no debugging logic: keys call the Session's verbs (step, back, next_layer, cont,
run_to_end, run_to, set_scope, breakpoints) and the panes render the Records it returns. Verbs
that may compute run in a thread worker that polls an Event between ops (Esc sets it) and posts
past-tense messages back (RunProgressed, RunFinished, RunFailed); nothing else touches the
session while a worker runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from textual import work
from textual.app import App, ComposeResult
from textual.reactive import reactive
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer

from qdbg.errors import ExpressionError, QdbgError
from qdbg.tui import keys
from qdbg.tui.actions import bare_message, find_op, logits_record, one_line, run_verb, write_file
from qdbg.tui.breakpoints_pane import BreakpointsPane
from qdbg.tui.commands import QdbgCommands
from qdbg.tui.confirm import ConfirmScreen
from qdbg.tui.diff_pane import DiffPane
from qdbg.tui.fmt import op_expr
from qdbg.tui.header import SessionHeader, pass_complete
from qdbg.tui.help_screen import HelpScreen
from qdbg.tui.layer_spark import LayerSpark
from qdbg.tui.logits_pane import LogitsPane
from qdbg.tui.messages import (BreakpointRemoveRequested, BreakpointToggleRequested, ExpressionSubmitted,
                               FileWritten, LoadFailed, OpClicked, RunFailed, RunFinished, RunProgressed,
                               SessionLoaded, WriteFailed)
from qdbg.tui.prompt import PromptScreen
from qdbg.tui.stats_pane import StatsPane
from qdbg.tui.timeline import Timeline

DEFAULT_TRACE = "qdbg-trace.npz"
DEFAULT_REPORT = "qdbg-report.md"
PROGRESS_EVERY = 0.1
"""Seconds between progress messages from a running verb (more would crowd out key presses)."""


class QdbgApp(App[None]):
    """Step two quantizations of one model in lockstep and see where they diverge."""

    CSS_PATH = "qdbg.tcss"
    TITLE = "qdbg"
    COMMANDS = App.COMMANDS | {QdbgCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    COMMAND_BINDINGS = keys.BINDINGS
    BINDINGS = COMMAND_BINDINGS

    busy: reactive[str] = reactive("", init=False)
    """The verb a worker is running ('' when idle); the session is the worker's until it ends."""

    def __init__(self, session: Any, *, title: str | None = None, trace_path: str | Path | None = None,
                 report_path: str | Path | None = None) -> None:
        super().__init__()
        self._loader: Callable[[], Any] | None = None if _is_session(session) else session
        self.session: Any = session if _is_session(session) else None
        self.title = title or "qdbg"
        self.trace_path = Path(trace_path or DEFAULT_TRACE)
        self.report_path = Path(report_path or DEFAULT_REPORT)
        self.load_error: str | None = None
        self.last_stop: Any = None
        self._stop = threading.Event()
        self._seen: tuple = (None, None, None)

    def compose(self) -> ComposeResult:
        yield SessionHeader(id="header")
        with Horizontal(id="main"):
            with Vertical(id="timeline-pane"):
                yield LayerSpark(id="layer-spark")
                yield Timeline(id="timeline")
            with Vertical(id="right"):
                with Horizontal(id="top-row"):
                    yield StatsPane(id="stats")
                    yield DiffPane(id="diff")
                with Horizontal(id="bottom-row"):
                    yield LogitsPane(id="logits")
                    yield BreakpointsPane(id="breakpoints")
        # every binding fits in 120 columns; ctrl+p still opens the palette (listed in `?` help)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        for wid, title in (("#timeline-pane", "ops  (rel_rms A~B)"), ("#stats", "stats"), ("#diff", "diff A~B"),
                           ("#logits", "logits"), ("#breakpoints", "breakpoints")):
            self.query_one(wid).border_title = title
        if self.session is not None:
            self._attach_session(self.session)
        else:
            self._set_state("loading…", "loading")
            self._load()

    # -- session <-> views ------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="session", exit_on_error=False)
    def _load(self) -> None:
        try:
            session = self._loader()
        except Exception as e:  # the loader's failure is shown, the app stays up to show it
            self.post_message(LoadFailed(one_line(e)))
            return
        self.post_message(SessionLoaded(session))

    def on_session_loaded(self, msg: SessionLoaded) -> None:
        self.session = msg.session
        self._set_state("", "")
        self._attach_session(msg.session)

    def on_load_failed(self, msg: LoadFailed) -> None:
        self.load_error = msg.error
        self._set_state(f"cannot load: {msg.error}", "error")

    def _attach_session(self, session: Any) -> None:
        for w in (SessionHeader, Timeline, LayerSpark, StatsPane, DiffPane, LogitsPane, BreakpointsPane):
            self.query_one(w).session = session
        self._refresh_views()

    def _refresh_views(self, force: bool = False) -> None:
        s = self.session
        if s is None:
            return
        rec = s.current
        bps = tuple((b.id, b.enabled, b.hits) for b in s.breakpoints)
        seen = (len(s.history), s.scope, bps)
        if force or seen != self._seen:
            self.query_one(Timeline).revision += 1
            if force or bps != self._seen[2]:
                self.query_one(BreakpointsPane).revision += 1
            self._seen = seen
        self.query_one(Timeline).cursor = s.cursor
        self.query_one(LayerSpark).revision += 1
        self.query_one(SessionHeader).cursor = s.cursor
        self.query_one(StatsPane).record = rec
        self.query_one(DiffPane).record = rec
        lr, pane = logits_record(s), self.query_one(LogitsPane)
        if force or lr is not pane.record:
            pane.record = lr

    def watch_busy(self, busy: str) -> None:
        self.screen.set_class(bool(busy), "-busy")

    def _set_state(self, text: str, kind: str = "") -> None:
        header = self.query_one(SessionHeader)
        header.state, header.state_kind = text, kind

    def _can_act(self) -> bool:
        if self.session is None:
            self.notify(self.load_error or "still loading", severity="warning")
            return False
        if self.busy:
            self.notify(f"busy: {keys.VERB_LABELS.get(self.busy, self.busy)} (Esc stops it)", severity="warning")
            return False
        return True

    # -- verbs ------------------------------------------------------------------------------
    def _start(self, verb: str, arg: Any = None) -> None:
        self._stop.clear()
        self.busy = verb
        self.query_one(Timeline).hit = -1
        self._set_state(f"⟳ {keys.VERB_LABELS[verb]}…", "running")
        self._run_verb(verb, arg)

    @work(thread=True, exclusive=True, group="session", exit_on_error=False)
    def _run_verb(self, verb: str, arg: Any) -> None:
        s, stop = self.session, self._stop
        seen = [len(s.history), time.monotonic()]

        def should_stop() -> bool:
            # report newly computed ops, at most every PROGRESS_EVERY s (keys stay responsive)
            now = time.monotonic()
            if len(s.history) != seen[0] and now - seen[1] >= PROGRESS_EVERY:
                seen[:] = [len(s.history), now]
                self.post_message(RunProgressed(verb, seen[0], s.cursor))
            return stop.is_set()

        try:
            st = run_verb(s, verb, arg, should_stop)
        except Exception as e:  # shown in the status line; the session stays usable
            self.post_message(RunFailed(verb, one_line(e)))
            return
        self.post_message(RunFinished(verb, st, arg))

    def on_run_progressed(self, msg: RunProgressed) -> None:
        if self.busy:
            self._set_state(f"⟳ {keys.VERB_LABELS[msg.verb]}… {msg.n_ops} ops computed (Esc stops)", "running")

    def on_run_failed(self, msg: RunFailed) -> None:
        self.busy = ""
        self._set_state(f"{keys.VERB_LABELS.get(msg.verb, msg.verb)} failed: {msg.error}", "error")
        self._refresh_views(force=True)

    def on_run_finished(self, msg: RunFinished) -> None:
        self.busy = ""
        if msg.verb == "set_scope":
            self._set_state(f"scope {self.session.scope}")
            self._refresh_views(force=True)
            return
        if msg.verb == "run_to" and msg.stop.reason == "end":
            self._goto_history(msg.wanted, wrap=True)
            return
        self._show_stop(msg.stop)

    def _show_stop(self, stop: Any) -> None:
        self.last_stop = stop
        rec = stop.record
        tl = self.query_one(Timeline)
        tl.hit = rec.index if stop.reason == "breakpoint" and rec is not None else -1
        if stop.reason == "breakpoint":
            ids = ", ".join(f"#{b.id} {b.expr}" for b in stop.breakpoints)
            self._set_state(f"● stopped at breakpoint {ids}", "breakpoint")
        elif stop.reason == "interrupted":
            self._set_state(f"interrupted at op {rec.index + 1 if rec else 0}", "interrupted")
        elif stop.reason == "end":
            self._set_state("end of run", "end")
        elif stop.reason == "target":
            self._set_state(f"at {rec.name}")
        else:
            self._set_state("")
        self._refresh_views()

    def action_step(self) -> None:
        if self._can_act():
            s = self.session
            if s.cursor < len(s.history) - 1:
                self._show_stop(s.step())       # within history: instant
            else:
                self._start("step")

    def action_back(self) -> None:
        if self._can_act():
            self._show_stop(self.session.back())

    def action_next_layer(self) -> None:
        if self._can_act():
            self._start("next_layer")

    def action_cont(self) -> None:
        if self._can_act():
            self._start("cont")

    def action_run_to_end(self) -> None:
        if self._can_act():
            self._start("run_to_end")

    def action_decode(self) -> None:
        if self._can_act():
            self._start("decode")

    def action_restart(self) -> None:
        if self._can_act():
            self._start("restart")

    def action_interrupt(self) -> None:
        if self.busy:
            self._stop.set()
            self._set_state("stopping…", "running")

    async def action_quit(self) -> None:
        self._stop.set()
        self.exit()

    # -- cursor moves ----------------------------------------------------------------------
    def on_op_clicked(self, msg: OpClicked) -> None:
        if self._can_act() and 0 <= msg.index < len(self.session.history):
            self.session.cursor = msg.index
            self._set_state("")
            self._refresh_views()

    def action_goto(self) -> None:
        if self._can_act():
            self.push_screen(PromptScreen("go to op", "an op (ffn_up-3), a glob (ffn_*-5), a tensor (blk.3.ffn_down.weight) or a layer",
                                          placeholder="ffn_out-1"), self.goto)

    def goto(self, target: str | None) -> None:
        """Jump to the next op matching `target` in history; else compute forward to it (a worker)."""
        if not target or not self._can_act():
            return
        if self._goto_history(target, wrap=False):
            return
        if not pass_complete(self.session):
            self._start("run_to", target)
        else:
            self._goto_history(target, wrap=True)

    def _goto_history(self, target: str, wrap: bool) -> bool:
        s = self.session
        rec = find_op(s.history, s.cursor, target, wrap)
        if rec is None:
            if wrap:
                self._set_state(f"no op matches {target!r}", "error")
                self._refresh_views()
            return False
        s.cursor = rec.index
        self._set_state(f"at {rec.name}")
        self._refresh_views()
        return True

    def action_scope(self) -> None:
        if self._can_act():
            n = len(self.session.tokens)
            self.push_screen(PromptScreen("scope", f"last, all, or a token position 0..{n - 1}",
                                          value=str(self.session.scope)), self.set_scope)

    def set_scope(self, value: str | None) -> None:
        """Change the session's scope ('last', 'all' or a position) in a worker."""
        if value and self._can_act():
            self._start("set_scope", value.strip())

    # -- breakpoints -------------------------------------------------------------------------
    def action_toggle_breakpoint(self) -> None:
        if not self._can_act():
            return
        rec = self.session.current
        if rec is None:
            self.notify("no op under the cursor yet", severity="warning")
            return
        bps = self.session.breakpoints
        mine = [bp for bp in bps if bp.expr == op_expr(rec.name)]
        for bp in mine:
            bps.remove(bp.id)
        if not mine:
            bp = bps.add_op(rec.name)
            self._set_state(f"breakpoint #{bp.id} on {rec.name}")
        else:
            self._set_state(f"breakpoint on {rec.name} removed")
        self._refresh_views()

    def action_add_condition(self) -> None:
        self.query_one(BreakpointsPane).focus_input()

    def on_expression_submitted(self, msg: ExpressionSubmitted) -> None:
        pane = self.query_one(BreakpointsPane)
        if self.session is None:
            return
        try:
            bp = self.session.add_breakpoint(msg.expr)  # parsed, and checked against the ops that exist
        except ExpressionError as e:
            pane.show_error(msg.expr, bare_message(e), e.column)
            return
        except QdbgError as e:
            pane.show_error(msg.expr, bare_message(e), 0)
            return
        pane.accept()
        self._set_state(f"breakpoint #{bp.id} added")
        self._refresh_views()

    def on_breakpoint_toggle_requested(self, msg: BreakpointToggleRequested) -> None:
        self._bp_change(lambda bps: bps.toggle(msg.bp_id))

    def on_breakpoint_remove_requested(self, msg: BreakpointRemoveRequested) -> None:
        self._bp_change(lambda bps: bps.remove(msg.bp_id))

    def _bp_change(self, change: Callable[[Any], Any]) -> None:
        if not self._can_act():   # a running verb may be removing a temporary breakpoint
            return
        try:
            change(self.session.breakpoints)
        except QdbgError as e:
            self.notify(one_line(e), severity="error")
        self._refresh_views()

    # -- files -------------------------------------------------------------------------------
    def action_save_trace(self) -> None:
        if self._can_act():
            self.push_screen(PromptScreen("save trace to", "a trace file (npz layout)", value=str(self.trace_path)),
                             lambda p: self._write_asked("trace", p))

    def action_export_report(self) -> None:
        if self._can_act():
            self.push_screen(PromptScreen("write report to", "a markdown file", value=str(self.report_path)),
                             lambda p: self._write_asked("report", p))

    def _write_asked(self, kind: str, path: str | None) -> None:
        if not path:
            return
        p = Path(path).expanduser()
        if p.exists():
            self.push_screen(ConfirmScreen(f"{p.name} exists. Overwrite it with this {kind}?"),
                             lambda yes: self._write(kind, p) if yes else self._set_state(f"{kind} not saved"))
        else:
            self._write(kind, p)

    def _write(self, kind: str, path: Path) -> None:
        if not self._can_act():
            return
        if kind == "trace":
            self.trace_path = path
        else:
            self.report_path = path
        self._set_state(f"writing {kind} {path.name}…", "running")
        self._write_file(kind, path)

    @work(thread=True, exclusive=True, group="files", exit_on_error=False)
    def _write_file(self, kind: str, path: Path) -> None:
        try:
            write_file(kind, self.session, path)
        except Exception as e:  # shown inline; nothing was written (atomic writes)
            self.post_message(WriteFailed(kind, one_line(e)))
            return
        self.post_message(FileWritten(kind, str(path)))

    def on_file_written(self, msg: FileWritten) -> None:
        self._set_state(f"{msg.kind} saved: {Path(msg.path).name}", "end")

    def on_write_failed(self, msg: WriteFailed) -> None:
        self._set_state(f"{msg.kind} not saved: {msg.error}", "error")

    # -- help --------------------------------------------------------------------------------
    def action_help(self) -> None:
        keys: dict[str, list[str]] = {}
        for key, ab in self.screen.active_bindings.items():
            if ab.binding.id:
                keys.setdefault(ab.binding.id, []).append(self.get_key_display(ab.binding))
        rows = [(" ".join(keys.get(b.id, [b.key])), b.tooltip or b.description, b.id or "")
                for b in self.COMMAND_BINDINGS]
        rows.append(("ctrl+p", "command palette: every action by name", ""))
        self.push_screen(HelpScreen(rows))


def _is_session(obj: Any) -> bool:
    return hasattr(obj, "history") and hasattr(obj, "step")


def make_app(session: Any, *, title: str | None = None, trace_path: str | Path | None = None,
             report_path: str | Path | None = None, keymap: Mapping[str, str] | None = None) -> QdbgApp:
    """The qdbg TUI over `session` — a Session / ReplaySession, or a zero-argument callable that
    builds one (it then runs in a worker while the screen shows 'loading…').

    `trace_path` / `report_path` are the defaults offered by save-trace (w) and export-report (r);
    `keymap` remaps keys by binding id, e.g. {"step": "j", "back": "k"}.
    """
    app = QdbgApp(session, title=title, trace_path=trace_path, report_path=report_path)
    if keymap:
        app.set_keymap(dict(keymap))
    return app
