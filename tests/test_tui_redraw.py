"""What the TUI redraws per step (issue 10's latency goals; the figures are in bench/tui.py): the
timeline grows its rows in place and they read as a full rebuild would; a step within history
redraws without laying the screen out; the stats pane keeps its height; the busy frame is the
timeline pane's alone; Esc wakes a wait for an op at once."""

from __future__ import annotations

import threading

import pytest

from qdbg.model import Model
from qdbg.session import Session

pytest.importorskip("textual")

from qdbg.tui import prefetch  # noqa: E402
from qdbg.tui.app import make_app  # noqa: E402
from qdbg.tui.fmt import pct  # noqa: E402
from qdbg.tui.prefetch import Interrupted, PrefetchSource  # noqa: E402
from qdbg.tui.timeline import Timeline  # noqa: E402
from tui_pilot import drive, press  # noqa: E402,F401

PROMPT = [1, 40, 41, 300, 12]
SIZE = (120, 40)


@pytest.fixture(scope="module")
def models(synth_model):
    return {"A": Model(synth_model("llama", "Q4_K_M")), "B": Model(synth_model("llama", "Q5_K_M"))}




def row_texts(tl: Timeline) -> list[str]:
    return [tl._line(r)[0].plain for r in range(len(tl._rows))]


def test_timeline_rows_grown_in_place_read_as_a_rebuild(models):
    """Step by step (the pass unfinished: a layer's heading shows its last op so far), with a
    breakpoint toggled and the scope changed on the way: the rows always equal a full rebuild's."""
    s = Session(dict(models), PROMPT)
    app = make_app(s)

    async def script(pilot):
        tl = app.query_one(Timeline)
        checked = 0
        for i in range(40):
            await press(pilot, "s")
            if i == 12:
                await press(pilot, "t")              # a breakpoint mark on this op
            if i == 25:
                app.set_scope("all")                 # metrics change in place
                await app.workers.wait_for_complete()
                await pilot.pause()
            grown = row_texts(tl)
            if i == 20:   # mid-layer: its heading reads the rel_rms of its last op so far
                rec = s.history[-1]
                assert rec.layer is not None
                head = next(t for t in grown if t.startswith(f"─ layer {rec.layer} "))
                assert head.endswith(f"out {pct(rec.pair.get('rel_rms'))}")
            tl.reload()
            assert row_texts(tl) == grown, f"after step {i + 1}"
            checked += 1
        assert any("●" in t for t in row_texts(tl))  # the mark survived the appends
        return checked

    assert drive(app, script) == 40


def test_a_step_within_history_does_not_lay_the_screen_out(models):
    """Back and forth over ops with and without a weight: the panes change, their sizes do not, so
    no screen layout (which would redraw every pane) happens; the stats pane keeps two head lines."""
    s = Session(dict(models), PROMPT)
    for _ in range(12):
        s.step()
    app = make_app(s)

    async def script(pilot):
        screen = app.screen
        layouts = []
        orig = screen._refresh_layout

        def counted(*a, **k):
            layouts.append(s.cursor)
            return orig(*a, **k)

        screen._refresh_layout = counted
        await press(pilot, "b", "s")                 # the first visits lay out once (heights settle)
        layouts.clear()
        kinds = set()
        for key in "bbbbbsssss":
            await press(pilot, key)
            kinds.add(bool(s.current.weight))
        body = str(app.query_one("#stats-body").render())
        return layouts, kinds, body

    layouts, kinds, body = drive(app, script)
    assert kinds == {True, False}                    # both kinds of op were shown
    assert layouts == []
    assert "shape" in body and s.current.name in body


def test_busy_frame_is_the_timeline_panes_not_the_screens(models):
    s = Session(dict(models), PROMPT)
    s.decode(400)                                    # far longer than the test waits
    app = make_app(s)

    async def script(pilot):
        app.action_run_to_end()
        pane = app.query_one("#timeline-pane")
        running = pane.has_class("-busy"), app.screen.has_class("-busy")
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        await pilot.pause()
        return running, pane.has_class("-busy"), app.last_stop.reason

    running, after, reason = drive(app, script)
    assert running == (True, False)
    assert after is False and reason == "interrupted"


def test_wake_ends_a_wait_without_waiting_for_the_poll(models, monkeypatch):
    """Esc sets the interrupt and wakes the debugger's wait for a slow op: with the poll made an
    hour long, the wait still ends (the op stays queued)."""
    monkeypatch.setattr(prefetch, "POLL", 3600.0)
    s = Session(dict(models), PROMPT)
    gate, entered = threading.Event(), threading.Event()
    inner = s.source

    class Gated:
        def __getattr__(self, name):
            return getattr(inner, name)

        def next_op(self, index):
            if index == 1:
                entered.set()
                gate.wait()
            return inner.next_op(index)

    stop = threading.Event()
    src = PrefetchSource(Gated(), stop)
    s.source = src
    out: list = []

    def step() -> None:
        try:
            s.step()
        except Interrupted as e:
            out.append(e)

    try:
        s.step()
        entered.wait(30)
        t = threading.Thread(target=step, daemon=True)
        t.start()
        while not src._wanted and t.is_alive():      # the debugger is waiting for op 1
            threading.Event().wait(0.005)
        stop.set()
        src.wake()
        t.join(30)
        assert not t.is_alive() and len(out) == 1
        stop.clear()
        gate.set()
        assert s.step().record.index == 1            # the held op, not lost
    finally:
        gate.set()
        src.close()
