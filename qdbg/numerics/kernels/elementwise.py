"""Exact non-matmul ops of ggml's CPU backend (llama-cpp-python 0.3.36, AVX2 + FMA build).

numpy layouts, float32 in and out; every row is computed as ggml computes one row (the SIMD loop
over 8-lane chunks, then the scalar tail), so results do not depend on how rows are split over
threads. Rope lives in ew_rope.py and is re-exported here.

- softmax_ext: ggml_compute_forward_soft_max_f32 (ops.cpp) + ggml_vec_soft_max_f32 (vec.cpp)
- swiglu / geglu: ggml_vec_swiglu_f32 (vec.cpp) / ggml_vec_geglu_f32 (vec.h, GGML_GELU_FP16 table)
- rms_norm: ggml_compute_forward_rms_norm_f32 (ops.cpp), optionally fused with the weight MUL
- softcap: llama.cpp's scale(1/cap) -> tanh -> scale(cap) (gemma2/3 final logits, attn softcap)
- scale, add, tanh: ggml_vec_scale_f32 / ggml_vec_mad1_f32, ADD, ggml_vec_tanh_f32
"""

from __future__ import annotations

import math

import numpy as np

from qdbg.errors import QdbgError
from qdbg.numerics.kernels.ew_rope import rope, rope_cache  # noqa: F401  (re-export)
from qdbg.numerics.kernels.nb import f16_bits_to_f32, f32_to_f16_bits, fma32, hsum8, jit
from qdbg.numerics.kernels.simd_math import expf, gelu_f32, powf, silu_f32, tanhf, v_expf, v_silu

F32 = np.float32
_NEG_INF = np.float32(-np.inf)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F32)


# ---------------------------------------------------------------- softmax

@jit
def _alibi_slopes(n_head, max_bias):
    """ALiBi slope per head (1.0 when max_bias == 0), float32 powf as ops.cpp computes it."""
    out = np.ones(n_head, np.float32)
    if not (max_bias > np.float32(0.0)):
        return out
    n_log2 = np.uint32(1) << np.uint32(math.floor(math.log2(float(n_head))))
    fl = np.float32(n_log2)
    m0 = powf(np.float32(2.0), -max_bias / fl)
    m1 = powf(np.float32(2.0), -(max_bias / np.float32(2.0)) / fl)
    for h in range(n_head):
        if h < n_log2:
            out[h] = powf(m0, np.float32(h + 1))
        else:
            out[h] = powf(m1, np.float32(2 * (h - n_log2) + 1))
    return out


@jit
def _softmax_rows(kq, mask, has_mask, scale, slopes, out):
    # kq, out: [H, N, K]; mask: [N, K] (row r of every head adds mask[r])
    n_head, n_rows, n = kq.shape
    wp = np.empty(n, np.float32)
    for h in range(n_head):
        slope = slopes[h]
        for r in range(n_rows):
            for i in range(n):                                   # ggml_vec_scale_f32
                wp[i] = kq[h, r, i] * scale
            if has_mask:
                for i in range(n):                               # wp += slope*mask (one FMA)
                    wp[i] = fma32(slope, mask[r, i], wp[i])
            mx = _NEG_INF
            for i in range(n):                                   # ggml_vec_max_f32: MAX(a, b)
                mx = mx if mx > wp[i] else wp[i]
            n8 = n - n % 8
            for i in range(n8):                                  # 8-lane chunks: ggml_v_expf
                out[h, r, i] = v_expf(wp[i] - mx)
            s = 0.0                                              # ggml_float
            for i in range(0, n8, 8):                            # each chunk hsum8'd in float
                s += np.float64(hsum8(out[h, r, i:i + 8]))
            for i in range(n8, n):                               # scalar tail: libm expf
                e = expf(wp[i] - mx)
                s += np.float64(e)
                out[h, r, i] = e
            inv = np.float32(1.0 / s)
            for i in range(n):
                out[h, r, i] = out[h, r, i] * inv


