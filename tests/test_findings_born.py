"""findings.divergence_born: ops and tensors ranked by the local error attribution measured."""

from __future__ import annotations

from qdbg.findings import Findings, divergence_born
from qdbg.records import PairMetrics, Record


def _rec(i: int, name: str, step: int, local: float | None, weight: str | None = None,
         inherited: float | None = 0.0) -> Record:
    r = Record(index=i, name=name, kind="matmul" if weight else "residual", layer=0, step=step, positions=(0,),
               axes=("token", "x"), inputs=(), weight=weight, weight_types={"A": "q4_0", "B": "q8_0"},
               ggml_name=None)
    r.pairs["A~B"] = PairMetrics(rel_rms=(local or 0.0) + (inherited or 0.0), local=local, inherited=inherited)
    return r


def test_ranks_ops_and_tensors_by_local_error() -> None:
    recs = [_rec(0, "q-0", 0, 0.02, "blk.0.attn_q.weight"), _rec(1, "ffn_out-0", 0, 0.0, None, 0.05),
            _rec(2, "ffn_down-0", 0, 0.10, "blk.0.ffn_down.weight"), _rec(3, "unmeasured", 0, None),
            _rec(4, "q-0", 1, 0.07, "blk.0.attn_q.weight"), _rec(5, "ffn_down-0", 1, 0.01, "blk.0.ffn_down.weight")]
    born = divergence_born(recs, top=3)
    assert [(b.name, b.step) for b in born.ops] == [("ffn_down-0", 0), ("q-0", 1), ("q-0", 0)]
    assert born.n_measured == 5
    assert [(t.weight, t.local, t.step, t.n_passes) for t in born.tensors] == [
        ("blk.0.ffn_down.weight", 0.10, 0, 2), ("blk.0.attn_q.weight", 0.07, 1, 2)]
    assert born.tensors[0].type_a == "q4_0" and born.tensors[0].type_b == "q8_0"
    assert divergence_born(recs, top=None).ops[-1].name == "ffn_out-0"
    doc = Findings.of(recs).to_json()["born"]
    assert doc["ops"][0]["name"] == "ffn_down-0" and doc["tensors"][0]["weight"] == "blk.0.ffn_down.weight"


def test_nothing_measured_is_empty() -> None:
    born = divergence_born([_rec(0, "q-0", 0, None, "blk.0.attn_q.weight")])
    assert born.ops == [] and born.tensors == [] and born.n_measured == 0
