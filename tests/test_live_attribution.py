"""Attribution, the per-op noise shadow and the logits noise floor as the debugger records them
(qdbg.live + qdbg.debugger), checked against qdbg.attribution and qdbg.noise computed on their own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qdbg.attribution import attribute_run
from qdbg.engine.forward import Engine
from qdbg.expr import VARIABLES
from qdbg.model import Model
from qdbg.noise import noise_floor
from qdbg.numerics import RunSettings
from qdbg.records import AUX_CROSS, AUX_SHADOW
from qdbg.session import Session

SMALL = dict(n_ff=256, n_vocab=512, n_layer=2)
TOKENS = [1, 17, 230, 45, 99, 7, 301]


@pytest.fixture(scope="module")
def pair(synth_model):
    return {"A": Model(synth_model("llama", "Q4_K_M", **SMALL)), "B": Model(synth_model("llama", "Q8_0", **SMALL))}


def _session(pair, **kw) -> Session:
    s = Session(pair, TOKENS, settings=RunSettings(n_ubatch=4), **kw)
    s.decode(1)
    return s


def test_local_and_inherited_match_attribution_and_add_up(pair) -> None:
    s = _session(pair, scope="all")
    s.run_to_end()
    st = RunSettings(n_ubatch=4)
    ref = list(attribute_run(Engine(pair["A"], "exact", settings=st), Engine(pair["B"], "exact", settings=st),
                             TOKENS + [s.tokens[-1]], decode=1))
    assert len(ref) == len(s.history)
    kinds = set()
    for rec, att in zip(s.history, ref):
        assert (rec.name, rec.step) == (att.name, att.step)
        pm = rec.pair
        if rec.name == "result_output":  # centred logits: compare the split itself
            assert pm.local is not None and pm.inherited is not None
            continue
        kinds.add(rec.kind)
        assert pm.local == pytest.approx(att.local_rel, rel=1e-9, abs=1e-12), rec.name
        assert pm.inherited == pytest.approx(att.inherited_rel, rel=1e-9, abs=1e-12), rec.name
        # the arrays the debugger kept add up to the total difference to float32 rounding
        a, b = (rec.values[k].astype(np.float64) for k in ("A", "B"))
        c = rec.aux[AUX_CROSS].astype(np.float64)
        scale = np.maximum(np.abs(a), np.abs(b))
        assert np.all(np.abs((c - b) + (a - c) - (a - b)) <= scale * 2.0 ** -24), rec.name
    assert {"embed", "matmul", "norm", "attn", "residual"} <= kinds
    # a weighted op adds error itself, weightless arithmetic adds none
    w = [r for r in s.history if r.kind == "matmul"]
    assert all(r.pair.local > 0 for r in w)
    assert all(r.pair.local == 0.0 for r in s.history if r.kind in ("residual", "act", "rope"))


def test_last_scope_measures_the_last_row(pair) -> None:
    s = _session(pair)  # scope last
    s.run_to("ffn_out-1")
    rec = s.current
    a, b, c = (v[-1].astype(np.float64) for v in (rec.values["A"], rec.values["B"], rec.aux[AUX_CROSS]))
    nb = math.sqrt(float(np.sum(b * b)))
    assert rec.pair.local == pytest.approx(math.sqrt(float(np.sum((c - b) ** 2))) / nb, rel=1e-12)
    assert rec.pair.inherited == pytest.approx(math.sqrt(float(np.sum((a - c) ** 2))) / nb, rel=1e-12)


def test_breakpoint_variables_local_inherited_noise(pair) -> None:
    assert {"local", "inherited", "noise", "noise_floor"} <= set(VARIABLES)
    s = _session(pair, noise=True)
    s.add_breakpoint("kind == 'matmul' and local > inherited", every=True)
    st = s.cont()
    assert st.reason == "breakpoint"
    assert st.record.kind == "matmul" and st.record.pair.local > st.record.pair.inherited
    v = s.variables(st.record)
    assert v["local"] == st.record.pair.local and "noise" in v


def test_attribution_off_leaves_fields_absent(pair) -> None:
    s = _session(pair, attribution=False)
    s.run_to("ffn_out-0")
    assert s.current.pair.local is None and s.current.pair.inherited is None and AUX_CROSS not in s.current.aux


def test_noise_per_op_and_floor_at_the_logits(pair) -> None:
    s = _session(pair, noise=True)
    s.run_to_end()
    by = {(r.name, r.step): r for r in s.history}
    # kq and kq_soft_max exist only with flash attention off: no shadow value
    assert by[("kq-0", 0)].pair.noise is None and AUX_SHADOW not in by[("kq-0", 0)].aux
    # before attention the shadow computes the same arithmetic: no noise
    assert by[("Qcur-0", 0)].pair.noise == 0.0
    out = [r for r in s.history if r.name == "result_output"]
    assert len(out) == 3  # two prompt micro-batches, one decode
    assert all(r.pair.noise is not None and r.pair.noise > 0 for r in out)
    # the floor at the logits equals qdbg.noise.noise_floor run on its own, position by position
    nf = noise_floor(pair["A"], s.tokens, settings=RunSettings(n_ubatch=4), decode=1)
    for r in out:
        lc = r.logits["A~B"]
        assert lc.noise_shadows == nf.shadows
        for p in lc.positions:
            assert p.noise_floor == pytest.approx(nf.at(p.pos), rel=1e-9, abs=1e-9)


def test_noise_off_has_no_floor(pair) -> None:
    s = _session(pair)
    s.run_to_end()
    assert s.final().positions[-1].noise_floor is None and s.history[-1].pair.noise is None


def test_trace_keeps_attribution_noise_and_their_tensors(pair, tmp_path) -> None:
    from qdbg.replay import ReplaySession
    from qdbg.trace import load_trace, save_trace

    s = _session(pair, noise=True, patches=["blk.1.ffn_down.weight=B"])
    s.run_to_end()
    tr = load_trace(save_trace(s, tmp_path / "t.qtrace", tensor_budget_bytes=1 << 30))
    assert [iv["label"] for iv in tr.interventions] == ["patch blk.1.ffn_down.weight: A<-B"]
    r = ReplaySession.from_trace(tr)
    for r1, r2 in zip(s.history, r.history):
        assert (r2.pair.local, r2.pair.inherited, r2.pair.noise) == (r1.pair.local, r1.pair.inherited, r1.pair.noise)
        assert r2.interventions == r1.interventions
    assert r.final().positions[-1].noise_floor == s.final().positions[-1].noise_floor
    # another scope re-measures from the saved tensors, attribution and noise included
    s.set_scope("all")
    r.set_scope("all")
    for r1, r2 in zip(s.history, r.history):
        assert (r2.pair.local, r2.pair.noise) == (r1.pair.local, r1.pair.noise), r1.name
    assert r.final().noise_shadows == s.final().noise_shadows == ["flash_attn=on", "ubatch=2"]


def test_add_and_remove_patch_restart_keeping_breakpoints(pair) -> None:
    s = _session(pair)
    bp = s.add_breakpoint("op == 'ffn_out-1'")
    s.run_to_end()
    before = s.history[-1].values["A"].copy()
    assert len(s.tokens) == len(TOKENS) + 1
    p = s.add_patch("blk.*.ffn_down.weight=B")
    assert s.history == [] and s.cursor == -1 and list(s.breakpoints) == [bp]
    assert [q.glob for q in s.patches] == ["blk.*.ffn_down.weight"] and s.interventions()[0]["side"] == "B"
    assert s.pending == [None]  # the decode step queued again
    st = s.cont()
    assert st.reason == "breakpoint" and st.record.name == "ffn_out-1"
    # A's ffn_down now computes with B's weights: the op adds no error of its own
    assert st.record.pair.local == 0.0 and st.record.interventions == ["patch blk.*.ffn_down.weight: A<-B"]
    s.run_to_end()
    assert not np.array_equal(s.history[-1].values["A"], before)
    with pytest.raises(Exception, match="no tensor matches"):
        s.add_patch("blk.9.nothing=B")
    assert len(s.patches) == 1  # a bad patch changes nothing
    assert s.remove_patch(0) == p and s.patches == []
    s.run_to_end()
    assert np.array_equal(s.history[-1].values["A"], before)
    with pytest.raises(Exception, match="no patch 1"):
        s.remove_patch(0)
