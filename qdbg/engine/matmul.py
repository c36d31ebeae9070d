"""Matrix products in the two numeric modes.

ggml mode does what llama.cpp's CPU backend does in ggml_compute_forward_mul_mat: the f32
activation is first converted to the weight type's vec_dot_type (Q8_K for K-quants, Q8_0 or Q8_1
for the legacy types, F16 for F16 weights), then dotted with the weight. The integer dot product
equals the float64 dot of the two dequantized operands up to rounding of the final sum, so we
compute that, in float64, and round once to float32. Q4_1/Q5_1 against Q8_1 also add
m_w * s_x per block, where s_x is d_x*sum(q_x) rounded to half: we apply the difference between
that rounded s_x and the exact sum as a correction.

f32 mode dots the dequantized weight with the f32 activation, in float64.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from qdbg.engine.ops import to_f16
from qdbg.engine.weights import Weight


def _vec_dot_type(qtype: QT) -> QT:
    from qdbg.quant.activations import VEC_DOT_TYPE

    return VEC_DOT_TYPE.get(qtype, QT.F32)


def quantize_activation(x: np.ndarray, qtype: QT) -> np.ndarray:
    """The values a ggml matmul against a `qtype` weight actually sees for activation x (rows)."""
    vdt = _vec_dot_type(qtype)
    if vdt == QT.F32:
        return x
    if vdt == QT.F16:
        return to_f16(x)
    if vdt == QT.BF16:
        u = x.astype(np.float32).view(np.uint32)
        # round-to-nearest-even to the top 16 bits (ggml_compute_fp32_to_bf16); NaN kept quiet
        r = ((u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000).astype(np.uint32)
        r = np.where((u & 0x7FFFFFFF) > 0x7F800000, (u | 0x00400000) & 0xFFFF0000, r).astype(np.uint32)
        return r.view(np.float32)
    from qdbg.quant.activations import round_trip

    return round_trip(np.ascontiguousarray(x, dtype=np.float32), vdt)


def matmul(x: np.ndarray, w: Weight, mode: str) -> np.ndarray:
    """y = x @ W^T: [n_tok, n_in] x [n_out, n_in] -> [n_tok, n_out] float32."""
    w64 = w.values if w.values.dtype == np.float64 else w.values.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan propagate as in ggml
        if mode == "f32":
            return (x.astype(np.float64) @ w64.T).astype(np.float32)
        xq = quantize_activation(x, w.qtype)
        y = xq.astype(np.float64) @ w64.T
    if w.qtype in (QT.Q4_1, QT.Q5_1):
        from qdbg.quant.activations import q8_1_sums

        s = q8_1_sums(np.ascontiguousarray(x, dtype=np.float32)).astype(np.float64)  # [n_tok, n_in/32]
        exact = xq.astype(np.float64).reshape(x.shape[0], -1, 32).sum(axis=-1)
        y += (s - exact) @ w.block_mins().astype(np.float64).T
    return y.astype(np.float32)


def attn_scores(q: np.ndarray, k: np.ndarray, mode: str) -> np.ndarray:
    """kq = K·Q per head, with grouped-query heads sharing K. llama.cpp's K cache is F16, so
    mul_mat(k, q) converts Q to F16 too.

    q: [n_tok, n_head, hd], k: [n_kv, n_head_kv, hd] -> [n_head, n_tok, n_kv]
    """
    if mode == "ggml":
        q = to_f16(q)
    n_head, n_head_kv = q.shape[1], k.shape[1]
    g = n_head // n_head_kv
    qh = q.transpose(1, 0, 2).astype(np.float64)                 # [n_head, n_tok, hd]
    kh = np.repeat(k.transpose(1, 0, 2), g, axis=0).astype(np.float64)  # [n_head, n_kv, hd]
    return (qh @ kh.transpose(0, 2, 1)).astype(np.float32)


def attn_values(p: np.ndarray, v: np.ndarray, mode: str) -> np.ndarray:
    """kqv = V·softmax per head; the V cache is F16 so the probabilities are converted to F16.

    p: [n_head, n_tok, n_kv], v: [n_kv, n_head_kv, hd] -> [n_tok, n_head * hd]
    """
    if mode == "ggml":
        p = to_f16(p)
    n_head, n_head_kv = p.shape[0], v.shape[1]
    g = n_head // n_head_kv
    vh = np.repeat(v.transpose(1, 0, 2), g, axis=0).astype(np.float64)  # [n_head, n_kv, hd]
    o = p.astype(np.float64) @ vh                                       # [n_head, n_tok, hd]
    return o.transpose(1, 0, 2).reshape(p.shape[1], -1).astype(np.float32)
