"""Snapshot tests of the TUI (pytest-textual-snapshot): the main screen at 80x24, 120x40 and 200x50, and
at 120x40 a breakpoint hit, the logits pane after a top-1 flip, and a breakpoint error shown inline.

Everything on screen is deterministic: seeded synthetic models with fixed file names, no clocks,
no directories, cursor blinking off. Update after a deliberate change with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import pytest

from qdbg.model import Model
from qdbg.session import Session

pytest.importorskip("pytest_textual_snapshot")

from textual.widgets import Input  # noqa: E402

from qdbg.tui.app import make_app  # noqa: E402

SIZE = (120, 40)
PROMPT = [1, 40, 41, 300, 12]
FLIP_PROMPT = [1, 40, 41, 300, 6]  # A (Q4_K_M) and B (Q5_K_M) disagree at the top-1 here in exact mode


@pytest.fixture(scope="module")
def models(synth_model):
    return {"A": Model(synth_model("llama", "Q4_K_M")), "B": Model(synth_model("llama", "Q5_K_M"))}


def flipped_session(models) -> Session:
    """FLIP_PROMPT run to the end; the test fails if A and B no longer disagree at its top-1."""
    s = Session(dict(models), FLIP_PROMPT)
    assert s.mode == "exact"
    s.run_to_end()
    last = s.final()["positions"][-1]
    assert last["flip"] and last["a"]["top"][0]["id"] != last["b"]["top"][0]["id"]
    return s


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    for inp in pilot.app.screen.query(Input):
        inp.cursor_blink = False
    await pilot.pause()


async def press(pilot, *keys: str) -> None:
    for k in keys:
        await pilot.press(k)
        await settle(pilot)


@pytest.mark.parametrize("size", [(80, 24), SIZE, (200, 50)], ids=["80x24", "120x40", "200x50"])
def test_main_screen(snap_compare, models, size):
    """Run to the end, go back to ffn_out-1 and set a breakpoint on it: below 100 columns the panes
    stack, from 160 the stats pane takes half the right side."""
    app = make_app(Session(dict(models), PROMPT))

    async def run_before(pilot):
        await press(pilot, "e", "slash")
        pilot.app.screen.query_one(Input).value = "ffn_out-1"
        await press(pilot, "enter", "t")

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_breakpoint_hit(snap_compare, models):
    """A conditional breakpoint entered in the pane, then continue: stopped, marked, counted."""
    app = make_app(Session(dict(models), PROMPT))

    async def run_before(pilot):
        await press(pilot, "a")
        pilot.app.query_one("#bp-input", Input).value = 'kind == "matmul" and rel_rms > 0.3'
        await press(pilot, "enter", "escape", "c")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_logits_after_flip(snap_compare, models):
    """At result_output on a prompt where A and B pick different next tokens."""
    app = make_app(flipped_session(models))

    async def run_before(pilot):
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_breakpoint_error_inline(snap_compare, models):
    """A malformed condition: the error under the input with a caret at the faulty column."""
    app = make_app(Session(dict(models), PROMPT))

    async def run_before(pilot):
        await press(pilot, "s", "a")
        pilot.app.query_one("#bp-input", Input).value = "rel_rms > > 0.1"
        await press(pilot, "enter")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
