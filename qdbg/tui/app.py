"""QdbgApp: the Textual front end of a qdbg Session, and `make_app`, the factory shared by the CLI
and the tests.

The app owns no debugging logic: keys call the Session's verbs (step, back, next_layer, cont,
run_to_end, run_to, set_scope, breakpoints) and the panes render the Records it returns. Verbs
that may compute run in a thread worker that polls an Event between ops (Esc sets it) and posts
past-tense messages back (RunFinished, RunFailed); nothing else touches the session's history
while a worker runs. Ops are computed ahead in a background thread (qdbg.tui.prefetch) while the
user reads; a verb waiting for a slow op names it in the status line and Esc ends the wait.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from textual import work
from textual.app import App, ComposeResult
from textual.reactive import reactive
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from qdbg.errors import ExpressionError, QdbgError
from qdbg.tui import keys
from qdbg.tui.actions import bare_message, check_scope, find_op, logits_record, one_line, run_verb, write_file
from qdbg.tui.breakpoints_pane import BreakpointsPane
from qdbg.tui.commands import QdbgCommands
from qdbg.tui.confirm import ConfirmScreen
from qdbg.tui.diff_pane import DiffPane
from qdbg.tui.fmt import op_expr
from qdbg.tui.header import SessionHeader, pass_complete
from qdbg.tui.help_screen import HelpScreen
from qdbg.tui.keybar import KeyBar
from qdbg.tui.keymap import load_keymap
from qdbg.tui.layer_spark import LayerSpark
from qdbg.tui.logits_pane import LogitsPane
from qdbg.tui.messages import (BreakpointRemoveRequested, BreakpointToggleRequested, ExpressionSubmitted,
                               FileWritten, LoadFailed, OpClicked, RunFailed, RunFinished,
                               SessionLoaded, WriteFailed)
from qdbg.tui.prefetch import install as install_prefetch, uninstall as uninstall_prefetch
from qdbg.tui.prompt import PromptScreen
from qdbg.tui.stats_pane import StatsPane
from qdbg.tui.timeline import Timeline

DEFAULT_TRACE = "qdbg-trace.npz"
DEFAULT_REPORT = "qdbg-report.md"
PROGRESS_EVERY = 0.1
"""Seconds between status updates while a verb runs (more would crowd out key presses)."""
SLOW_OP = 0.2
"""An op computed for longer than this (seconds) is named in the status line while a verb waits."""
MIN_SIZE = (60, 16)
"""Below this many columns x rows the app says the terminal is too small instead of drawing panes."""


class QdbgApp(App[None]):
    """Step two quantizations of one model in lockstep and see where they diverge."""

    CSS_PATH = "qdbg.tcss"
    TITLE = "qdbg"
    COMMANDS = App.COMMANDS | {QdbgCommands}
    # below 100 columns the panes stack; from 160 the stats pane takes half of the right side
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-medium"), (160, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    COMMAND_BINDINGS = keys.BINDINGS
    BINDINGS = COMMAND_BINDINGS + keys.HIDDEN_BINDINGS + keys.UNLISTED_BINDINGS

    busy: reactive[str] = reactive("", init=False)
    """The verb a worker is running ('' when idle); the session is the worker's until it ends."""

    def __init__(self, session: Any, *, title: str | None = None, trace_path: str | Path | None = None,
                 report_path: str | Path | None = None, warm_kernels: bool = False) -> None:
        super().__init__()
        self.warm_kernels = warm_kernels
        self.warm_note = ""
        """What the kernel warm-up thread last said ('' when done or not running)."""
        self._loader: Callable[[], Any] | None = None if _is_session(session) else session
        self.session: Any = session if _is_session(session) else None
        self.title = title or "qdbg"
        self.trace_path = Path(trace_path or DEFAULT_TRACE)
        self.report_path = Path(report_path or DEFAULT_REPORT)
        self.load_error: str | None = None
        self.last_stop: Any = None
        self._stop = threading.Event()
        self._seen: tuple = (None, None, None)
        self._spark: tuple = ()
        self.prefetch: Any = None
        self.keymap_path: Path | None = None
        self.keymap_loaded: dict[str, str] = {}

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
        yield Static("", id="too-small")
        # the keys that fit the width, help and quit always; ctrl+p opens the palette (in `?` help)
        yield KeyBar(id="keybar")

    def on_mount(self) -> None:
        for wid, title in (("#timeline-pane", "ops  (rel_rms A~B)"), ("#stats", "stats"), ("#diff", "diff A~B"),
                           ("#logits", "logits"), ("#breakpoints", "breakpoints")):
            self.query_one(wid).border_title = title
        self.header = self.query_one(SessionHeader)   # the state line, also while a modal is up
        self._fit_size()
        self.set_interval(PROGRESS_EVERY, self._show_progress)
        if self.session is not None:
            self._attach_session(self.session)
        else:
            self._set_state("loading…", "loading")
            self._load()

    def on_unmount(self) -> None:
        self._stop.set()
        if self.session is not None:
            uninstall_prefetch(self.session)

    def on_resize(self) -> None:
        self._fit_size()

    def _fit_size(self) -> None:
        w, h = self.size
        small = w < MIN_SIZE[0] or h < MIN_SIZE[1]
        main = self.screen_stack[0]
        main.set_class(small, "-too-small")
        if small:
            main.query_one("#too-small", Static).update(
                f"The terminal is too small for qdbg: {w}x{h}.\n"
                f"It needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}; enlarge the window (q quits).")

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
        # compute ahead while the user reads (the first ops also load or compile the kernels)
        self.prefetch = install_prefetch(session, self._stop)
        if self.warm_kernels and self.prefetch is not None and session.mode == "exact":
            self._warm(session)
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
        tl = self.query_one(Timeline)
        if force or seen != self._seen:
            if force or seen[1] != self._seen[1]:
                tl.reload()            # metrics changed in place: every row again
            else:
                tl.revision += 1       # ops appended (or breakpoint marks changed)
            if force or bps != self._seen[2]:
                self.query_one(BreakpointsPane).revision += 1
            self._seen = seen
        tl.cursor = s.cursor
        spark = (seen, rec.step if rec is not None else None)   # the sparkline shows the cursor's pass
        if force or spark != self._spark:
            self.query_one(LayerSpark).revision += 1
            self._spark = spark
        self.query_one(SessionHeader).cursor = s.cursor
        self.query_one(StatsPane).record = rec
        self.query_one(DiffPane).record = rec
        lr, pane = logits_record(s), self.query_one(LogitsPane)
        if force or lr is not pane.record:
            pane.record = lr

    def watch_busy(self, busy: str) -> None:
        # on the pane, not the screen: a screen class restyles and redraws every widget
        self.screen_stack[0].query_one("#timeline-pane").set_class(bool(busy), "-busy")

    def _set_state(self, text: str, kind: str = "") -> None:
        header = self.header
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

        def should_stop() -> bool:
            return stop.is_set()

        try:
            st = run_verb(s, verb, arg, should_stop)
        except Exception as e:  # shown in the status line; the session stays usable
            self.post_message(RunFailed(verb, one_line(e)))
            return
        self.post_message(RunFinished(verb, st, arg))

    def _warm(self, session: Any) -> None:
        """Compile (first run) or load the exact kernels in a background thread, the model's matmul
        types first; the state line shows it while nothing else is going on."""
        from qdbg.numerics.kernels import warmup

        types = {t.qtype for m in session.models.values() for t in m.tensors.values() if len(t.shape) == 2}

        def progress(what: str, done: int, total: int | None) -> None:
            self.warm_note = "" if what == "exact kernels ready" else f"{what} ({done + 1}/{total})…"

        warmup.warm_in_background(warmup.plan(types), progress)

    def _show_progress(self) -> None:
        """While a verb runs: ops so far and, past SLOW_OP seconds, the op being computed. Idle: a
        first run's kernel compilation."""
        header = self.header
        if not self.busy:
            if self.warm_note.startswith("compiling"):
                self._set_state(f"⟳ {self.warm_note}", "loading")
            elif header.state_kind == "loading" and header.state.startswith("⟳ compiling"):
                self._set_state("kernels ready")
            return
        if self._stop.is_set() or self.session is None:
            return
        text = f"⟳ {keys.VERB_LABELS.get(self.busy, self.busy)}… {len(self.session.history)} ops"
        st = self.prefetch.status() if self.prefetch is not None else None
        if st is not None and st[1] >= SLOW_OP:
            what, secs = st
            text += f" · computing {what}… {secs:.1f} s"
            if secs >= 1.0 and len(self.session.history) < 3:
                text += " (a first run also compiles the kernels, once)"
        self._set_state(text + " (Esc stops)", "running")

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
        # after an interrupt the state line goes out alone first; the panes follow a frame later
        self._show_stop(msg.stop, header_first=msg.stop.reason == "interrupted")
        if msg.verb == "patch":
            from qdbg.tui.patches import flip_state, patch_effect

            label = msg.wanted[1].label() if msg.wanted[0] == "add" else "patch removed"
            self._set_state(patch_effect(label, self._patch_before, flip_state(self.session.history)), "end")

    def _show_stop(self, stop: Any, header_first: bool = False) -> None:
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
        if header_first:
            self.call_after_refresh(self._refresh_views)
        else:
            self._refresh_views()

    def action_step(self) -> None:
        if self._can_act():
            s = self.session
            if s.cursor < len(s.history) - 1 or (self.prefetch is not None and self.prefetch.buffered()):
                self._show_stop(s.step())       # within history, or computed ahead: instant
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

    def action_patch(self, side: str) -> None:
        """Patch the weight of the op at the cursor from `side` (qdbg.tui.patches) and re-run."""
        if not self._can_act():
            return
        from qdbg.tui.patches import flip_state, patch_for

        try:
            p = patch_for(self.session, self.session.current, side)
        except QdbgError as e:
            self._set_state(one_line(e), "error")
            return
        self._patch_before = flip_state(self.session.history)
        self._start("patch", ("add", p))

    def action_patches(self) -> None:
        """List the patches in force; the one chosen is removed and the run re-run."""
        if not self._can_act():
            return
        from qdbg.tui.patches import PatchesScreen, flip_state

        def closed(i: Any) -> None:
            if i is not None and self._can_act():
                self._patch_before = flip_state(self.session.history)
                self._start("patch", ("remove", int(i)))

        self.push_screen(PatchesScreen(self.session), closed)

    def action_restart(self) -> None:
        if self._can_act():
            self._start("restart")

    def action_interrupt(self) -> None:
        if self.busy:
            self._stop.set()
            if self.prefetch is not None:
                self.prefetch.wake()   # a wait for an op sees the interrupt now, not at its next poll
            self._set_state("stopping…", "running")

    def action_focus_pane(self) -> None:
        """Tab: the breakpoint list (its first row chosen), then its input, then the timeline."""
        if isinstance(self.screen, ModalScreen):
            self.screen.focus_next()
            return
        order = [self.query_one("#bp-list"), self.query_one("#bp-input"), self.query_one(Timeline)]
        focused = self.focused
        i = order.index(focused) + 1 if focused in order else 0
        order[i % len(order)].focus()

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
        try:
            self.session.resolve(target) if not target.strip().isdigit() else None
        except QdbgError as e:   # a name no op has: say so before computing anything
            self._set_state(one_line(e), "error")
            return
        s = self.session
        if self._goto_history(target, wrap=False):      # ahead in the cursor's pass
            return
        here = s.current.step if s.current is not None else 0
        if not s.history or (not pass_complete(s) and s.history[-1].step == here):
            self._start("run_to", target)                # the pass is still being computed
        else:
            self._goto_history(target, wrap=True)        # earlier in the cursor's pass

    def _goto_history(self, target: str, wrap: bool) -> bool:
        s = self.session
        rec = find_op(s.history, s.cursor, target, wrap, same_pass=True)
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
            try:
                check_scope(self.session, value.strip())
            except QdbgError as e:
                self._set_state(one_line(e), "error")
                return
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
        shown: dict[str, list[str]] = {}
        for key, ab in self.screen.active_bindings.items():
            if ab.binding.id:
                shown.setdefault(ab.binding.id, []).append(self.get_key_display(ab.binding))
        rows = [(" ".join(shown.get(b.id, [b.key])), b.tooltip or b.description, b.id or "")
                for b in self.COMMAND_BINDINGS]
        rows.append(("ctrl+p", "command palette: every action by name", ""))
        for b in keys.HIDDEN_BINDINGS:
            rows.append((self._keymap.get(b.id, b.key), b.tooltip, b.id))
        pane_rows = [("up down", "choose a breakpoint in the list", "")]
        for b in BreakpointsPane.BINDINGS:
            pane_rows.append((self._keymap.get(b.id, b.key).replace(",", " "), b.tooltip or b.description, b.id))
        self.push_screen(HelpScreen(rows, pane_rows, self.keymap_note()))

    def keymap_note(self) -> str:
        """Where the user's key map is and what it changed, for the help screen."""
        if self.keymap_path is None:
            return "key map: defaults (no key map file was read)"
        if self.keymap_loaded:
            changed = ", ".join(f"{k} = {v!r}" for k, v in self.keymap_loaded.items())
            return f"key map: {self.keymap_path} ({changed})"
        return (f"key map: {self.keymap_path} (not present: create it to remap keys by id, "
                f"e.g. [keys] step = \"j\")")


