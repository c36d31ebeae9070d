"""The exact-mode goldens (tests/golden/exact) are complete, self-consistent, and name a model that
qdbg.synth + qdbg.quant regenerate byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from exact_goldens import (ExactGolden, Node, array_sha256, exact_golden_files, load_exact_golden,
                           rebuild_model)

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
WTYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# scenario -> tokens per step
STEPS = {"prompt12": [12, 1, 1], "prompt5": [5, 1], "ubatch5": [5, 5, 2], "fa_prompt12": [12, 1],
         "fa_prompt80": [80], "fa_long_t1": [300, 1], "fa_long_t2": [300, 1]}
REPACKED = {"Q4_0", "Q4_K"}  # what this AVX2 build repacks (rows % 8 == 0)

FILES = exact_golden_files()


@pytest.fixture(scope="module", params=FILES, ids=[p.stem for p in FILES])
def golden(request) -> ExactGolden:
    return load_exact_golden(request.param)


def test_every_arch_and_type_present() -> None:
    names = {p.name for p in FILES}
    missing = [f"{a}-{w}.npz" for a in ARCHS for w in WTYPES if f"{a}-{w}.npz" not in names]
    assert not missing, f"missing exact goldens: {missing}"
    assert sum(p.stat().st_size for p in FILES) < 8_000_000


def test_scenarios_and_steps(golden: ExactGolden) -> None:
    assert [s.name for s in golden.scenarios] == list(STEPS)
    for sc in golden.scenarios:
        assert [st.n_tokens for st in sc.steps] == STEPS[sc.name], sc.name
        assert len(sc.tokens) == sc.n_prompt + sc.n_decode
        pos = [p for st in sc.steps for p in st.positions]
        assert pos == list(range(len(sc.tokens))), sc.name
        assert sc.logits_same_without_cb, f"{sc.name}: the eval callback changed the logits"
        for st in sc.steps:
            fa = st.find(op="FLASH_ATTN_EXT")
            assert bool(fa) == sc.flash_attn, (sc.name, st.index)
            assert bool(st.find(op="SOFT_MAX")) == (not sc.flash_attn), (sc.name, st.index)
            assert len(st.top_ids) == 32 and st.top_logits == tuple(sorted(st.top_logits, reverse=True))
            mask = st.node("attn_inp_kq_mask", k=0)
            assert mask.type == ("f16" if sc.flash_attn else "f32")
            assert mask.ne[:2] == (st.n_kv[0], st.n_tokens)
    long = golden.scenario("fa_long_t1")
    assert long.n_ctx == 1024 and all(max(st.n_kv) >= 512 for st in long.steps)
    assert golden.scenario("fa_long_t2").n_threads == 2


def test_nodes_well_formed(golden: ExactGolden) -> None:
    for sc in golden.scenarios:
        for st in sc.steps:
            keys = [n.key for n in st.nodes]
            assert len(keys) == len(set(keys))
            for n in st.nodes:
                assert (n.sha256 is None) == n.is_view, n.key
                if n.sha256 is not None:
                    assert len(n.sha256) == 64 and n.type in ("f32", "f16", "i32", "i64")
            out = st.node("result_output")
            assert out.ne[:2] == (golden.spec["n_vocab"], st.n_tokens)


def test_weights_pure(golden: ExactGolden) -> None:
    """Every 2D weight has the file's type (norms stay F32); Q4_0/Q4_K matmul weights are repacked."""
    for name, t in golden.gguf_tensors.items():
        want = "F32" if len(t["shape"]) == 1 else golden.wtype
        assert t["type"] == want, name
    for name, w in golden.weights.items():
        for use, buf in w["buffer_by_use"].items():
            repack = golden.wtype in REPACKED and w["ne"][1] > 1 and use != "embd"
            assert buf == ("CPU_REPACK" if repack else "CPU_Mapped"), (name, use)
    assert golden.weight_buffer("token_embd.weight", "embd") == "CPU_Mapped"
    assert golden.qdbg_regenerates


def test_hash_helper() -> None:
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    n = Node("x", 0, "ADD", "f32", (3, 2, 1, 1), (), (1065353216,), array_sha256(a), (0.0, 1.0, 2.0, 3.0), 15.0)
    assert n.param_f32(0) == 1.0 and n.param_f32(3) == 0.0
    assert n.matches(a.reshape(2, 3)) and n.shape == (1, 1, 2, 3)
    assert not n.matches(a[..., ::-1])
    assert array_sha256(a.astype(np.float64), "f16") == array_sha256(a.astype(np.float16), "f16")


@pytest.fixture(scope="module")
def synth_caches():
    return {}


def test_qdbg_regenerates_llama_cpp_model(golden: ExactGolden, tmp_path, synth_caches) -> None:
    """qdbg.synth + qdbg.quant write byte-identical tensors to the file llama.cpp quantized."""
    from qdbg.synth import SynthCache, SynthSpec

    spec = SynthSpec.from_dict(golden.spec)
    cache = synth_caches.setdefault(spec, SynthCache(spec))
    rebuild_model(golden, tmp_path, cache=cache)
