"""findings.divergence_born: ops and tensors ranked by the local error attribution measured."""

from __future__ import annotations

import pytest

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


def _logits_rec(margin_a: float, margin_b: float, floor: float | None, b_std: float = 1.0,
                rel: float = 0.01) -> Record:
    from qdbg.records import LogitsComparison, LogitsPosition, LogitsSide, SideStats

    a = LogitsSide(top=[{"id": 5, "piece": "x", "logit": 10.0}, {"id": 7, "piece": "y", "logit": 10.0 - margin_a}],
                   margin=margin_a)
    b = LogitsSide(top=[{"id": 7, "piece": "y", "logit": 9.0}, {"id": 5, "piece": "x", "logit": 9.0 - margin_b}],
                   margin=margin_b)
    r = Record(index=0, name="result_output", kind="logits", layer=None, step=0, positions=(3,),
               axes=("token", "vocab"), inputs=(), weight="output.weight", weight_types={}, ggml_name=None)
    r.pairs["A~B"] = PairMetrics(rel_rms=rel, centred=True)
    r.stats["B"] = SideStats(std=b_std)
    r.logits = {"A~B": LogitsComparison(positions=[LogitsPosition(pos=3, a=a, b=b, flip=True, top1_agree=False,
                                                                  noise_floor=floor)], flip_positions=[3])}
    return r


def test_flip_verdicts_weigh_the_noise_floor() -> None:
    from qdbg.findings import NEAR_TIE_SIGMAS, WITHIN, flips

    near = NEAR_TIE_SIGMAS * 2 ** 0.5 * 0.01  # the near-tie threshold at rel_rms 0.01, std 1
    (f,) = flips([_logits_rec(0.5, 0.4, 0.1)])
    assert f.verdict == "decisive" and f.swing == pytest.approx(0.9) and f.noise_floor == 0.1 and f.noise == pytest.approx(near)
    assert "above the noise floor 0.1" in f.because()
    (f,) = flips([_logits_rec(0.5, 0.05, 0.1)])
    assert f.verdict == WITHIN == "within llama.cpp's own variation"
    assert f.because().startswith("within llama.cpp's own variation: margins A 0.5, B 0.05 <= noise floor 0.1")
    (f,) = flips([_logits_rec(0.02, 0.01, 0.001)])  # above the floor, but a swing within the logit error
    assert f.verdict == "near-tie" and f.swing == pytest.approx(0.03) and f.swing < near
    (f,) = flips([_logits_rec(0.5, 0.05, None)])  # no floor measured: the margins are not weighed against it
    assert f.verdict == "decisive" and f.noise_floor is None
