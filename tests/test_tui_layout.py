"""The TUI's layout by terminal size and the issue-14 details: stacking below 100 columns, room for
the stats pane when wide, a too-small message, keys that always show help and quit, the timeline
following the cursor, scope and go-to checks, restart, token text for vocabulary entries, numbers
that fit their cells, and the user's TOML key map."""

from __future__ import annotations

import math

import pytest

from qdbg.errors import QdbgError
from qdbg.model import Model
from qdbg.session import Session

pytest.importorskip("textual")


from qdbg.tui.app import make_app  # noqa: E402
from qdbg.tui.diff_pane import top_lines  # noqa: E402
from qdbg.tui.fmt import fit_num, pct_diff  # noqa: E402
from qdbg.tui.keymap import load_keymap, user_keymap_path  # noqa: E402
from qdbg.tui.timeline import Timeline  # noqa: E402
from tui_pilot import answer, press, settle  # noqa: E402,F401
from tui_pilot import drive as run  # noqa: E402

PROMPT = [1, 40, 41, 300, 12]


@pytest.fixture(scope="module")
def models(synth_model):
    return {"A": Model(synth_model("llama", "Q4_K_M")), "B": Model(synth_model("llama", "Q5_K_M"))}




def screen_lines(app) -> list[str]:
    return [st.text for st in app.screen._compositor.render_strips()]


def test_narrow_terminal_stacks_panes_and_keeps_help_and_quit(models):
    app = make_app(Session(dict(models), PROMPT))

    async def script(pilot):
        await press(pilot, "s", "s")
        st, df, lg, bp = (app.query_one(w).region for w in ("#stats", "#diff", "#logits", "#breakpoints"))
        assert st.x == df.x == lg.x == bp.x and st.y < df.y < lg.y < bp.y   # one column
        lines = screen_lines(app)
        assert "llama-Q4_K_M.gguf" in lines[0] and "llama-Q5_K_M.gguf" in lines[0]
        assert "? help" in lines[-1] and "q quit" in lines[-1]
        stats = "\n".join(ln[st.x:st.right] for ln in lines[st.y:st.bottom])
        assert " A " in stats.splitlines()[3] + " " and " B " in stats.splitlines()[3] + " "
    run(app, script, (80, 24))


def test_wide_terminal_gives_stats_room(models):
    app = make_app(Session(dict(models), PROMPT))

    async def script(pilot):
        await press(pilot, "s")
        st, df = app.query_one("#stats").region, app.query_one("#diff").region
        assert st.y == df.y and st.width >= 70 and abs(st.width - df.width) <= 2
    run(app, script, (200, 50))


def test_too_small_terminal_says_so(models):
    app = make_app(Session(dict(models), PROMPT))

    async def script(pilot):
        text = "\n".join(screen_lines(app))
        assert "too small for qdbg: 50x12" in text and "at least 60x16" in text
        assert app.query_one("#main").region.height == 0
        await press(pilot, "s")                       # keys still work; nothing breaks
        assert app.session.cursor == 0
    run(app, script, (50, 12))


def test_run_to_end_scrolls_timeline_to_cursor_at_80x24(models):
    s = Session(dict(models), PROMPT)
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "e")
        tl = app.query_one(Timeline)
        row = tl.row_of(s.cursor)
        assert tl.scroll_offset.y <= row < tl.scroll_offset.y + tl.size.height
        assert any("▶ result_output" in ln for ln in screen_lines(app))
    run(app, script, (80, 24))


def test_scope_beyond_the_prompt_is_refused(models):
    s = Session(dict(models), PROMPT)
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "s", "o")
        await answer(pilot, "99")
        assert s.scope == "last"
        assert "scope 99: the run has 5 tokens (positions 0..4)" in str(app.header.render())
        await press(pilot, "o")
        await answer(pilot, "4")
        assert s.scope == 4
    run(app, script, (120, 40))


