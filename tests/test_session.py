"""Session verbs, scope and breakpoints — no UI, tiny synthetic models."""

from __future__ import annotations

import numpy as np
import pytest

from qdbg.engine.forward import Engine
from qdbg.errors import ExpressionError, ModelMismatchError, UsageError
from qdbg.model import Model
from qdbg.session import Session

TOKENS = [1, 40, 41, 300, 12]


@pytest.fixture()
def trio(synth_model):
    return {lab: Model(synth_model("llama", ft)) for lab, ft in
            (("A", "Q4_K_M"), ("B", "Q5_K_M"), ("R", "F16"))}


@pytest.fixture()
def sess(trio):
    return Session(trio, TOKENS)


def n_ops(cfg) -> int:
    return 1 + 17 * cfg.n_layer + 2  # inp_embd, 17 ops per llama layer, result_norm, result_output


def test_step_and_back_walk_history_without_recompute(sess):
    names = [sess.step().record.name for _ in range(4)]
    assert names == ["inp_embd", "attn_norm-0", "Qcur-0", "Kcur-0"]
    rec = sess.current
    assert sess.back().record.name == "Qcur-0"
    assert sess.step().record is rec  # the same Record object: nothing recomputed
    assert len(sess.history) == 4


def test_values_match_single_engines(sess, trio):
    st = sess.run_to("ffn_up-1")
    ref = {r.name: r.value for r in Engine(trio["A"]).forward(TOKENS)}
    np.testing.assert_array_equal(st.record.values["A"], ref["ffn_up-1"])
    assert set(st.record.values) == {"A", "B", "R"} and set(st.record.pairs) == {"A~B", "A~R", "B~R"}
    assert st.record.weight_types == {"A": "Q4_K", "B": "Q5_K", "R": "F16"}


def test_run_to_name_glob_layer_and_next_layer(sess):
    assert sess.run_to("kq_soft_max-0").record.name == "kq_soft_max-0"
    assert sess.run_to("ffn_*").record.name == "ffn_inp-0"
    assert sess.next_layer().record.name == "attn_norm-1"
    sess.restart()
    assert sess.run_to(1).record.name == "attn_norm-1"
    assert sess.next_layer().record.name == "result_norm"
    with pytest.raises(UsageError):
        sess.run_to(99)


def test_run_to_end_and_final(sess, trio):
    st = sess.run_to_end()
    assert st.reason == "end" and sess.current.name == "result_output" and sess.at_end
    assert len(sess.history) == n_ops(trio["A"].config)
    f = sess.final()
    # the verdict is the two models' own argmax at the last position (run alone, outside the session)
    top_a, top_b = (int(Engine(trio[lab]).logits(TOKENS)[-1].argmax()) for lab in ("A", "B"))
    p = f["positions"][0]
    assert f["n_pos"] == 1 and p["pos"] == len(TOKENS) - 1
    assert (p["a"]["top"][0]["id"], p["b"]["top"][0]["id"]) == (top_a, top_b)
    assert p["top1_agree"] is (top_a == top_b) and p["flip"] is (top_a != top_b)
    assert f["flip_positions"] == ([] if top_a == top_b else [len(TOKENS) - 1])
    assert sess.step().reason == "end"


def test_breakpoints_stop_count_hits_and_temporary(sess):
    bp = sess.breakpoints.add("rel_rms > 0.05 and kind == 'matmul'")
    st = sess.cont()
    assert st.reason == "breakpoint" and st.breakpoints == [bp] and st.record.kind == "matmul"
    assert st.record.pair["rel_rms"] > 0.05 and bp.hits == 1
    sess.breakpoints.disable(bp.id)
    t = sess.breakpoints.add('op == "l_out-1"', temporary=True)
    st = sess.cont()
    assert st.record.name == "l_out-1" and t.id not in sess.breakpoints
    assert sess.cont().reason == "end"
    with pytest.raises(ExpressionError):
        sess.breakpoints.add("sqnr < ")


def test_flip_breakpoint_only_at_logits(sess):
    sess.breakpoints.add("flip == true or flip == false")
    st = sess.cont()
    assert st.record.name == "result_output"  # flip is absent before the logits


def test_amp_and_reference_pairs(sess):
    rec = sess.run_to("ffn_out-0").record
    assert rec.pair["amp"] is not None and rec.pair["amp"] > 0
    # the F16 reference is closer to each side than they are to each other at the weights' ops
    assert rec.pairs["B~R"]["rel_rms"] < rec.pairs["A~R"]["rel_rms"]


def test_scope_last_all_and_position(sess):
    rec = sess.run_to("l_out-0").record
    last = rec.pair["rel_rms"]
    sess.set_scope("all")
    assert rec.pair["rel_rms"] != last and rec.stats["A"]["shape"] == [len(TOKENS), 256]
    sess.set_scope(2)
    a, b = rec.values["A"][2], rec.values["B"][2]
    assert rec.pair["rel_rms"] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-6)
    sess.set_scope(99)  # a position this step does not have: no metrics, no crash
    assert rec.pairs == {}
    with pytest.raises(UsageError):
        sess.set_scope("first")


def test_decode_drivers_feed_every_side_the_same_token(sess):
    sess.decode(2, "b")
    sess.run_to_end()
    assert len(sess.tokens) == len(TOKENS) + 2
    outs = [r for r in sess.history if r.name == "result_output"]
    assert len(outs) == 3 and [r.step for r in outs] == [0, 1, 2]
    assert sess.tokens[len(TOKENS)] == int(np.argmax(outs[0].values["B"][-1]))
    assert outs[1].positions == (len(TOKENS),)
    sess.decode(1, "text", [77])
    sess.run_to_end()
    assert sess.tokens[-1] == 77
    with pytest.raises(UsageError):
        sess.decode(2, "text", [5])
    with pytest.raises(UsageError):
        sess.decode(1, "c")


def test_restart_clears_history_keeps_breakpoints(sess):
    sess.breakpoints.add("nan")
    sess.run_to_end()
    sess.restart()
    assert sess.history == [] and sess.current is None and len(sess.breakpoints) == 1
    assert sess.step().record.name == "inp_embd"


def test_mismatched_models_are_named(synth_model):
    a = Model(synth_model("llama", "Q8_0"))
    with pytest.raises(ModelMismatchError, match="n_embd"):
        Session({"A": a, "B": Model(synth_model("llama", "Q8_0", n_embd=512))}, TOKENS)
    with pytest.raises(ModelMismatchError, match="arch"):
        Session({"A": a, "B": Model(synth_model("qwen2", "Q8_0"))}, TOKENS)


def test_prompt_longer_than_context(synth_model):
    a = Model(synth_model("llama", "Q8_0"))
    with pytest.raises(UsageError, match="context"):
        Session({"A": a, "B": a}, [1] * (a.config.n_ctx_train + 1))


def test_logits_positions_are_absolute(sess):
    sess.run_to_end()
    f = sess.final()
    assert [p["pos"] for p in f["positions"]] == [len(TOKENS) - 1]
    sess.set_scope("all")
    f = sess.final()
    assert [p["pos"] for p in f["positions"]] == list(range(len(TOKENS)))
    assert all(0 <= p < len(TOKENS) for p in f["flip_positions"])