def _is_session(obj: Any) -> bool:
    return hasattr(obj, "history") and hasattr(obj, "step")


def binding_ids() -> list[str]:
    """Every binding id a key map may name: the app's and the breakpoint pane's."""
    return [b.id for b in keys.BINDINGS + keys.HIDDEN_BINDINGS + BreakpointsPane.BINDINGS if b.id]


def make_app(session: Any, *, title: str | None = None, trace_path: str | Path | None = None,
             report_path: str | Path | None = None, keymap: Mapping[str, str] | None = None,
             keymap_path: str | Path | None = None, warm_kernels: bool = False) -> QdbgApp:
    """The qdbg TUI over `session` — a Session / ReplaySession, or a zero-argument callable that
    builds one (it then runs in a worker while the screen shows 'loading…').

    `trace_path` / `report_path` are the defaults offered by save-trace (w) and export-report (r);
    `keymap` remaps keys by binding id, e.g. {"step": "j", "back": "k"}; `keymap_path` names a
    TOML key map ([keys] step = "j", see qdbg.tui.keymap; the CLI passes the user's,
    `user_keymap_path()`), applied first. A bad key map file is a QdbgError. `warm_kernels`
    compiles (first run) or loads the exact kernels in a background thread at start-up, saying so.
    """
    app = QdbgApp(session, title=title, trace_path=trace_path, report_path=report_path, warm_kernels=warm_kernels)
    merged: dict[str, str] = {}
    if keymap_path is not None:
        app.keymap_path = Path(keymap_path)
        app.keymap_loaded = load_keymap(app.keymap_path, binding_ids())
        merged.update(app.keymap_loaded)
    if keymap:
        merged.update(keymap)
    if merged:
        app.set_keymap(merged)
    return app
