"""Format checks of the llama.cpp fidelity goldens (tests/golden/fidelity/*.npz) and their loader.

Hermetic: reads the committed files only (no llama_cpp). Checks that every manifest is complete and
self-consistent: each listed node has an array (or a valid alias) of the right shape and dtype,
tokens/logits/positions agree, result_output equals the logits and decode tokens are greedy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

try:
    from goldens import GOLDEN_DIR, Golden, golden_files, load_golden
except ImportError:  # tests/ imported as a package
    from tests.goldens import GOLDEN_DIR, Golden, golden_files, load_golden

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
FTYPES = ("F16", "Q8_0", "Q4_K_M", "Q5_K_M")
MANIFEST_KEYS = {"format", "arch", "ftype", "spec", "llama_cpp_version", "settings", "tokens",
                 "n_prompt", "n_decode", "n_vocab", "n_kv", "weights", "gguf", "source_f32", "steps"}
NODE_KEYS = {"name", "k", "key", "op", "type", "shape", "srcs", "src_keys", "src_roots", "op_params"}
DTYPES = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64}
# names every layer of every arch must have, in every step
LAYER_NAMES = ("attn_norm-{}", "Qcur-{}", "Kcur-{}", "Vcur-{}", "kq-{}", "kq_soft_max-{}", "kqv-{}",
               "kqv_out-{}", "ffn_norm-{}", "ffn_gate-{}", "ffn_up-{}", "ffn_out-{}", "l_out-{}")

FILES = golden_files()


def _id(p: Path) -> str:
    return p.stem


@pytest.fixture(scope="module", params=FILES, ids=_id)
def golden(request: pytest.FixtureRequest) -> Golden:
    return load_golden(request.param)


def test_all_goldens_present() -> None:
    names = {p.name for p in FILES}
    missing = [f"{a}-{f}.npz" for a in ARCHS for f in FTYPES if f"{a}-{f}.npz" not in names]
    assert not missing, f"missing goldens in {GOLDEN_DIR}: {missing}"


def test_manifest_complete(golden: Golden) -> None:
    m = golden.manifest
    assert MANIFEST_KEYS <= set(m), MANIFEST_KEYS - set(m)
    assert golden.path.stem == f"{golden.manifest.get('case', golden.arch)}-{golden.ftype}"
    assert m["spec"]["arch"] == golden.arch
    assert m["settings"]["flash_attn"] == "disabled" and m["settings"]["kv_type"] == "f16"
    assert len(m["steps"]) == m["n_decode"] + 1 == len(m["n_kv"])
    assert set(m["gguf"]["tensors"]) == set(m["source_f32"]["tensors"])
    for digest in (m["gguf"], m["source_f32"]):
        assert re.fullmatch(r"[0-9a-f]{64}", digest["file_sha256"])
        for t in digest["tensors"].values():
            assert re.fullmatch(r"[0-9a-f]{64}", t["sha256"]) and t["type"] and t["shape"]
    assert all(t["type"] == "F32" for t in m["source_f32"]["tensors"].values())


def test_tokens_logits_positions(golden: Golden) -> None:
    m = golden.manifest
    assert golden.n_prompt == 7 and len(golden.tokens) == golden.n_prompt + m["n_decode"]
    assert all(0 <= t < golden.n_vocab for t in golden.tokens)
    assert golden.logits.dtype == np.float32
    assert golden.logits.shape == (len(golden.tokens), golden.n_vocab)
    assert np.isfinite(golden.logits).all()
    kinds = [s.kind for s in golden.steps]
    assert kinds == ["prompt"] + ["decode"] * m["n_decode"]
    flat = [p for s in golden.steps for p in s.positions]
    assert flat == list(range(len(golden.tokens)))
    for i in range(m["n_decode"]):  # decode tokens are llama.cpp's greedy choice
        assert golden.tokens[golden.n_prompt + i] == int(np.argmax(golden.logits[golden.n_prompt - 1 + i]))


def test_every_node_has_its_tensor(golden: Golden) -> None:
    used: set[str] = set()
    for i, step in enumerate(golden.steps):
        keys = [n.key for n in step.nodes]
        assert len(keys) == len(set(keys)), f"duplicate keys in step {i}"
        seen: set[str] = set()
        for raw, node in zip(golden.manifest["steps"][i]["nodes"], step.nodes):
            assert NODE_KEYS <= set(raw), (node.key, NODE_KEYS - set(raw))
            assert node.key == f"{node.name}#{node.k}" and len(node.shape) == 4
            assert len(node.srcs) == len(node.src_keys) == len(node.src_roots)
            assert all(r is None or r in seen for r in node.src_roots), node.key
            assert (node.store is None) != (node.alias_of is None), node.key
            if node.store is not None:
                arr = golden.arrays[node.store]
                used.add(node.store)
                assert node.store == f"s{i}/{node.key}"
                assert arr.dtype == DTYPES[node.type], (node.key, arr.dtype, node.type)
            else:
                assert node.alias_of in seen, (node.key, node.alias_of)
            t = golden.tensor_by_key(i, node.key)
            assert t.shape == tuple(reversed(node.shape)), (node.key, t.shape, node.shape)
            if node.type in ("f32", "f16"):
                assert t.dtype == np.float32
            seen.add(node.key)
    assert set(golden.arrays) - {"logits"} == used, "arrays not referenced by any node"


def test_graph_consistency(golden: Golden) -> None:
    n_layer = golden.spec["n_layer"]
    for i, step in enumerate(golden.steps):
        n_tok = len(step.positions)
        assert step.n_kv >= step.positions[-1] + 1
        out = golden.tensor(i, "result_output")
        assert out.shape == (1, 1, n_tok, golden.n_vocab)
        np.testing.assert_array_equal(out[0, 0], golden.step_logits(i))
        mask = golden.nodes(i, "attn_inp_kq_mask")[0]
        assert mask.shape[:2] == (step.n_kv, n_tok)
        assert golden.tensor(i, "inp_pos").ravel().tolist() == list(step.positions)
        toks = golden.tensor(i, "inp_tokens").ravel().tolist()
        assert toks == [golden.tokens[p] for p in step.positions]
        for il in range(n_layer):
            for pat in LAYER_NAMES:
                assert golden.nodes(i, pat.format(il)), f"step {i}: no node {pat.format(il)}"
            assert golden.node(i, f"kq-{il}").shape[:2] == (step.n_kv, n_tok)


def test_loader_lookup(golden: Golden) -> None:
    rope = golden.tensor(0, "Qcur-0", op="ROPE")
    assert rope.shape == (1, golden.n_prompt, golden.spec["n_head"], golden.spec["head_dim"])
    with pytest.raises(KeyError):
        golden.tensor(0, "Qcur-0")  # several nodes share the name
    with pytest.raises(KeyError):
        golden.tensor(0, "no-such-node")
    assert golden.node(0, "Qcur-0", op="MUL_MAT").k == 0
    rs = golden.node(0, "Qcur-0", op="RESHAPE")  # stored as an alias of its source (matmul or bias add)
    assert rs.alias_of == rs.src_roots[0] and rs.alias_of.startswith("Qcur-0#")
    np.testing.assert_array_equal(golden.tensor(0, "Qcur-0", k=rs.k).ravel(),
                                  golden.tensor_by_key(0, rs.alias_of).ravel())


@pytest.mark.parametrize("arch", ARCHS)
def test_source_f32_is_qdbg_synth(arch: str) -> None:
    """The F32 model llama.cpp quantized is exactly qdbg.synth's weights for the recorded spec."""
    import hashlib

    from qdbg.synth import SynthSpec, synth_weights

    g = load_golden(GOLDEN_DIR / f"{arch}-F16.npz")
    weights = synth_weights(SynthSpec.from_dict(g.spec))
    recorded = g.manifest["source_f32"]["tensors"]
    assert set(weights) == set(recorded)
    for name, w in weights.items():
        assert hashlib.sha256(w.tobytes()).hexdigest() == recorded[name]["sha256"], name
