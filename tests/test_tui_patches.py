"""Weight patches in the TUI (qdbg.tui.patches): `p` patches the op's weight from B and re-runs
keeping breakpoints, `P` from R, `u` lists and removes; the header, the diff pane and the state line
show it. Driven through Textual's Pilot on the synthetic Q4_K_M / Q5_K_M pair."""

from __future__ import annotations


import pytest

from qdbg.model import Model
from qdbg.session import Session

textual = pytest.importorskip("textual")

from qdbg.tui.app import make_app  # noqa: E402
from qdbg.tui.header import SessionHeader  # noqa: E402
from qdbg.tui.patches import PatchesScreen, flip_state, patch_effect  # noqa: E402
from tui_pilot import drive, press, settle  # noqa: E402,F401

PROMPT = [1, 40, 41, 300, 12]


@pytest.fixture(scope="module")
def models(synth_model):
    return {"A": Model(synth_model("llama", "Q4_K_M")), "B": Model(synth_model("llama", "Q5_K_M"))}




def state(app) -> str:
    return app.query_one(SessionHeader).state


def test_patch_key_list_and_remove(models):
    s = Session(dict(models), PROMPT)
    bp = s.add_breakpoint("op == 'ffn_out-1'")
    app = make_app(s)

    async def script(pilot):
        await press(pilot, "s")  # inp_embd reads token_embd.weight; step on to a weightless op
        while s.current.weight is not None:
            await press(pilot, "s")
        await press(pilot, "p")
        assert "reads no weight" in state(app) and s.patches == []
        s.run_to("ffn_out-0")
        before = flip_state(s.history)
        await press(pilot, "p")
        assert [(p.glob, p.side) for p in s.patches] == [("blk.0.ffn_down.weight", "B")]
        assert list(s.breakpoints) == [bp] and s.at_end  # re-ran to the end, breakpoint kept
        assert state(app).startswith("patch blk.0.ffn_down.weight: A<-B · ")
        assert state(app) == patch_effect(s.patches[0].label(), before, flip_state(s.history))
        assert "patch blk.0.ffn_down.weight: A<-B" in str(app.query_one(SessionHeader).render())
        rec = next(r for r in s.history if r.name == "ffn_out-0")
        assert rec.pair.local == 0.0 and rec.interventions == ["patch blk.0.ffn_down.weight: A<-B"]
        s.cursor = rec.index
        app._refresh_views(force=True)
        await settle(pilot)
        diff = str(app.query_one("#diff-body").render())
        assert "local 0.00%" in diff and "[patch blk.0.ffn_down.weight: A<-B]" in diff
        await press(pilot, "P")
        assert "no side R" in state(app) and len(s.patches) == 1
        await press(pilot, "u")
        assert isinstance(app.screen, PatchesScreen)
        await press(pilot, "enter")
        assert s.patches == [] and s.at_end and list(s.breakpoints) == [bp]
        assert state(app).startswith("patch removed")
        assert "patch blk" not in str(app.query_one(SessionHeader).render())
        await press(pilot, "u")
        assert isinstance(app.screen, PatchesScreen)
        await press(pilot, "escape")
        assert not isinstance(app.screen, PatchesScreen) and s.patches == []

    drive(app, script)


def test_patch_effect_words() -> None:
    assert patch_effect("patch x", {(0, 4)}, set()) == "patch x · the flip is gone (was at pass 0 pos 4)"
    assert patch_effect("patch x", {(0, 4)}, {(0, 4)}) == "patch x · still flips at pass 0 pos 4"
    assert patch_effect("patch x", set(), {(1, 5)}) == "patch x · new flip at pass 1 pos 5"
    assert patch_effect("patch x", set(), set()) == "patch x · still no flip"
    assert patch_effect("patch x", None, set()) == "patch x · A and B pick the same top-1"
    assert patch_effect("patch x", {(0, 1)}, None) == "patch x · re-run did not reach the logits"