def softmax_ext(kq: np.ndarray, mask: np.ndarray | None, scale: float,
                max_bias: float = 0.0) -> np.ndarray:
    """ggml_soft_max_ext(kq, mask, scale, max_bias) over the last axis, bit-exact.

    kq: [H, N, n_kv] (or [N, n_kv]) float32, n_kv the padded KV view; mask: [N, n_kv] or None.
    llama.cpp without flash attention passes an F32 mask (0 / -inf, no row padding in this
    version); an F16 mask (flash attention's type) is accepted as float16 and widened exactly, as
    GGML_CPU_FP16_TO_FP32 does. Per row: w = kq*scale; w = fma(slope, mask, w); m = max(w);
    e = v_expf(w - m) per 8 lanes (each chunk hsum8'd in float, added in double), libm expf on the
    tail (added in double); out = e * (float)(1/sum).
    """
    x = _f32(kq)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    if x.ndim != 3:
        raise QdbgError(f"softmax_ext: kq must be [H, N, n_kv], got shape {kq.shape}")
    n_head, n_rows, n = x.shape
    if mask is None:
        m = np.zeros((0, 0), F32)
    else:
        m = np.asarray(mask)
        if m.dtype == np.float16:
            m = m.astype(F32)  # exact, as ggml's F16 -> F32
        m = _f32(m).reshape(-1, m.shape[-1])
        if m.shape[1] != n or m.shape[0] < n_rows:
            raise QdbgError(f"softmax_ext: mask {m.shape} does not cover kq rows {x.shape[1:]}")
    out = np.empty_like(x)
    slopes = _alibi_slopes(n_head, F32(max_bias))
    _softmax_rows(x, m, mask is not None, F32(scale), slopes, out)
    return out[0] if squeeze else out


# ---------------------------------------------------------------- GLU

@jit
def _swiglu_rows(gate, up, out):
    n_rows, n = gate.shape
    n8 = n - n % 8
    for r in range(n_rows):
        for i in range(n8):                                      # 8-lane chunks: ggml_v_silu * g
            out[r, i] = v_silu(gate[r, i]) * up[r, i]
        for i in range(n8, n):                                   # tail: ggml_silu_f32(x) * g
            out[r, i] = silu_f32(gate[r, i]) * up[r, i]


@jit
def _gelu_table_build():
    t = np.empty(1 << 16, np.uint16)
    for i in range(1 << 16):
        h = np.uint16(i)
        if (h & np.uint16(0x7C00)) == np.uint16(0x7C00) and (h & np.uint16(0x03FF)) != 0:
            t[i] = (h & np.uint16(0x8000)) | np.uint16(0x7E00)  # NaN in: ggml stores +-qNaN
        else:
            t[i] = f32_to_f16_bits(gelu_f32(f16_bits_to_f32(h)))
    return t


_GELU_TABLE: np.ndarray | None = None


def gelu_table() -> np.ndarray:
    """ggml_table_gelu_f16 (ggml_cpu_init): half bits of ggml_gelu_f32 of every half value
    (identical to the wheel's table in all 65536 entries; NaN inputs give the canonical NaN)."""
    global _GELU_TABLE
    if _GELU_TABLE is None:
        _GELU_TABLE = _gelu_table_build()
    return _GELU_TABLE


@jit
def _geglu_rows(gate, up, table, out):
    n_rows, n = gate.shape
    for r in range(n_rows):
        for i in range(n):
            x = gate[r, i]
            if x <= np.float32(-10.0):
                out[r, i] = np.float32(0.0)
            elif x >= np.float32(10.0):
                out[r, i] = x * up[r, i]
            else:
                out[r, i] = f16_bits_to_f32(table[f32_to_f16_bits(x)]) * up[r, i]


