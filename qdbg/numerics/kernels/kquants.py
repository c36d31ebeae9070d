"""MUL_MAT of K-quant weights (Q2_K..Q6_K) exactly as the reference build computes it.

Dispatch of ggml_compute_forward_mul_mat (ggml-cpu.c) for src0 = a K-quant weight and src1 =
f32 activations [n_tok, n_in] on the AVX2+FMA build (no AVX-512, llamafile on, CPU_REPACK on):

1. weight in CPU_REPACK (only Q4_K with n_out % 8 == 0 on AVX2; Q2_K's 8x8 repack needs
   AVX-512): repack.cpp forward_mul_mat -> rows in groups of 4 through
   ggml_quantize_mat_q8_K_4x8 + ggml_gemm_q4_K_8x8_q8_K, the n_tok % 4 last rows through
   quantize_row_q8_K + ggml_gemv_q4_K_8x8_q8_K. gemm adds to its float accumulators per 64
   elements, gemv per 256, so a row's bits depend on which of the two it went through. (The
   4x8 quantizer can flip the sign of a block's q and d together, which changes no product.)
   With fewer than 4 rows (decode steps) every row is a gemv: kq_fused decodes each block in
   place for it; otherwise kq_matmul, which unpacks each weight row once for all the tokens.
2. n_tok >= 8 (ggml_tiled_min_batch): the tiled K-quant matmul (tiled/), all five types
   (as shipped: the env switches GGML_CPU_TILED_MM=0 / GGML_CPU_TILED_MM_FORCE=1 are unset).
3. otherwise llamafile_sgemm declines K-quants, so x goes to Q8_K (quantize_row_q8_K) and
   each output is one ggml_vec_dot_qN_K_q8_K.

No path's bits depend on the thread count: threads split the Q8_K conversion by whole blocks
and the outputs by rows/columns (or 256-wide tiles), never one output's sum.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from qdbg.errors import QdbgError
from qdbg.numerics.kernels import kq_unpack as U
from qdbg.numerics.kernels.kq_fused import GEMV_Q4_K, VEC_DOT_Q5_K, VEC_DOT_Q6_K, fused_matmul
from qdbg.numerics.kernels.kq_matmul import REPACK, TILED, VEC_DOT, kq_matmul
from qdbg.numerics.kernels.q8k import quantize_q8_K_fast

_CODE = {QT.Q2_K: U.Q2_K, QT.Q3_K: U.Q3_K, QT.Q4_K: U.Q4_K, QT.Q5_K: U.Q5_K, QT.Q6_K: U.Q6_K}
TILED_MIN_BATCH = 8  # ggml_tiled_min_batch: rows >= 8
_FUSED = {QT.Q5_K, QT.Q6_K}  # vec_dot types with a fused kernel (kq_fused); Q4_K's is the repacked gemv


def kquant_path(qtype: QT, n_tok: int, repacked: bool) -> str:
    """Which kernel the reference build runs: 'repack', 'tiled' or 'vec_dot'."""
    if repacked:
        return "repack"
    return "tiled" if n_tok >= TILED_MIN_BATCH else "vec_dot"


def mul_mat_kquant(w_raw: np.ndarray, qtype: QT, n_in: int, x: np.ndarray,
                   repacked: bool) -> np.ndarray:
    """y = what ggml_compute_forward_mul_mat gives for src0 = weight (GGUF bytes, uint8
    [n_out, row_bytes]), src1 = x (float32 [n_tok, n_in], C-contiguous) -> float32 [n_tok, n_out]."""
    qtype = QT(qtype)
    code = _CODE.get(qtype)
    if code is None:
        raise QdbgError(f"mul_mat_kquant: {qtype.name} is not a K-quant type")
    if n_in % 256:
        raise QdbgError(f"mul_mat_kquant: row length {n_in} is not a multiple of 256 ({qtype.name})")
    w = np.ascontiguousarray(w_raw, dtype=np.uint8)
    row_bytes = n_in // 256 * U.BLOCK_BYTES[code]
    if w.ndim != 2 or w.shape[1] != row_bytes:
        raise QdbgError(f"mul_mat_kquant: {qtype.name} weight of shape {w.shape}, expected "
                        f"[n_out, {row_bytes}] for {n_in} inputs")
    if repacked and (qtype != QT.Q4_K or w.shape[0] % 8):
        raise QdbgError(f"mul_mat_kquant: this build never repacks {qtype.name} with "
                        f"{w.shape[0]} rows (only Q4_K with a multiple of 8 rows)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n_in:
        raise QdbgError(f"mul_mat_kquant: activation of shape {x.shape}, expected [n_tok, {n_in}]")
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    if out.size == 0:
        return out
    q, d, bsums = quantize_q8_K_fast(x)
    n_tok = x.shape[0]
    if (repacked and n_tok < 4) or (not repacked and n_tok < TILED_MIN_BATCH and qtype in _FUSED):
        # decode steps: every token through the gemv (repacked) or vec_dot, each block decoded in place
        kind = GEMV_Q4_K if repacked else VEC_DOT_Q5_K if qtype == QT.Q5_K else VEC_DOT_Q6_K
        fused_matmul(np.int64(kind), w, q, d, bsums, out)
        return out
    path = {"repack": REPACK, "tiled": TILED, "vec_dot": VEC_DOT}[kquant_path(qtype, x.shape[0], repacked)]
    kq_matmul(w, np.int64(code), np.int64(path), np.ascontiguousarray(q),
              np.ascontiguousarray(d), np.ascontiguousarray(bsums), out)
    return out
