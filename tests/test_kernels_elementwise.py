"""Exact elementwise kernels against outputs recorded from llama.cpp's CPU backend.

Goldens: tests/golden/kernels/elementwise.json (+ .npz), written by
tools/record_kernels_elementwise.py; inputs are rebuilt from seeds (tests/kernels_elementwise_cases.py)
and checked by sha256 first, so a drifting generator fails loudly instead of silently.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

import kernels_elementwise_cases as kc
from goldens import golden_files, load_golden
from qdbg.errors import QdbgError
from qdbg.numerics.kernels import elementwise as ew

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kernels")
DOC = json.load(open(os.path.join(GOLDEN, "elementwise.json")))
FULL = dict(np.load(os.path.join(GOLDEN, "elementwise.npz")))


def compute(case: dict, a: dict[str, np.ndarray]) -> np.ndarray:
    op = case["op"]
    if op == "softmax":
        return ew.softmax_ext(a["kq"], a.get("mask"), case["scale"], case["max_bias"])
    if op == "swiglu":
        return ew.swiglu(a["gate"], a["up"])
    if op == "geglu":
        return ew.geglu(a["gate"], a["up"])
    if op == "rope":
        cos, sin = ew.rope_cache(a["pos"], case["n_dims"], case["base"], case["freq_scale"])
        return ew.rope(a["x"], cos, sin, case["n_dims"], case["neox"])
    if op == "rms_norm":
        return ew.rms_norm(a["x"], a.get("w"), case["eps"])
    if op == "softcap":
        return ew.softcap(a["x"], case["cap"])
    if op == "scale":
        return ew.scale(a["x"], case["s"])
    if op == "add":
        return ew.add(a["a"], a["b"])
    raise ValueError(op)


@pytest.mark.parametrize("case", DOC["cases"], ids=[c["name"] for c in DOC["cases"]])
def test_bit_equal_to_llama_cpp(case: dict) -> None:
    a = kc.inputs(case)
    assert {k: kc.digest(v) for k, v in sorted(a.items())} == case["in_sha"], "input generator drifted"
    y = compute(case, a)
    assert y.dtype == np.float32 and list(y.shape) == case["shape"]
    if case["name"] in FULL:
        ref = FULL[case["name"]]
        bad = np.flatnonzero(y.view(np.uint32) != ref.view(np.uint32))
        assert bad.size == 0, f"{bad.size} values differ, first at flat index {bad[:5]}"
    assert kc.digest(y) == case["out_sha"]


def _f(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<i", bits))[0]


_NODE_OPS = {"SOFT_MAX", "ROPE", "GEGLU", "SWIGLU", "RMS_NORM", "SCALE", "ADD"}


def _node_output(op: str, params: tuple[int, ...], srcs: list[np.ndarray]) -> np.ndarray:
    """qdbg's value of a recorded llama.cpp graph node from its recorded sources."""
    if op == "SOFT_MAX":
        kq = srcs[0].reshape(-1, *srcs[0].shape[-2:])
        mask = srcs[1].reshape(-1, srcs[1].shape[-1]) if len(srcs) > 1 else None
        return ew.softmax_ext(kq, mask, _f(params[0]), _f(params[1]))
    if op == "ROPE":
        assert _f(params[7]) == 0.0 and _f(params[8]) == 1.0  # ext_factor, attn_factor
        cos, sin = ew.rope_cache(srcs[1].reshape(-1), params[1], _f(params[5]), _f(params[6]))
        return ew.rope(srcs[0].reshape(srcs[0].shape[-3:]), cos, sin, params[1], params[2] == 2)
    if op in ("GEGLU", "SWIGLU"):
        return (ew.geglu if op == "GEGLU" else ew.swiglu)(srcs[0], srcs[1])
    if op == "RMS_NORM":
        return ew.rms_norm(srcs[0], None, _f(params[0]))
    if op == "SCALE":
        return ew.scale(srcs[0], _f(params[0]), _f(params[1]))
    return ew.add(srcs[0], srcs[1])


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_fidelity_graph_nodes(path) -> None:
    """Every SOFT_MAX, ROPE, GEGLU/SWIGLU, RMS_NORM, SCALE, ADD node of the whole-model goldens
    whose sources were recorded (llama, qwen2, qwen3, gemma3 incl. SWA masks; prompt + decodes)."""
    g = load_golden(path)
    n_checked = 0
    for si, step in enumerate(g.steps):
        for node in step.nodes:
            if node.op not in _NODE_OPS or node.store is None or None in node.src_keys:
                continue
            srcs = [g.tensor_by_key(si, k) for k in node.src_keys]
            y = _node_output(node.op, node.op_params, srcs)
            want = g.tensor_by_key(si, node.key).astype(np.float32).reshape(-1)
            got = np.asarray(y, np.float32).reshape(-1)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), \
                f"step {si} {node.key} ({node.op})"
            n_checked += 1
    assert n_checked > 50


def test_gelu_table_is_the_wheels() -> None:
    assert kc.digest(ew.gelu_table()) == DOC["gelu_table_sha"]


def test_recorded_threads_agree() -> None:
    assert DOC["thread_diffs"] == 0 and DOC["threads_checked"] == [1, 2, 4]


def test_cases_cover_the_paths() -> None:
    ops = {c["op"] for c in DOC["cases"]}
    assert ops == {"softmax", "swiglu", "geglu", "rope", "rms_norm", "softcap", "scale", "add"}
    rope = [c for c in DOC["cases"] if c["op"] == "rope"]
    assert {(c["neox"], c["n_dims"] // 2 % 2) for c in rope} == {(False, 0), (False, 1),
                                                                  (True, 0), (True, 1)}
    assert any(c["n_dims"] < c["head_dim"] for c in rope)
    assert {c["mask"] for c in DOC["cases"] if c["op"] == "softmax"} >= {"causal", "swa32", "one",
                                                                         "none"}


def test_v_expf_edges_match_softmax_lanes() -> None:
    # a one-row softmax over 8 values is exactly v_expf(x - max) / sum
    x = np.array([0.0, -1.0, -87.0, -88.0, -103.0, -104.0, -150.0, -np.inf], np.float32)
    p = ew.softmax_ext(x[None, None], None, 1.0)[0, 0]
    assert p[0] > 0.5 and p[-1] == 0.0 and np.all(np.isfinite(p))


def test_shape_errors() -> None:
    with pytest.raises(QdbgError):
        ew.swiglu(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(QdbgError):
        ew.rope(np.zeros((2, 1, 8), np.float32), *ew.rope_cache(np.arange(2), 8, 1e4), 10, False)
    with pytest.raises(QdbgError):
        ew.softmax_ext(np.zeros((1, 2, 8), np.float32), np.zeros((2, 7), np.float32), 1.0)
