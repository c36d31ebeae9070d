"""mul_mat_legacy against llama.cpp's MUL_MAT, bit for bit (golden: tests/golden/kernels/legacy.npz,
recorded by tools/record_kernels_legacy.py with 1 and 4 threads, which agree).

Cases cover every dispatch: vec_dot (n_tok 1, and every n_tok for Q4_1/Q5_1), tinyBLAS_Q0_AVX
(Q4_0/Q5_0/Q8_0, n_tok >= 2, with n_out and n_tok hitting every edge tile: n_out % 4 != 0, n_tok
% 4 != 0), and repacked Q4_0 (n_out % 8 == 0: gemm for groups of 4 rows, gemv for the rest);
n_in from 1 to 33 blocks, multiples of 256 or not, odd block counts. Also every weight MUL_MAT
of a legacy type in the whole-model fidelity goldens (tests/golden/fidelity), fed llama.cpp's input.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from goldens import golden_files, load_golden
from qdbg.errors import QdbgError
from qdbg.model import Model
from qdbg.numerics.kernels.legacy import LEGACY_MATMUL_TYPES, mul_mat_legacy
from qdbg.quant import quantize
from qdbg.synth import SynthSpec, write_gguf

GOLDEN = Path(__file__).parent / "golden" / "kernels" / "legacy.npz"

_N_IN = (32, 96, 256, 320, 640, 1056)
_N_TOK = (1, 2, 3, 4, 5, 7, 8, 9, 13, 33)
_N_OUT = (1, 3, 5, 6, 7, 13, 16, 2, 37, 4, 9)
_N_OUT_REPACK = (8, 16, 24, 40)


def _cases() -> list[dict]:
    cases = []
    configs = [(t, False) for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")] + [("Q4_0", True)]
    for qtype, rep in configs:
        outs = _N_OUT_REPACK if rep else _N_OUT
        for i, (n_in, n_tok) in enumerate((a, b) for a in _N_IN for b in _N_TOK):
            if (n_in == 1056 and n_tok not in (1, 2, 5, 8, 13)) or (n_in in (96, 256) and n_tok == 33):
                continue                                   # keep the golden file small
            cases.append({"qtype": qtype, "repacked": rep, "n_in": n_in, "n_tok": n_tok,
                          "n_out": outs[(i * 7 + n_tok) % len(outs)], "seed": len(cases)})
    return cases


CASES = _cases()


def case_inputs(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (raw weight bytes [n_out, row_bytes], x f32 [n_tok, n_in]) of one case.

    Weights get a per-row offset (so Q4_1/Q5_1 mins matter) and x gets per-block magnitudes over
    four decades, an all-zero block (d = 0) and an exact tie for the largest magnitude.
    """
    rng = np.random.default_rng(1000 + case["seed"])
    n_out, n_in, n_tok = case["n_out"], case["n_in"], case["n_tok"]
    w = rng.standard_normal((n_out, n_in)).astype(np.float32) * np.float32(0.05)
    w += rng.uniform(-0.05, 0.05, (n_out, 1)).astype(np.float32)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-2, 2, (n_tok, n_in // 32)).repeat(32, axis=1).astype(np.float32)
    if n_in >= 64:
        x[0, 32:64] = 0
    x[-1, 0], x[-1, 1] = 3.0, -3.0
    x[-1, 2:32] = np.clip(x[-1, 2:32], -2.9, 2.9)
    return quantize(w, QT[case["qtype"]]), x


@functools.cache
def _golden() -> tuple[list[dict], list[np.ndarray]]:
    """(case table, expected outputs): `y` holds every case's [n_tok, n_out] output, concatenated."""
    with np.load(GOLDEN) as z:
        cases, flat = json.loads(str(z["cases"])), z["y"]
    sizes = [c["n_tok"] * c["n_out"] for c in cases]
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return cases, [p.reshape(c["n_tok"], c["n_out"]) for p, c in zip(parts, cases)]


def test_case_table_matches_golden() -> None:
    cases, _ = _golden()
    assert cases == CASES


@pytest.mark.parametrize("i", range(len(CASES)),
                         ids=[f"{c['qtype']}{'r' if c['repacked'] else ''}-{c['n_out']}x{c['n_in']}-t{c['n_tok']}"
                              for c in CASES])
def test_bit_exact(i: int) -> None:
    _, ys = _golden()
    case = CASES[i]
    raw, x = case_inputs(case)
    y = mul_mat_legacy(raw, QT[case["qtype"]], case["n_in"], x, case["repacked"])
    want = ys[i]
    assert y.shape == want.shape
    assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), \
        f"{int((y.view(np.uint32) != want.view(np.uint32)).sum())} of {y.size} differ"


def test_rejects_what_the_build_never_runs() -> None:
    raw = quantize(np.ones((6, 64), np.float32), QT.Q4_0)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(QdbgError, match="never repacks"):
        mul_mat_legacy(raw, QT.Q4_0, 64, x, True)        # n_out % 8 != 0
    with pytest.raises(QdbgError, match="never repacks"):
        mul_mat_legacy(quantize(np.ones((8, 64), np.float32), QT.Q8_0), QT.Q8_0, 64, x, True)
    with pytest.raises(QdbgError, match="not one of"):
        mul_mat_legacy(raw, QT.Q4_K, 64, x, False)
    with pytest.raises(QdbgError, match="uint8"):
        mul_mat_legacy(raw, QT.Q4_0, 96, np.ones((2, 96), np.float32), False)


_LEGACY = {t.name.lower() for t in LEGACY_MATMUL_TYPES}


def _has_legacy_weights(path: Path) -> bool:
    with np.load(path) as z:                                   # the manifest alone, not the tensors
        return any(w["type"] in _LEGACY for w in json.loads(str(z["manifest"]))["weights"].values())


_FIDELITY = [p for p in golden_files() if _has_legacy_weights(p)]


@pytest.mark.parametrize("path", _FIDELITY, ids=[p.stem for p in _FIDELITY])
def test_fidelity_mul_mat_nodes(path: Path, tmp_path: Path) -> None:
    g = load_golden(path)
    m = Model(write_gguf(SynthSpec.from_dict(g.spec), tmp_path / "m.gguf", g.ftype))
    w_info, n_checked = g.manifest["weights"], 0
    for si, st in enumerate(g.steps):
        for n in st.nodes:
            w = w_info.get(n.srcs[0]) if n.op == "MUL_MAT" and n.srcs else None
            if w is None or w["type"] not in _LEGACY:
                continue
            n_in = w["shape"][0]
            x = g.tensor_by_key(si, n.src_roots[1]).reshape(-1, n_in)
            raw = m.gguf.raw(n.srcs[0]).reshape(w["shape"][1], -1)        # [n_out, row_bytes]
            y = mul_mat_legacy(raw, QT[w["type"].upper()], n_in, x,
                               w["buffer"] == "CPU_REPACK")
            want = g.tensor_by_key(si, n.key).astype(np.float32).reshape(y.shape)
            assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), f"step {si} {n.name}"
            n_checked += 1
    assert n_checked
