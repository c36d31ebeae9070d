"""Engine behaviour that needs no oracle: stepping, KV cache, overrides, modes, weight cache."""

from __future__ import annotations

import numpy as np
import pytest

from qdbg.engine import ops
from qdbg.engine.forward import Engine
from qdbg.errors import GGUFError, QdbgError, UnsupportedError, UsageError
from qdbg.model import Model, WeightCache

TOKENS = [1, 17, 42, 99, 300, 7, 250]
ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_op_names_follow_llama_cpp(synth_model, arch):
    m = Model(synth_model(arch, "Q8_0"))
    names = [r.name for r in Engine(m).forward(TOKENS[:3])]
    assert names[0] == "inp_embd" and names[-2:] == ["result_norm", "result_output"]
    for want in ("attn_norm-0", "Qcur-0", "Kcur-0", "Vcur-0", "Qcur_rope-0", "Kcur_rope-0", "kq-0",
                 "kq_soft_max-0", "kqv_out-0", "attn_out-0", "ffn_norm-0", "ffn_gate-0", "ffn_up-0",
                 "ffn_out-0", "l_out-0"):
        assert want in names, want
    assert ("ffn_geglu-0" if arch == "gemma3" else "ffn_swiglu-0") in names
    assert ("Qcur_normed-0" in names) == (arch in ("qwen3", "gemma3"))
    assert ("attn_post_norm-0" in names) == (arch == "gemma3")
    assert len(names) == len(set(names))


def test_results_carry_identity(synth_model):
    m = Model(synth_model("llama", "Q4_K_M"))
    res = {r.name: r for r in Engine(m).forward(TOKENS[:4])}
    up = res["ffn_up-1"]
    assert up.layer == 1 and up.kind == "matmul" and up.weight == "blk.1.ffn_up.weight"
    assert up.weight_type == m.qtype("blk.1.ffn_up.weight").name
    assert up.inputs == ("ffn_norm-1",) and up.axes == ("token", "channel")
    assert up.value.shape == (4, m.config.n_ff)
    assert res["kq-0"].value.shape == (m.config.n_head, 4, 4)
    assert res["Qcur_rope-0"].ggml_name == "Qcur-0" and res["Qcur_rope-0"].ggml_op == "ROPE"
    assert res["result_output"].value.shape == (4, m.config.n_vocab)


@pytest.mark.parametrize("mode", ["ggml", "f32"])
@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_decode_equals_recompute(synth_model, arch, mode):
    """Decoding token by token with the KV cache gives the logits of one batch over everything."""
    m = Model(synth_model(arch, "Q4_K_M"))
    full = Engine(m, mode).logits(TOKENS)
    e = Engine(m, mode)
    rows = [e.logits(TOKENS[:3])] + [e.logits([t]) for t in TOKENS[3:]]
    np.testing.assert_allclose(np.concatenate(rows), full, rtol=0, atol=1e-5 * np.abs(full).max())


def test_stepping_equals_straight_through(synth_model):
    m = Model(synth_model("qwen3", "Q5_K_M"))
    e1, e2 = Engine(m), Engine(m)
    stepped = list(e1.forward(TOKENS))
    straight = e2.logits(TOKENS)
    np.testing.assert_array_equal(stepped[-1].value, straight)


def test_abandoned_pass_leaves_cache_untouched(synth_model):
    m = Model(synth_model("llama", "Q8_0"))
    e = Engine(m)
    ref = Engine(m).logits(TOKENS[:2])
    g = e.forward(TOKENS[:5])
    for _ in range(10):
        next(g)
    g.close()
    assert e.n_past == 0
    np.testing.assert_array_equal(e.logits(TOKENS[:2]), ref)


def test_output_override_propagates(synth_model):
    m = Model(synth_model("llama", "Q8_0"))
    base = {r.name: r.value for r in Engine(m).forward(TOKENS[:3])}
    zero = np.zeros_like(base["ffn_out-0"])
    res = {r.name: r for r in Engine(m, overrides={"ffn_out-0": zero}).forward(TOKENS[:3])}
    assert res["ffn_out-0"].overridden
    np.testing.assert_array_equal(res["ffn_out-0"].computed, base["ffn_out-0"])
    np.testing.assert_array_equal(res["l_out-0"].value, base["ffn_inp-0"])  # l_out = 0 + ffn_inp
    with pytest.raises(QdbgError, match=rf"override for 'ffn_out-0' has shape \(3,\), expected \(3, {m.config.n_embd}\)"):
        list(Engine(m, overrides={"ffn_out-0": np.zeros(3)}).forward(TOKENS[:3]))


def test_weight_override_patches_one_tensor(synth_model):
    """Patching A with B's weight for one tensor changes that op to B's value."""
    a = Model(synth_model("llama", "Q4_K_M"))
    b = Model(synth_model("llama", "Q8_0"))
    name = "blk.0.attn_q.weight"
    ra = {r.name: r for r in Engine(a).forward(TOKENS[:3])}
    rp = {r.name: r for r in Engine(a, weight_overrides={name: b.weight(name)}).forward(TOKENS[:3])}
    assert rp["Qcur-0"].weight_type == "Q8_0"
    # the patched op is B's op on A's input: B's engine fed A's attn_norm-0 computes the same Qcur-0
    fed = {r.name: r for r in Engine(b, overrides={"attn_norm-0": ra["attn_norm-0"].value}).forward(TOKENS[:3])}
    np.testing.assert_array_equal(rp["Qcur-0"].value, fed["Qcur-0"].value)
    assert not np.array_equal(rp["Qcur-0"].value, ra["Qcur-0"].value)
    np.testing.assert_array_equal(rp["Kcur-0"].value, ra["Kcur-0"].value)


