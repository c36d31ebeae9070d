"""Record K-quant MUL_MAT outputs of the installed llama.cpp for tests/test_kernels_kquants.py.

    python tools/record_kernels_kquants.py      # writes tests/golden/kernels/kquants.npz

Weights are rebuilt bit-exactly from seeds by qdbg.quant.quantize and activations by numpy's
PCG64, so the file holds only seeds, shapes, hashes of those inputs and llama.cpp's outputs.
Per case (type, n_in, n_out) one 33-row activation x is used and llama.cpp's output row t
depends only on x[t] and the kernel, so a few arrays cover every n_tok of the test list:

    vec    [7, n_out]   MUL_MAT(W, x[:7])          vec_dot rows (any n_tok < 8)
    tiled  [33, n_out]  MUL_MAT(W, x[:33])         tiled rows (any n_tok >= 8)
    gemm   [32, n_out]  repacked, MUL_MAT(W, x[:32])   rows of 4-row groups
    gemv   [33, n_out]  repacked, MUL_MAT(W, x[t:t+1]) per row, the n_tok % 4 last rows

Before writing, the recorder checks that claim: for every n_tok in N_TOKS it runs llama.cpp on
x[:n_tok] and asserts the result equals the rows assembled from those arrays, with 1 and 4
threads (the thread count changes no bit on these paths). Big cases (264 rows, 300 tokens) are
stored as sha256 of the output bytes only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

import ggml_oracle as O  # noqa: E402
from qdbg.quant import quantize  # noqa: E402

OUT = ROOT / "tests" / "golden" / "kernels" / "kquants.npz"
N_TOKS = (1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 33)
TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
PLAIN_SHAPES = ((256, 13), (512, 24), (1280, 40))
REPACK_SHAPES = ((256, 16), (512, 24), (1280, 40))
BIG = (("Q4_K", 512, 264, 300, False), ("Q4_K", 512, 264, 300, True), ("Q6_K", 1024, 264, 33, False),
       ("Q3_K", 512, 264, 17, False))


def weight(qtype: str, n_in: int, n_out: int, seed: int) -> np.ndarray:
    """Seeded float rows with per-row magnitudes from 1e-3 to 50, quantized to qtype."""
    rng = np.random.default_rng(seed)
    mag = rng.choice(np.array([1e-3, 1.0, 50.0]), size=(n_out, 1))
    return quantize((rng.standard_normal((n_out, n_in)) * mag).astype(np.float32), QT[qtype])


def activation(n_tok: int, n_in: int, seed: int) -> np.ndarray:
    """Seeded activation rows (magnitudes 0.01..300), with the edge cases the quantizers branch
    on: row 1's first block all zero (d = 0), row 0's block-0 maximum present with both signs."""
    rng = np.random.default_rng(seed + 1000)
    mag = rng.choice(np.array([0.01, 1.0, 300.0]), size=(n_tok, 1))
    x = (rng.standard_normal((n_tok, n_in)) * mag).astype(np.float32)
    x[1, :256] = 0.0
    x[0, 3], x[0, 7] = 5e3, -5e3
    return x


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def run(raw: np.ndarray, qtype: str, n_in: int, x: np.ndarray, repack: bool) -> np.ndarray:
    """llama.cpp's MUL_MAT with 4 threads, asserted bit-equal to the 1-thread result."""
    y4 = O.mul_mat(raw, QT[qtype], n_in, x, repack=repack, n_threads=4)
    y1 = O.mul_mat(raw, QT[qtype], n_in, x, repack=repack, n_threads=1)
    assert np.array_equal(y1.view(np.uint32), y4.view(np.uint32)), "thread count changed bits"
    return y4


def expected(case: dict[str, np.ndarray], n_tok: int, repack: bool) -> np.ndarray:
    """Rows for x[:n_tok] assembled from the stored arrays (the test uses the same rule)."""
    if repack:
        n_gemm = n_tok - n_tok % 4
        return np.concatenate([case["gemm"][:n_gemm], case["gemv"][n_gemm:n_tok]])
    return case["vec"][:n_tok] if n_tok < 8 else case["tiled"][:n_tok]


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    cases = []
    seed = 0
    plan = [(t, s, False) for t in TYPES for s in PLAIN_SHAPES] + [("Q4_K", s, True) for s in REPACK_SHAPES]
    for qtype, (n_in, n_out), repack in plan:
        seed += 1
        raw = weight(qtype, n_in, n_out, seed)
        x = activation(33, n_in, seed)
        key = f"{qtype}-{n_in}x{n_out}-{'repack' if repack else 'plain'}"
        if repack:
            case = {"gemm": run(raw, qtype, n_in, x[:32], True),
                    "gemv": np.concatenate([run(raw, qtype, n_in, x[t:t + 1], True) for t in range(33)])}
        else:
            case = {"vec": run(raw, qtype, n_in, x[:7], False), "tiled": run(raw, qtype, n_in, x, False)}
        for n_tok in N_TOKS:
            got = run(raw, qtype, n_in, x[:n_tok], repack)
            assert np.array_equal(got.view(np.uint32), expected(case, n_tok, repack).view(np.uint32)), (key, n_tok)
        for name, a in case.items():
            arrays[f"{key}/{name}"] = a
        cases.append({"key": key, "type": qtype, "n_in": n_in, "n_out": n_out, "seed": seed,
                      "repacked": repack, "w_sha256": sha(raw), "x_sha256": sha(x)})
        print(key, "ok")
    for qtype, n_in, n_out, n_tok, repack in BIG:
        seed += 1
        raw = weight(qtype, n_in, n_out, seed)
        x = activation(n_tok, n_in, seed)
        y = run(raw, qtype, n_in, x, repack)
        cases.append({"key": f"{qtype}-{n_in}x{n_out}-{n_tok}tok-{'repack' if repack else 'plain'}",
                      "type": qtype, "n_in": n_in, "n_out": n_out, "n_tok": n_tok, "seed": seed,
                      "repacked": repack, "w_sha256": sha(raw), "x_sha256": sha(x), "y_sha256": sha(y)})
        print(cases[-1]["key"], "ok")
    manifest = {"version": 1, "n_toks": list(N_TOKS), "cases": cases, "system": O.system_info()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, manifest=np.array(json.dumps(manifest)), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
