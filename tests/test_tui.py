"""The TUI through Textual's Pilot at 120x40: every binding and pane, checked against the Session.

Each test drives a QdbgApp built by `make_app` over a Session on the seeded synthetic llama pair
(Q4_K_M vs Q5_K_M) and compares what the screen shows with what the session says.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from qdbg.expr import parse
from qdbg.errors import ExpressionError
from qdbg.model import Model
from qdbg.session import Session

textual = pytest.importorskip("textual")

from textual.widgets import Input, Static  # noqa: E402

from qdbg.tui.app import QdbgApp, make_app  # noqa: E402
from qdbg.tui.breakpoints_pane import BreakpointsPane  # noqa: E402
from qdbg.tui.commands import palette_name, QdbgCommands  # noqa: E402
from qdbg.tui.confirm import ConfirmScreen  # noqa: E402
from qdbg.tui.header import SessionHeader, pass_complete  # noqa: E402
from qdbg.tui.help_screen import HelpScreen  # noqa: E402
from qdbg.tui.logits_pane import LogitsPane  # noqa: E402
from qdbg.tui.prompt import PromptScreen  # noqa: E402
from qdbg.tui.timeline import Timeline  # noqa: E402
from tui_pilot import drive, press, settle, type_text  # noqa: E402,F401

PROMPT = [1, 40, 41, 300, 12]
SIZE = (120, 40)


@pytest.fixture(scope="module")
def models(synth_model):
    """The synthetic pair, opened once (their weight caches stay warm across tests)."""
    return {"A": Model(synth_model("llama", "Q4_K_M")), "B": Model(synth_model("llama", "Q5_K_M"))}


@pytest.fixture
def new_session(models):
    """`new_session(tokens=PROMPT)` -> a fresh Session on the synthetic Q4_K_M / Q5_K_M pair."""
    def make(tokens=PROMPT, **kw) -> Session:
        return Session(dict(models), tokens, **kw)
    return make




async def answer(pilot, text: str) -> None:
    """Fill the input of the open prompt modal and press Enter."""
    pilot.app.screen.query_one(Input).value = text
    await press(pilot, "enter")


def header_text(app: QdbgApp) -> str:
    return str(app.query_one(SessionHeader).render())


def body_text(app: QdbgApp, selector: str) -> str:
    """The plain text shown in the screen region of the widget `selector` (children included)."""
    r = app.query_one(selector).region
    strips = app.screen._compositor.render_strips()
    return "\n".join(strips[y].crop(r.x, r.right).text for y in range(r.y, min(r.bottom, len(strips))))


# ---- stepping -------------------------------------------------------------------------------

def test_step_keys_back_keys_and_status(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "s", "s", "s")
        assert s.cursor == 2
        assert "op 3 of 3+" in header_text(app)
        assert s.current.name in header_text(app)
        assert app.query_one(Timeline).cursor == 2
        assert "▶" in body_text(app, "#timeline")
        assert s.current.name in body_text(app, "#stats")
        await press(pilot, "n", "right")
        assert s.cursor == 4
        await press(pilot, "b", "left")
        assert s.cursor == 2 and len(s.history) == 5
        await press(pilot, "s")          # within history: no new op computed
        assert s.cursor == 3 and len(s.history) == 5
        assert "op 4 of 5+" in header_text(app)
    drive(app, script)


def test_next_layer_matches_session(new_session):
    s, ref = new_session(), new_session()
    app = make_app(s)

    async def script(pilot):
        for _ in range(3):
            await press(pilot, "l")
            ref.next_layer()
            assert s.cursor == ref.cursor and s.current.name == ref.current.name
        assert s.current.layer == 1
    drive(app, script)


def test_run_to_end_shows_logits(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "e")
        assert s.at_end and s.current.name == "result_output"
        assert app.last_stop.reason == "end"
        assert "end of run" in header_text(app)
        assert f"op {len(s.history)} of {len(s.history)}" in header_text(app)
        pane = app.query_one(LogitsPane)
        assert pane.record is s.current
        text = body_text(app, "#logits")
        pos = s.final()["positions"][-1]
        assert ("TOP-1 FLIP" in text) == pos["flip"]
        assert "KL(A‖B)" in text and f"{pos['kl_ab']:.4g}" in text
    drive(app, script)


def test_continue_stops_where_session_says(new_session):
    s, ref = new_session(), new_session()
    expr = 'kind == "matmul" and rel_rms > 0.3'
    ref.breakpoints.add(expr)
    want = ref.cont()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "a")
        app.query_one("#bp-input", Input).value = expr
        await press(pilot, "enter")
        assert [bp.expr for bp in s.breakpoints] == [expr]
        await press(pilot, "escape")      # leave the input
        await press(pilot, "c")
        assert app.last_stop.reason == "breakpoint" == want.reason
        assert s.cursor == want.record.index
        assert "breakpoint #1" in header_text(app)
        assert app.query_one(Timeline).hit == s.cursor
        assert "hits 1" in body_text(app, "#breakpoints")
    drive(app, script)


def test_escape_interrupts_a_long_run(new_session):
    s = new_session()
    s.decode(400)                          # ~7000 ops: far longer than the test waits
    app = make_app(s)

    async def script(pilot):
        app.action_run_to_end()              # the 'e' key waits for an idle screen, which a run is not
        deadline = time.monotonic() + 20
        while not ("ops" in header_text(app) and s.cursor > 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert app.busy == "run_to_end"
        app.action_back()                    # refused while the worker owns the session
        assert app.busy and s.cursor > 0
        await pilot.press("escape")
        await settle(pilot)
        assert app.busy == ""
        assert app.last_stop.reason == "interrupted"
        assert not s.at_end and s.pending
        assert "interrupted" in header_text(app)
        where = s.cursor
        await press(pilot, "b")              # usable again afterwards
        assert s.cursor == where - 1
    drive(app, script)


# ---- mouse, go to, scope ---------------------------------------------------------------------

def test_click_on_timeline_op_moves_cursor(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "e")
        tl = app.query_one(Timeline)
        tl.scroll_to(y=0, animate=False, immediate=True)
        await pilot.pause()
        row = tl.row_of(5)
        assert row is not None and row < tl.size.height
        assert await pilot.click(Timeline, offset=(4, row))
        await settle(pilot)
        assert s.cursor == 5
        assert f"op 6 of {len(s.history)}" in header_text(app)
        heading = next(r for r in range(tl.size.height) if r not in tl._row_of.values())
        await pilot.click(Timeline, offset=(4, heading))   # a heading: nothing happens
        await settle(pilot)
        assert s.cursor == 5
    drive(app, script)


def test_goto_computes_forward_and_jumps_back(new_session):
    s = new_session()
    app = make_app(s)

    async def goto(pilot, target):
        await press(pilot, "slash")
        assert isinstance(app.screen, PromptScreen)
        await answer(pilot, target)

    async def script(pilot):
        await goto(pilot, "ffn_up-1")
        assert s.current.name == "ffn_up-1"
        await goto(pilot, "attn_norm-0")          # behind the cursor: found in history
        assert s.current.name == "attn_norm-0"
        await goto(pilot, "kq*")                   # glob, next after the cursor
        assert s.current.name == "kq-0"
        app.goto("1")                              # a layer number
        await settle(pilot)
        assert s.current.name == "attn_norm-1"
        # no match in a complete pass: the error is shown, nothing is computed, the cursor does not move
        before, n_hist = s.cursor, len(s.history)
        assert pass_complete(s)  # the whole pass is in history here
        app.goto("no_such_op*")
        await settle(pilot)
        assert "no op or tensor matches" in header_text(app)
        assert (s.cursor, len(s.history)) == (before, n_hist)
    drive(app, script)


def test_scope_change(new_session):
    s = new_session()
    app = make_app(s)

    async def set_scope(pilot, value):
        await press(pilot, "o")
        assert isinstance(app.screen, PromptScreen)
        assert app.screen.query_one(Input).value == str(s.scope)
        await answer(pilot, value)

    async def script(pilot):
        await press(pilot, "s", "s")
        rel_last = s.current.pair["rel_rms"]
        await set_scope(pilot, "all")
        assert s.scope == "all"
        assert "scope all" in header_text(app)
        assert s.current.pair["rel_rms"] != rel_last
        app.set_scope("2")
        await settle(pilot)
        assert s.scope == 2
        assert "token 2" in header_text(app)
        app.set_scope("bogus")
        await settle(pilot)
        assert s.scope == 2
        assert "scope must be 'last', 'all' or a position" in header_text(app)
    drive(app, script)


# ---- breakpoints -----------------------------------------------------------------------------

def test_add_breakpoint_through_the_input(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "a")
        assert isinstance(app.focused, Input)
        await type_text(pilot, "rel_rms > 0.3")
        await press(pilot, "enter")
        assert [bp.expr for bp in s.breakpoints] == ["rel_rms > 0.3"]
        assert app.query_one("#bp-input", Input).value == ""
        assert "#1 rel_rms > 0.3" in body_text(app, "#breakpoints")
        # the keys go back to the debugger: `c` continues to the breakpoint, it is not typed
        assert not isinstance(app.focused, Input)
        await press(pilot, "c")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert s.current is not None and s.breakpoints.get(1).hits >= 1
    drive(app, script)


def test_invalid_expression_shows_caret_and_adds_nothing(new_session):
    s = new_session()
    app = make_app(s)
    bad = "rel_rms > > 0.1"
    with pytest.raises(ExpressionError) as err:
        parse(bad)

    async def script(pilot):
        await press(pilot, "a")
        await type_text(pilot, bad)
        await press(pilot, "enter")
        assert len(s.breakpoints) == 0
        box = app.query_one("#bp-error", Static)
        assert box.display and not box.has_class("-empty")
        lines = [ln.rstrip() for ln in body_text(app, "#bp-error").splitlines()]
        assert lines[0] == f" {bad}"
        assert lines[1] == " " + " " * (err.value.column - 1) + "^"
        assert "column" not in lines[2] and lines[2].strip()
        assert app.query_one("#bp-input", Input).value == bad    # kept for fixing
        app.query_one("#bp-input", Input).value = "rel_rms > 0.1"
        await press(pilot, "enter")
        assert len(s.breakpoints) == 1 and app.query_one("#bp-error", Static).has_class("-empty")
    drive(app, script)


def test_toggle_breakpoint_on_current_op(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "s", "s", "t")
        assert [bp.expr for bp in s.breakpoints] == ['op == "attn_norm-0"']
        assert "●attn_norm-0" in body_text(app, "#timeline").replace(" ", "").replace("▶", "")
        await press(pilot, "t")
        assert len(s.breakpoints) == 0
        await press(pilot, "t", "b", "b")             # set again, go back, continue into it
        assert s.cursor == 0
        await press(pilot, "c")
        assert app.last_stop.reason == "breakpoint" and s.current.name == "attn_norm-0"
    drive(app, script)


def test_breakpoint_list_toggle_and_delete(new_session):
    s = new_session()
    s.breakpoints.add("rel_rms > 0.5")
    s.breakpoints.add("layer == 1")
    app = make_app(s)

    async def script(pilot):
        pane = app.query_one(BreakpointsPane)
        await press(pilot, "tab")                     # the list, its first row chosen (issue 14)
        assert app.focused is pane.query_one("#bp-list")
        assert pane.query_one("#bp-list").highlighted == 0
        await press(pilot, "space")
        assert [bp.enabled for bp in s.breakpoints] == [False, True]
        assert "○ #1" in body_text(app, "#breakpoints")
        await press(pilot, "enter")                   # enter toggles too
        assert [bp.enabled for bp in s.breakpoints] == [True, True]
        await press(pilot, "x")
        assert [bp.id for bp in s.breakpoints] == [2]
        await press(pilot, "delete")
        assert len(s.breakpoints) == 0
        assert "no breakpoints" in body_text(app, "#breakpoints")
    drive(app, script)


# ---- files -------------------------------------------------------------------------------------

def test_save_trace_asks_before_overwriting(new_session, tmp_path):
    pytest.importorskip("qdbg.trace")
    s = new_session()
    path = tmp_path / "run.npz"
    app = make_app(s, trace_path=path)

    async def script(pilot):
        await press(pilot, "s", "w")
        assert isinstance(app.screen, PromptScreen)
        await press(pilot, "enter")
        assert path.exists()
        assert "trace saved: run.npz" in header_text(app)
        first = path.read_bytes()
        await press(pilot, "w", "enter")
        assert isinstance(app.screen, ConfirmScreen)
        await press(pilot, "n")
        assert path.read_bytes() == first
        assert "trace not saved" in header_text(app)
        await press(pilot, "s", "w", "enter", "y")
        assert path.read_bytes() != first             # the cursor moved: a new trace
        from qdbg.replay import open_replay
        assert open_replay(path).cursor == s.cursor
    drive(app, script)


def test_export_report(new_session, tmp_path):
    pytest.importorskip("qdbg.report")
    s = new_session()
    path = tmp_path / "report.md"
    app = make_app(s, report_path=path)

    async def script(pilot):
        await press(pilot, "e", "r", "enter")
        assert path.read_text().startswith("# qdbg report")
        assert "report saved: report.md" in header_text(app)
    drive(app, script)


def test_replay_session_in_the_app(new_session, tmp_path):
    trace = pytest.importorskip("qdbg.trace")
    replay = pytest.importorskip("qdbg.replay")
    s = new_session()
    s.run_to("ffn_out-1")
    s.back(), s.back(), s.back()
    trace.save_trace(s, tmp_path / "t.npz")
    r = replay.open_replay(tmp_path / "t.npz")
    app = make_app(r, title="replay")

    async def script(pilot):
        assert s.current.name in header_text(app)
        await press(pilot, "s", "s")
        assert r.current.name == s.history[s.cursor + 2].name
    drive(app, script)


def test_reference_side_is_shown(models, synth_model):
    s = Session({**models, "R": Model(synth_model("llama", "Q8_0"))}, PROMPT)
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "l", "l")
        assert s.labels == ["A", "B", "R"]
        heads = [ln.strip("│ ").split() for ln in body_text(app, "#stats").splitlines()]
        assert ["A", "B", "R", "Δ%", "A/B"] in heads
        assert "A~R rel_rms" in body_text(app, "#diff") and "B~R rel_rms" in body_text(app, "#diff")
        assert "llama-Q8_0.gguf" in header_text(app)
    drive(app, script)


# ---- app plumbing ------------------------------------------------------------------------------

def test_loader_runs_in_a_worker(new_session):
    s = new_session()
    app = make_app(lambda: s)

    async def script(pilot):
        assert app.session is s
        await press(pilot, "s")
        assert s.cursor == 0
    drive(app, script)


def test_loader_failure_is_shown(new_session):
    def boom():
        raise FileNotFoundError("nope.gguf")
    app = make_app(boom)

    async def script(pilot):
        assert app.session is None and "nope.gguf" in app.load_error
        assert "cannot load" in header_text(app)
        await press(pilot, "s")                      # refused, no crash
    drive(app, script)


def test_help_screen_and_command_palette(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "question_mark")
        assert isinstance(app.screen, HelpScreen)
        r = app.screen.query_one("HelpScreen > VerticalScroll").region
        strips = app.screen._compositor.render_strips()
        shown = "\n".join(strips[y].crop(r.x, r.right).text for y in range(r.y, r.bottom))
        for key, what in (("tab", "breakpoint list"), ("up down", "choose a breakpoint"),
                          ("space", "enable/disable"), ("x delete", "delete the chosen")):
            assert any(key in line and what in line for line in shown.splitlines()), (key, shown)
        assert "key map: defaults" in shown
        await press(pilot, "escape")
        assert not isinstance(app.screen, HelpScreen)
        hits = [h async for h in QdbgCommands(app.screen).discover()]
        names = {h.text for h in hits}
        assert {palette_name(b) for b in QdbgApp.COMMAND_BINDINGS} <= names
        step = next(h for h in hits if h.text == "step")
        assert "key s" in step.help
        cont = next(h for h in hits if h.text == "continue")
        await cont.command()                            # what choosing it in the palette does
        await settle(pilot)
        assert s.at_end and app.last_stop.reason == "end"
    drive(app, script)


def test_keymap_remaps_by_binding_id(new_session):
    s = new_session()
    app = make_app(s, keymap={"step": "j", "back": "k"})

    async def script(pilot):
        await press(pilot, "j", "j", "k")
        assert s.cursor == 0
        hits = [h async for h in QdbgCommands(app.screen).discover()]
        assert "key j" in next(h for h in hits if h.text == "step").help
    drive(app, script)


def test_nan_and_inf_are_shown_not_fatal(new_session):
    s = new_session()
    s.run_to("ffn_up-0")
    rec = s.current
    a = rec.values["A"].astype(np.float32).copy()
    a[-1, :3] = [np.nan, np.inf, -np.inf]
    rec.values["A"] = a
    s.run_to("ffn_out-0")
    bad = s.current
    bad.values["A"] = np.full_like(bad.values["A"], np.nan)    # nothing finite at all
    s.set_scope("last")                                        # re-measure with the bad values
    app = make_app(s)

    async def script(pilot):
        for target in ("ffn_up-0", "ffn_out-0"):
            s.cursor = next(r.index for r in s.history if r.name == target)
            app._refresh_views(force=True)
            await pilot.pause()
            assert "nan" in body_text(app, "#stats")
            assert "NaN/Inf" in body_text(app, "#diff")
            assert "NaN/Inf" in body_text(app, "#timeline")
    drive(app, script)


def test_small_terminal_degrades(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "e")
        assert app.screen.has_class("-narrow") and app.screen.has_class("-short")
        for sel in ("#timeline", "#stats", "#diff", "#logits", "#breakpoints"):
            assert app.query_one(sel).region.area > 0
    drive(app, script, size=(80, 24))


def test_quit(new_session):
    app = make_app(new_session())

    async def script(pilot):
        await pilot.press("q")
        await pilot.pause()
        return app.is_running
    assert drive(app, script) is False


# ---- formatting helpers (pure) ------------------------------------------------------------------

def test_formatting_helpers_show_nonfinite_values():
    from qdbg.tui.fmt import fit_num, heat, heat_color, num, pct_diff, piece_text, spark

    assert [num(None), num(float("nan")), num(float("inf")), num(-float("inf"))] == ["—", "nan", "inf", "-inf"]
    assert pct_diff(1.1, 1.0) == "+10.0%" and pct_diff(None, 1.0) == "—" and pct_diff(float("nan"), 1.0) == "nan"
    assert pct_diff(1.0, 0.0) == "—" and pct_diff(0.0, 0.0) == "0.0%"
    assert heat(1e-3) == 0.0 and heat(1.0) == 1.0 and heat(None) is None and heat(float("nan")) is None
    assert heat(float("inf")) == 1.0 and heat_color(None) == "#808080"
    assert len(fit_num(-0.0030123, 7)) <= 7
    line = spark([1.0, float("nan"), float("inf"), 0.0, 2.0], log=True)
    assert line.plain[1] == "!" and len(line.plain) == 5
    assert len(spark(np.arange(1000.0), 40).plain) == 40
    assert piece_text("a\tb") == "'a\\tb'" and piece_text("('") == '"(\'"' and piece_text(None) == "?"
    assert piece_text("x" * 20, 5) == "'xxxx…'"


def test_find_op_searches_forward_then_wraps(new_session):
    from qdbg.tui.actions import find_op

    s = new_session()
    s.run_to_end()
    h = s.history
    assert find_op(h, 5, "ffn_up-0", wrap=False).name == "ffn_up-0"
    assert find_op(h, 20, "ffn_up-0", wrap=False) is None
    assert find_op(h, 20, "ffn_up-0", wrap=True).name == "ffn_up-0"
    assert find_op(h, -1, "1", wrap=False).name == "attn_norm-1"
    assert find_op(h, -1, "*_soft_max-?", wrap=False).name == "kq_soft_max-0"


def test_decode_and_restart_keys(new_session):
    s = new_session()
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "s", "s")                 # mid-pass: d finishes it, then steps into the next
        await press(pilot, "d")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert s.current.name == "inp_embd" and s.current.step == 1
        assert len(s.tokens) == len(s.prompt) + 1
        outs = [r for r in s.history if r.name == "result_output"]
        assert s.tokens[-1] == int(outs[0].values["A"][-1].argmax())
        await press(pilot, "R")                      # before the first op, as at launch
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert s.cursor == -1 and s.current is None and s.history == []
        assert s.tokens == s.prompt and "op 0 of 0+" in header_text(app)
        await press(pilot, "s")
        assert s.current.name == "inp_embd" and s.current.step == 0 and len(s.history) == 1
    drive(app, script)
