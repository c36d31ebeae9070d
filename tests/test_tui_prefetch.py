"""Computing ahead (qdbg.tui.prefetch) and Esc while an op is being computed, without clocks:
a gate holds one op's computation open, and the tests check what happens while it is held."""

from __future__ import annotations

import asyncio
import threading

import pytest

from qdbg.model import Model
from qdbg.session import Session

pytest.importorskip("textual")

from qdbg.tui.app import make_app  # noqa: E402
from qdbg.tui.prefetch import Interrupted, PrefetchSource  # noqa: E402

PROMPT = [1, 40, 41, 300, 12]


@pytest.fixture(scope="module")
def models(synth_model):
    return {"A": Model(synth_model("llama", "Q4_K_M")), "B": Model(synth_model("llama", "Q5_K_M"))}


class Gated:
    """A source whose op number `at` waits for `gate` (the test's stand-in for a slow op)."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at = inner, at
        self.gate, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def next_op(self, index):
        if index == self.at:
            self.entered.set()
            self.gate.wait()
        return self.inner.next_op(index)


def test_buffer_is_bounded_and_ops_match_an_unprefetched_run(models):
    s, ref = Session(dict(models), PROMPT), Session(dict(models), PROMPT)
    src = PrefetchSource(s.source, max_ops=3)
    s.source = src
    try:
        for _ in range(5):
            st, want = s.step(), ref.step()
            assert st.record.name == want.record.name and st.record.index == want.record.index
            assert (st.record.values["A"] == want.record.values["A"]).all()
            assert src.buffered() <= 3
        # the thread fills up to the bound and stops there
        while src.status() is not None or src.buffered() < 3:
            threading.Event().wait(0.01)
        assert src.buffered() == 3 and src.computed == 5 + 3
    finally:
        src.close()


def test_prefetch_stops_at_the_end_of_a_pass_before_a_queued_token(models):
    s = Session(dict(models), PROMPT)
    s.run_to_end()
    s.decode(1)
    n_tok = len(s.tokens)
    src = PrefetchSource(s.source, at_pass_end=True)
    s.source = src
    try:
        threading.Event().wait(0.2)
        assert src.buffered() == 0 and len(s.tokens) == n_tok   # the queued token is not taken early
        s.step()
        assert s.current.step == 1 and len(s.tokens) == n_tok + 1
    finally:
        src.close()


def test_interrupted_wait_keeps_the_op(models):
    s = Session(dict(models), PROMPT)
    gated = Gated(s.source, at=2)
    stop = threading.Event()
    src = PrefetchSource(gated, stop)
    s.source = src
    try:
        s.step(), s.step()
        gated.entered.wait()
        stop.set()
        with pytest.raises(Interrupted, match="interrupted while computing"):
            s.step()                                  # returns although the op is still held
        assert s.cursor == 1 and len(s.history) == 2
        stop.clear()
        gated.gate.set()
        st = s.step()                                 # the held op, computed once
        assert st.record.index == 2 and src.computed >= 3
        names = [r.name for r in s.history]
        assert len(names) == len(set(names)) == 3
    finally:
        gated.gate.set()
        src.close()


def test_escape_ends_the_wait_for_a_slow_op_in_the_app(models):
    s = Session(dict(models), PROMPT)
    gated = Gated(s.source, at=1)
    s.source = gated
    app = make_app(s)

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("s")
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            assert s.cursor == 0
            await pilot.press("s")                    # op 1 is held: the verb waits in a worker
            while not app.busy:
                await asyncio.sleep(0.01)
            await pilot.press("escape")
            await pilot.app.workers.wait_for_complete()   # returns while op 1 is still held
            await pilot.pause()
            assert not gated.gate.is_set()
            assert app.busy == "" and app.last_stop.reason == "interrupted" and s.cursor == 0
            assert "interrupted" in str(app.header.render())
            gated.gate.set()
            while app.prefetch.buffered() == 0:
                await asyncio.sleep(0.01)
            await pilot.press("s")                    # computed meanwhile: shown at once
            await pilot.pause()
            assert s.cursor == 1 and s.current.name == "attn_norm-0"
    try:
        asyncio.run(main())
    finally:
        gated.gate.set()
