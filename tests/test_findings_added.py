"""findings: ops ranked by the error they add (not by amp), closer-to-R judged by KL at the logits."""

from __future__ import annotations

import math

from qdbg.findings import amplifiers, closer_to_r, error_added
from qdbg.records import LogitsComparison, LogitsPosition, LogitsSide, PairMetrics, Record


def _rec(i: int, name: str, rel_rms: float, inputs: tuple[str, ...] = (), amp: float | None = None,
         step: int = 0) -> Record:
    r = Record(index=i, name=name, kind="op", layer=0, step=step, positions=(0,), axes=("token", "x"),
               inputs=inputs, weight=None, weight_types={}, ggml_name=None)
    r.pairs["A~B"] = PairMetrics(rel_rms=rel_rms, amp=amp)
    return r


def tiny_norm_case() -> list[Record]:
    """A tiny norm whose error grows x10.4 (1e-4 -> 1.04e-3) and a matmul that adds 0.03 at x2.5."""
    return [_rec(0, "inp_embd", 0.0),
            _rec(1, "ffn_inp-1", 1e-4, ("inp_embd",)),
            _rec(2, "ffn_norm-1", 1.04e-3, ("ffn_inp-1",), amp=10.4),
            _rec(3, "attn_norm-1", 0.02, ("inp_embd",)),
            _rec(4, "ffn_up-1", 0.05, ("attn_norm-1",), amp=2.5)]


def test_ranked_by_error_added_not_ratio() -> None:
    recs = tiny_norm_case()
    amps = amplifiers(recs)
    assert [a.name for a in amps[:2]] == ["ffn_up-1", "attn_norm-1"]
    up = amps[0]
    assert math.isclose(up.added, 0.03) and math.isclose(up.input_rel_rms, 0.02) and up.amp == 2.5
    norm = next(a for a in amps if a.name == "ffn_norm-1")
    assert norm.amp == 10.4 and math.isclose(norm.added, 1.04e-3 - 1e-4)
    assert amps.index(norm) > amps.index(up)  # the largest ratio adds the least error
    assert "inp_embd" not in [a.name for a in amps]  # adds nothing


def test_source_adds_its_whole_error_and_unknown_inputs_fall_back_on_amp() -> None:
    recs = [_rec(0, "attn_norm-0", 0.0), _rec(1, "Qcur-0", 0.036, ("attn_norm-0",)),  # inputs agree: a source
            _rec(2, "x", 0.2, ("not-recorded",), amp=4.0), _rec(3, "y", 0.2, ("not-recorded",))]
    got = error_added(recs)
    assert got[1] == (0.0, 0.036)
    assert got[2] == (0.05, 0.2 - 0.05) and 3 not in got


def _logits(i: int, step: int, kl_r_a: float, kl_r_b: float) -> Record:
    r = _rec(i, "result_output", 0.1, step=step)
    r.pairs["A~R"] = PairMetrics(rel_rms=0.01)   # A closer to R by rel_rms
    r.pairs["B~R"] = PairMetrics(rel_rms=0.02)
    side = LogitsSide(top=[{"id": 1, "logit": 1.0}])
    r.logits = {k: LogitsComparison(positions=[LogitsPosition(pos=step, a=side, b=side, kl_ba=v)])
                for k, v in (("A~R", kl_r_a), ("B~R", kl_r_b))}
    return r


def test_closer_to_r_is_judged_by_kl_at_the_logits() -> None:
    recs = [_logits(0, 0, 0.30, 0.10), _logits(1, 1, 0.20, 0.12)]
    c = closer_to_r(recs)
    assert c.best == "A" and c.n_a == 2        # every op: A has the smaller rel_rms to R
    assert c.by_kl == "B" and c.n_kl == 2      # but B predicts R's distribution better
    assert math.isclose(c.kl_mean_r_a, 0.25) and math.isclose(c.kl_mean_r_b, 0.11)
    assert closer_to_r([_logits(0, 0, 0.1, 0.1)]).by_kl is None