def _glu_args(gate: np.ndarray, up: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    g, u = _f32(gate), _f32(up)
    if g.shape != u.shape or g.ndim == 0:
        raise QdbgError(f"{name}: gate {g.shape} and up {u.shape} must have one shape")
    return g.reshape(-1, g.shape[-1]), u.reshape(-1, u.shape[-1])


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_swiglu_split(gate, up): silu(gate) * up per row of the last axis, bit-exact.

    8-lane chunks: x / (1 + v_expf(0 - x)) * g; tail: x / (1 + expf(-x)) * g (libm expf).
    """
    g, u = _glu_args(gate, up, "swiglu")
    out = np.empty_like(g)
    _swiglu_rows(g, u, out)
    return out.reshape(np.shape(gate))


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_geglu_split(gate, up), GGML_GELU_FP16 path (the one this build runs), bit-exact.

    x <= -10: 0; x >= 10: x*g; else half(table[half(x)]) * g, the table from gelu_f32.
    """
    g, u = _glu_args(gate, up, "geglu")
    out = np.empty_like(g)
    _geglu_rows(g, u, gelu_table(), out)
    return out.reshape(np.shape(gate))


# ---------------------------------------------------------------- norms and simple ops

@jit
def _rms_norm_rows(x, w, has_w, eps, out):
    n_rows, n = x.shape
    for r in range(n_rows):
        s = 0.0                                                  # ggml_float, in order
        for i in range(n):
            s += np.float64(x[r, i] * x[r, i])
        mean = np.float32(s / n)
        sc = np.float32(1.0) / np.float32(math.sqrt(mean + eps))
        if has_w:
            for i in range(n):
                out[r, i] = (x[r, i] * sc) * w[i]
        else:
            for i in range(n):
                out[r, i] = x[r, i] * sc


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """ggml_rms_norm over the last axis, then (if w is given) ggml_mul by the weight, bit-exact.

    sum = Σ (double)(x*x) in order; mean = (float)(sum/n); scale = 1.0f/sqrtf(mean + eps);
    y = (x*scale)*w (the same whether llama.cpp runs RMS_NORM + MUL or the fused kernel).
    """
    a = _f32(x)
    rows = a.reshape(-1, a.shape[-1])
    has_w = w is not None
    wv = _f32(w).reshape(-1) if has_w else np.zeros(0, F32)
    if has_w and wv.shape[0] != rows.shape[1]:
        raise QdbgError(f"rms_norm: weight of {wv.shape[0]} for rows of {rows.shape[1]}")
    out = np.empty_like(rows)
    _rms_norm_rows(rows, wv, has_w, F32(eps), out)
    return out.reshape(a.shape)


@jit
def _tanh_flat(x, out):
    for i in range(x.shape[0]):
        out[i] = tanhf(x[i])


def tanh(x: np.ndarray) -> np.ndarray:
    """ggml_tanh: libm tanhf per element."""
    a = _f32(x)
    out = np.empty_like(a)
    _tanh_flat(a.reshape(-1), out.reshape(-1))
    return out


def scale(x: np.ndarray, s: float, b: float = 0.0) -> np.ndarray:
    """ggml_scale / ggml_scale_bias: x*s (b == 0) or fma(x, s, b), float32."""
    a = _f32(x)
    if b == 0.0:
        return a * F32(s)
    return _fma_scale(a.reshape(-1), F32(s), F32(b)).reshape(a.shape)


@jit
def _fma_scale(x, s, b):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = fma32(x[i], s, b)
    return out


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ggml_add (b broadcast over a's leading axes), float32."""
    return np.add(_f32(a), _f32(b), dtype=F32)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """Soft-capping as llama.cpp builds it: scale(x, 1.0f/cap) -> tanh -> scale(cap)."""
    c = F32(cap)
    return tanh(_f32(x) * (F32(1.0) / c)) * c


def expf_np(x: np.ndarray) -> np.ndarray:
    """libm expf per element (numpy's float32 exp rounds differently)."""
    a = _f32(x)
    out = np.empty_like(a)
    _expf_flat(a.reshape(-1), out.reshape(-1))
    return out


@jit
def _expf_flat(x, out):
    for i in range(x.shape[0]):
        out[i] = expf(x[i])