def test_modes_differ_only_by_rounding(synth_model):
    m = Model(synth_model("llama", "Q4_K_M"))
    g = Engine(m, "exact").logits(TOKENS)
    f = Engine(m, "f32").logits(TOKENS)
    assert not np.array_equal(g, f)
    assert np.linalg.norm(g - f) / np.linalg.norm(f) < 0.05
    with pytest.raises(UsageError):
        Engine(m, "bf16")


def test_bad_tokens_are_usage_errors(synth_model):
    m = Model(synth_model("llama", "Q8_0"))
    with pytest.raises(UsageError, match="outside the vocabulary"):
        list(Engine(m).forward([1, m.config.n_vocab]))
    with pytest.raises(UsageError):
        list(Engine(m).forward([]))


def test_weight_cache_is_bounded_lru(synth_model):
    from gguf import GGMLQuantizationType as QT

    from qdbg.engine.weights import Weight

    # f32 mode dequantizes every matrix through the cache: 20 weights, far over the 600 kB budget
    m = Model(synth_model("llama", "F16"), cache_bytes=600_000)
    Engine(m, "f32").logits(TOKENS[:2])
    assert 0 < m.cache.used <= 600_000
    assert m.cache.misses > len(m.cache) > 0  # more weights were loaded than are kept: some were evicted
    assert "output.weight" in m.cache  # the most recently used matrix stays
    c = WeightCache(100)
    big = Weight("big", QT.F32, np.zeros(100, np.float32))  # 400 bytes: alone over the budget
    c.put(big)
    assert len(c) == 1 and c.used == 400  # the newest item is kept even when it alone exceeds the budget
    c.put(Weight("small", QT.F32, np.zeros(10, np.float32)))
    assert "big" not in c and len(c) == 1 and c.used == 40
    c = WeightCache(100)
    for i in range(4):
        c.put(Weight(f"w{i}", QT.F32, np.zeros(10, np.float32)))  # 40 bytes each
    assert len(c) == 2 and "w3" in c and "w2" in c
    c.get("w2")
    c.put(Weight("w4", QT.F32, np.zeros(10, np.float32)))
    assert "w2" in c and "w3" not in c


def test_rope_cache_is_a_running_float32_product():
    cos, sin = ops.rope_cache(np.array([0, 5]), 8, 10000.0, 1.0)
    assert cos.dtype == np.float32 and cos.shape == (2, 4)
    np.testing.assert_array_equal(cos[0], 1.0)
    ts = np.float32(np.power(np.float32(10000.0), np.float32(-2.0) / np.float32(8)))
    theta = np.float32(5.0)
    for i in range(4):
        assert sin[1, i] == np.float32(np.sin(np.float64(theta)))
        theta = np.float32(theta * ts)


def test_softmax_matches_reference_and_masks():
    rng = np.random.default_rng(0)
    kq = rng.standard_normal((2, 3, 5)).astype(np.float32)
    mask = ops.causal_mask(np.array([2, 3, 4]), np.arange(5))
    p = ops.softmax_ext(kq, mask, 0.5)
    assert np.all(p[:, 0, 3:] == 0) and np.allclose(p.sum(-1), 1, atol=1e-6)
    w = kq[:, 2] * 0.5
    np.testing.assert_allclose(p[:, 2], np.exp(w) / np.exp(w).sum(-1, keepdims=True), rtol=1e-6)
    swa = ops.causal_mask(np.array([4]), np.arange(5), n_swa=2)
    assert list(np.isfinite(swa[0])) == [False, False, False, True, True]


def test_geglu_uses_ggml_half_table():
    x = np.array([-11.0, -0.5, 0.1234567, 3.3, 12.0], np.float32)
    y = ops.geglu(x, np.ones_like(x))
    assert y[0] == 0 and y[-1] == 12.0
    assert y[2] == np.float16(y[2])  # a table value is a half
    exact = ops.geglu(x, np.ones_like(x), exact_f32=True)
    np.testing.assert_allclose(y, exact, rtol=2e-3)


def test_unknown_architecture_and_bad_shapes(tmp_path):
    from gguf import GGUFWriter

    p = tmp_path / "m.gguf"
    w = GGUFWriter(str(p), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(UnsupportedError, match="unsupported architecture 'mamba'"):
        Model(p)
    p2 = tmp_path / "l.gguf"
    w = GGUFWriter(str(p2), "llama")
    for k, v in {"embedding_length": 4, "block_count": 1, "feed_forward_length": 8,
                 "attention.head_count": 2}.items():
        w.add_uint32(f"llama.{k}", v)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(GGUFError, match="missing tensor 'blk.0.attn_norm.weight'"):
        Model(p2)


def test_matrix_cache_precision_adapts_to_the_budget(synth_model):
    """Matrices are cached as float64 when they all fit the budget that way, else as float32;
    the numbers do not change either way."""
    path = synth_model("llama", "Q4_K_M")
    big, small = Model(path), Model(path, cache_bytes=1 << 20)
    assert big.matrices_f64 and not small.matrices_f64
    assert big.weight("blk.0.ffn_up.weight").values.dtype == np.float64
    assert small.weight("blk.0.ffn_up.weight").values.dtype == np.float32
    np.testing.assert_array_equal(Engine(big).logits(TOKENS), Engine(small).logits(TOKENS))
