"""The debugger over its sources: edge/every breakpoints, targets checked before any op runs,
tensor-name targets, centred logits, interventions (weight patches, activation resync), typed
records and their one JSON encoding, and the findings module."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qdbg.catalogue import Catalogue, OpInfo
from qdbg.cli_run import jsonable, run_session
from qdbg.debugger import Debugger, centred
from qdbg.errors import UsageError
from qdbg.findings import Findings, flips
from qdbg.model import Model
from qdbg.records import PairMetrics, Record, to_json_value
from qdbg.scope import Scope
from qdbg.session import Session
from qdbg.source import OpSource
from qdbg.trace import load_trace, save_trace

TOKENS = [1, 40, 41, 300, 12]


@pytest.fixture()
def pair(synth_model):
    return {lab: Model(synth_model("llama", ft)) for lab, ft in (("A", "Q4_K_M"), ("B", "Q5_K_M"))}


# ---- a hand-made source: the protocol is all the debugger needs ------------------------------

class ListSource:
    """An OpSource over fixed (name, kind, axes, A, B) ops, one pass over two positions."""

    def __init__(self, ops):
        self.ops, self.labels, self.models = ops, ["A", "B"], {}
        self.prompt, self.tokens, self.pending, self.driver, self.mode = [5, 6], [5, 6], [], "a", "f32"
        self.pieces, self.prompt_text = None, None
        self.catalogue = Catalogue(OpInfo(n, k, None, None) for n, k, _, _, _ in ops)
        self.reset()

    def reset(self):
        self._i = 0

    @property
    def exhausted(self):
        return self._i >= len(self.ops)

    def next_op(self, index):
        if self.exhausted:
            return None
        name, kind, axes, a, b = self.ops[self._i]
        self._i += 1
        return Record(index, name, kind, None, 0, (0, 1), axes, (), None, {}, None,
                      values={"A": np.asarray(a, np.float32), "B": np.asarray(b, np.float32)})

    def held_positions(self, rec):
        return rec.positions

    def recorded(self, rec, scope):
        return False

    def check_scope(self, scope):
        pass

    def decode(self, n, driver, text_tokens):
        raise UsageError("fixed")

    def numerics_info(self):
        return {"mode": "f32"}

    def numerics_text(self):
        return "f32"

    def interventions(self):
        return []


def _ops(errs):
    """Ops x-i with relative error errs[i] on both positions, then logits where B = A + 5."""
    base = np.linspace(1.0, 2.0, 8)
    ops = [(f"x-{i}", "act", ("token", "channel"), [base * (1 + e)] * 2, [base] * 2) for i, e in enumerate(errs)]
    la = np.array([[3.0, 1.0, 0.5, -1.0]] * 2)
    ops.append(("result_output", "logits", ("token", "vocab"), la, la + 5.0))
    return ops


def test_a_list_source_is_an_op_source():
    src = ListSource(_ops([0.0]))
    assert isinstance(src, OpSource)
    d = Debugger(src)
    assert [d.step().record.name for _ in range(2)] == ["x-0", "result_output"] and d.at_end


def test_edge_breakpoint_stops_once_per_run_of_true_every_stops_at_each():
    errs = [0.0, 0.1, 0.2, 0.3, 0.0, 0.2]
    d = Debugger(ListSource(_ops(errs)))
    d.add_breakpoint("rel_rms > 0.05")
    stops = []
    while (st := d.cont()).reason == "breakpoint":
        stops.append(st.record.name)
    assert stops == ["x-1", "x-5"]  # it becomes true at x-1 (holds to x-3) and again at x-5
    d = Debugger(ListSource(_ops(errs)))
    d.add_breakpoint("rel_rms > 0.05", every=True)
    stops = []
    while (st := d.cont()).reason == "breakpoint":
        stops.append(st.record.name)
    assert stops == ["x-1", "x-2", "x-3", "x-5"]


def test_logits_shift_that_softmax_ignores_counts_for_nothing():
    d = Debugger(ListSource(_ops([0.0])))
    d.run_to_end()
    rec = d.current
    pm = rec.pairs["A~B"]
    assert isinstance(pm, PairMetrics) and pm.centred is True
    assert pm.rel_rms == 0.0 and pm.sqnr == math.inf          # B = A + 5: same distribution
    lc = rec.logits["A~B"]
    assert lc.positions[-1].flip is False and lc.positions[-1].kl_ab == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(centred(np.array([[1.0, 3.0], [np.nan, 2.0]])), [[-1.0, 1.0], [np.nan, 0.0]])


def test_targets_checked_before_any_op_runs(pair):
    s = Session(dict(pair), TOKENS)
    for bad in ('op == "ffn_upp-1"', 'kind == "matmull"', 'op ~ "nothing*"', 'weight == "blk.9.x"'):
        with pytest.raises(UsageError):
            s.add_breakpoint(bad)
    with pytest.raises(UsageError, match="tensor"):
        s.add_breakpoint('op == "blk.1.ffn_down.weight"')
    with pytest.raises(UsageError, match="no op or tensor matches"):
        s.run_to("ffn_upp-1")
    assert s.history == [] and len(s.breakpoints) == 0  # nothing computed, nothing added
    st = s.run_to("blk.1.ffn_down.weight")
    assert st.reason == "target" and st.record.name == "ffn_out-1"
    bp = s.add_breakpoint('weight == "blk.1.ffn_up.weight"')
    s.restart()
    st = s.cont()
    assert st.breakpoints == [bp] and st.record.name == "ffn_up-1"


def test_run_max_stops_and_edge_in_a_live_run(pair):
    s = Session(dict(pair), TOKENS)
    s.add_breakpoint("rel_rms > 0.01", every=True)
    assert len(run_session(s, max_stops=3)) == 3 and not s.at_end
    s = Session(dict(pair), TOKENS)
    s.add_breakpoint("rel_rms > 0.01", every=True)
    every = run_session(s)
    s = Session(dict(pair), TOKENS)
    s.add_breakpoint("rel_rms > 0.01")
    edge = run_session(s)
    assert 0 < len(edge) < len(every)
    for st in edge:  # each edge stop follows an op where the condition did not hold
        prev = s.history[st.record.index - 1] if st.record.index else None
        assert prev is None or not (prev.pair.rel_rms or 0) > 0.01


def test_patch_all_weights_makes_a_equal_b(pair):
    s = Session(dict(pair), TOKENS, patches=["*=B"])
    s.run_to_end()
    assert all(r.pair.rel_rms == 0.0 for r in s.history)
    assert s.history[0].interventions == ["patch *: A<-B"]
    assert s.interventions()[0]["targets"] == ["A"]
    with pytest.raises(UsageError, match="no tensor matches"):
        Session(dict(pair), TOKENS, patches=["blk.99.*=B"])
    with pytest.raises(UsageError, match="GLOB=SIDE"):
        Session(dict(pair), TOKENS, patches=["blk.1.*"])


def test_resync_feeds_b_to_a_after_matching_ops(pair, tmp_path):
    s = Session(dict(pair), TOKENS, resyncs=["l_out-0"])
    s.run_to_end()
    by = {r.name: r for r in s.history}
    assert by["l_out-0"].interventions == ["resync A<-B"] and by["l_out-0"].pair.rel_rms > 0  # A's own output
    assert by["attn_norm-1"].pair.rel_rms == 0.0   # layer 1 starts from B's l_out-0 on both sides
    plain = Session(dict(pair), TOKENS)
    plain.run_to("attn_norm-1")
    assert plain.current.pair.rel_rms > 0
    with pytest.raises(UsageError, match="no op matches"):
        Session(dict(pair), TOKENS, resyncs=["nothing-*"])
    tr = load_trace(save_trace(s, tmp_path / "r.qtrace"))
    assert tr.interventions[0]["label"] == "resync l_out-0: A<-B"
    assert tr.records[by["l_out-0"].index].interventions == ["resync A<-B"]


def test_one_json_encoding_of_nonfinite_numbers():
    pm = PairMetrics(rel_rms=math.nan, sqnr=math.inf, cos=-math.inf)
    doc = to_json_value({"pm": pm, "x": [np.float32(1.5)]})
    assert doc["pm"]["rel_rms"] == {"$float": "nan"} and doc["pm"]["sqnr"] == {"$float": "inf"}
    assert doc["x"] == [1.5] and jsonable(pm) == to_json_value(pm)
    json.dumps(doc, allow_nan=False)
    assert PairMetrics.from_json(pm.to_json()).sqnr == math.inf and pm.get("local") is None


def test_scope_is_the_one_place_positions_are_chosen():
    assert Scope.parse("all").positions((3, 4, 5)) == (3, 4, 5) and Scope.parse("last").positions((3, 4)) == (4,)
    assert Scope.parse("4").positions((3, 4)) == (4,) and Scope.parse(9).positions((3, 4)) == ()
    assert Scope.parse("all") == "all" and Scope.parse(2) == 2 and str(Scope.parse(2)) == "2"
    assert Scope.parse("last").absolute((3, 4), 0) == 4 and Scope.parse("all").absolute((3, 4), 1) == 4
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(Scope.parse(4).take(x, ("token", "ch"), (3, 4, 5)), [[2, 3]])
    assert Scope.parse(7).take(x, ("token", "ch"), (3, 4, 5)) is None
    with pytest.raises(UsageError):
        Scope.parse("first")


def test_findings_list_every_flip_with_r(synth_model):
    models = {lab: Model(synth_model("llama", ft)) for lab, ft in
              (("A", "Q4_K_M"), ("B", "Q5_K_M"), ("R", "F16"))}
    s = Session(models, [1, 17, 42, 99, 300, 7], scope="all")
    s.run_to_end()
    lc = s.final()
    fl = [f for f in flips(s.history) if f.flip]
    assert [f.pos for f in fl] == lc.flip_positions and fl  # every flipped position, not just the last
    for f in fl:
        p = next(p for p in lc.positions if p.pos == f.pos)
        assert (f.a_id, f.b_id, f.margin_a) == (p.a.top[0]["id"], p.b.top[0]["id"], p.a.margin)
        assert f.verdict in ("near-tie", "decisive") and f.r_id is not None
    fd = Findings.of(s.history)
    assert fd.closer_to_r is not None and fd.closer_to_r.n_ops > 0
    json.dumps(jsonable(fd.to_json()), allow_nan=False)