def test_goto_stays_in_the_cursors_pass(models):
    s = Session(dict(models), PROMPT)
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "e", "d", "e")            # pass 1 complete, cursor at its end
        assert s.current.step == 1 and s.current.name == "result_output"
        await press(pilot, "slash")
        await answer(pilot, "ffn_up-1")
        assert s.current.name == "ffn_up-1" and s.current.step == 1
        await press(pilot, "slash")
        await answer(pilot, "ffn_up-0")               # behind the cursor, still in pass 1
        assert s.current.name == "ffn_up-0" and s.current.step == 1
    run(app, script, (120, 40))


def test_vocabulary_entries_show_their_token_text(models):
    s = Session(dict(models), PROMPT)
    s.run_to_end()
    rec = s.current
    assert rec.name == "result_output" and "vocab" in rec.axes
    text = "\n".join(str(t) for t in top_lines(s, rec, rec.pair, 60))
    first = rec.pair.top[0]["at"]["vocab"]
    piece = s.pieces(first) if callable(s.pieces) else None
    assert "vo" + str(first) not in text
    assert piece is None or repr(piece)[1:-1][:4] in text or piece[:4] in text


def test_agreeing_op_says_so_without_a_divergent_heading(models):
    s = Session(dict(models), PROMPT)
    s.step()
    rec = s.current
    pair = {"top": []}
    lines = [str(t) for t in top_lines(s, rec, pair, 60)]
    assert len(lines) == 1 and lines[0].startswith("A and B agree exactly")
    assert not any("most divergent" in ln for ln in lines)


@pytest.mark.parametrize("x", [-0.0012345, 1.234e-7, -9.87e22, 123456789.0, 0.5, -3.0, float("nan"), float("-inf")])
@pytest.mark.parametrize("width", [5, 6, 7, 8])
def test_numbers_fit_their_cells(x, width):
    t = fit_num(x, width)
    assert len(t) <= width, t
    if math.isfinite(x):
        assert math.isclose(float(t), x, rel_tol=0.6)   # still the number, with fewer digits
    assert len(pct_diff(x, 0.001)) <= 8 or not math.isfinite(x)


def test_restart_lands_before_the_first_op(models):
    s = Session(dict(models), PROMPT)
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "s", "s", "R")
        assert s.cursor == -1 and s.history == []
        assert "no op yet" in "\n".join(screen_lines(app))
    run(app, script, (120, 40))


# ---- key map ----------------------------------------------------------------------------------

def test_user_keymap_file_remaps_and_is_shown_in_help(models, tmp_path, monkeypatch):
    path = tmp_path / "keys.toml"
    path.write_text('[keys]\nstep = "j"\n"bp.toggle" = "y"\n')
    monkeypatch.setenv("QDBG_KEYS", str(path))
    assert user_keymap_path() == path
    s = Session(dict(models), PROMPT)
    app = make_app(s, keymap_path=user_keymap_path())

    async def script(pilot):
        await press(pilot, "j", "j")
        assert s.cursor == 1
        assert "j step" in screen_lines(app)[-1]
        await press(pilot, "question_mark")
        r = app.screen.query_one("HelpScreen > VerticalScroll").region
        text = "\n".join(ln[r.x:r.right] for ln in screen_lines(app)[r.y:r.bottom])
        note = str(app.screen.query_one("#keymap-note").render())
        assert f"key map: {path}" in note and "step = 'j'" in note
        assert any(ln.strip("█ ").startswith("y ") and "enable/disable" in ln for ln in text.splitlines()), text
    run(app, script, (120, 40))


def test_keymap_file_errors_are_one_line(tmp_path):
    ids = ["step", "back"]
    assert load_keymap(tmp_path / "missing.toml", ids) == {}
    bad = tmp_path / "bad.toml"
    for text, msg in (("[keys\n", "not valid TOML"), ('[keys]\nstepp = "j"\n', "no binding has the id 'stepp'"),
                      ("[keys]\nstep = 3\n", "must be a key name"), ('step = "j"\n', "under [keys]")):
        bad.write_text(text)
        with pytest.raises(QdbgError, match=msg.replace("[", r"\[")) as e:
            load_keymap(bad, ids)
        assert "\n" not in str(e.value).strip()
