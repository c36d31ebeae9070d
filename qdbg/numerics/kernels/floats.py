"""Exact MUL_MAT with float operands: F32 / F16 / BF16 weights, and the attention products.

What ggml_compute_forward_mul_mat (ggml-cpu.c) runs on this build (AVX2+FMA+F16C, llamafile on):
  1. llamafile_sgemm(A=src0, B=src1 as is) if src1 is contiguous: only F32 x F32 can pass on
     AVX2 (F16/BF16 tinyBLAS want B of the same type), so this serves F32 weights.
  2. src1 -> vec_dot_type (F32 stays; F16: vcvtps2ph round-to-nearest-even; BF16: ggml's
     (u + 0x7fff + lsb) >> 16 with quiet NaN), then llamafile_sgemm again (F16xF16, BF16xBF16).
  3. else the vec_dot loop: one ggml_vec_dot_{f32,f16,bf16} per output element (nrows = 1).
     As compiled (objdump of libggml-cpu.so): all three run 4 x __m256 FMA accumulators over
     32-wide steps (bf16's mul+add is contracted to FMA too); f32/f16 reduce (s0+s2)+(s1+s3)
     then lo+hi and two hadds, bf16 (c1+c3)+(c2+c4) then hsum8's order; tails: f16/bf16 add
     float products in double, f32 in float with GCC's vectorized tail (mul, then add, for
     groups of 8 and 4) and FMAs for the last k % 4.
tinyBLAS refuses (-> vec_dot) when n = n_tok < 2, k % 8 != 0, or m = n_out % 4 != 0.
Its per-element order does not depend on the RM x RN tiling or on the thread count: every
C element is one __m256 accumulator, one FMA per lane per 8-wide k step, then hsum
((v4+v0)+(v6+v2))+((v5+v1)+(v7+v3)). The vec_dot paths are per element too, and the src1
conversion is element-wise, so no bit depends on the number of threads.

Attention (flash attention off, llama-graph.cpp build_attn_mha; llama-kv-cache.cpp get_k/get_v):
  kq  = mul_mat(K view [hd, n_kv, n_head_kv] f16, permuted Q [hd, n_tok, n_head] f32)
  kqv = mul_mat(transposed V view [n_kv, hd, n_head_kv] f16, kq_soft_max [n_kv, n_tok, n_head])
Both take path 2 (F16 A never meets an F32 B in tinyBLAS on AVX2), whether or not src1 is
contiguous; head h of src1 uses src0 head h // (n_head / n_head_kv) (ggml's r2 broadcast).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from qdbg.errors import QdbgError, UnsupportedError
from qdbg.numerics.kernels.fl_simd import (dot_lanes_8_1x1, dot_lanes_8_4x1, dot_lanes_8_4x3,
                                           dot_lanes_32_1x1, dot_lanes_32_1x4)
from qdbg.numerics.kernels.nb import f16_bits_to_f32, f32_to_f16_bits, fma32, hsum8, jit

# which loop computes each element
_TINYBLAS, _VD_F32, _VD_F16, _VD_BF16 = 0, 1, 2, 3
# how a weight row's uint16 words decode to float32
_W_F32, _W_F16, _W_BF16 = 0, 1, 2


@jit(inline="always")
def _hsum_hadd(v):
    """GGML_F32x8_REDUCE's lane sum: lo+hi, then two _mm_hadd_ps:
    ((v0+v4)+(v1+v5))+((v2+v6)+(v3+v7))."""
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))


@jit(inline="always")
def _fold4(v, o):
    """GGML_F32_ARR = 4 accumulators at v[o + 8j + l] -> (acc0 + acc2) + (acc1 + acc3), 8 lanes."""
    return ((v[o] + v[o + 16]) + (v[o + 8] + v[o + 24]), (v[o + 1] + v[o + 17]) + (v[o + 9] + v[o + 25]),
            (v[o + 2] + v[o + 18]) + (v[o + 10] + v[o + 26]), (v[o + 3] + v[o + 19]) + (v[o + 11] + v[o + 27]),
            (v[o + 4] + v[o + 20]) + (v[o + 12] + v[o + 28]), (v[o + 5] + v[o + 21]) + (v[o + 13] + v[o + 29]),
            (v[o + 6] + v[o + 22]) + (v[o + 14] + v[o + 30]), (v[o + 7] + v[o + 23]) + (v[o + 15] + v[o + 31]))


@jit
def vec_dot_f16(n, x_bits, x_off, y_bits, y_off):
    """ggml_vec_dot_f16 on AVX2+F16C: 4 x 8-lane FMA accumulators over 32-wide steps,
    GGML_F32x8_REDUCE, then the scalar tail summed in double; returns float32."""
    np_ = n & ~31
    acc = np.zeros(32, np.float32)  # sum[j] lane l at 8j + l
    for i in range(0, np_, 32):
        for p in range(32):
            acc[p] = fma32(f16_bits_to_f32(x_bits[x_off + i + p]),
                           f16_bits_to_f32(y_bits[y_off + i + p]), acc[p])
    sumf = np.float64(_hsum_hadd(_fold4(acc, 0)))
    for i in range(np_, n):
        sumf += np.float64(f16_bits_to_f32(x_bits[x_off + i]) * f16_bits_to_f32(y_bits[y_off + i]))
    return np.float32(sumf)


@jit(inline="always")
def _finish(lv, o, row, b, t, k, kmain, path):
    """One element from its lanes lv[o:o+8] (tinyBLAS) or lv[o:o+32] (vec_dot: accumulator j,
    lane l at o + 8j + l): the reduction of `path`, then vec_dot's scalar tail over kmain..k."""
    if path == _TINYBLAS:
        return hsum8(lv[o:o + 8])
    v = _fold4(lv, o)
    if path == _VD_F32:
        # float sumf; GCC vectorized the tail in 8s and 4s as mul-then-add, the last k % 4 are FMAs
        sumf = _hsum_hadd(v)
        n4 = kmain + ((k - kmain) & ~3)
        for p in range(kmain, n4):
            sumf = sumf + row[p] * b[t, p]
        for p in range(n4, k):
            sumf = fma32(row[p], b[t, p], sumf)
        return sumf
    # f16: the same hadd reduce; bf16: (c1+c3)+(c2+c4) then movehl/movehdup = hsum8's order
    sumd = np.float64(_hsum_hadd(v) if path == _VD_F16 else hsum8(v))
    for p in range(kmain, k):  # scalar tail in double; the float products are exact
        sumd += np.float64(row[p] * b[t, p])
    return np.float32(sumd)


@jit
def _decode_row(w, i, kind, row, row_u):
    """Weight row i (uint16 words) -> float32 row (row_u is the same memory as uint32)."""
    k = row.shape[0]
    if kind == _W_F32:
        for j in range(k):
            row_u[j] = np.uint32(w[i, 2 * j]) | (np.uint32(w[i, 2 * j + 1]) << np.uint32(16))
    elif kind == _W_F16:
        for j in range(k):
            row[j] = f16_bits_to_f32(w[i, j])
    else:
        for j in range(k):
            row_u[j] = np.uint32(w[i, j]) << np.uint32(16)


@jit
def _mm(w, kind, b, path, out):
    """out[t, i] = row i of w . b[t] in the order of `path`; b float32 [n, k] C-contiguous.
    Lanes: 8 per tinyBLAS element, 32 (= 4 accumulators x 8) per vec_dot element up to k & ~31.
    Weight rows are decoded once; tinyBLAS runs 4-row x 3-token tiles (m % 4 == 0 there)."""
    m = w.shape[0]
    n, k = b.shape
    tb = path == _TINYBLAS
    width = 8 if tb else 32
    kmain = k if tb else k & ~31
    steps = kmain // width
    nr = 4 if tb and m % 4 == 0 else 1
    rows_u = np.empty(nr * k, np.uint32)
    rows = rows_u.view(np.float32)
    bf = b.reshape(-1)
    lv = np.empty(12 * width, np.float32)
    for i0 in range(0, m, nr):
        for r in range(nr):
            _decode_row(w, i0 + r, kind, rows[r * k:(r + 1) * k], rows_u[r * k:(r + 1) * k])
        t = 0
        while t < n:
            if tb:
                nt = 3 if n - t >= 3 and nr == 4 else 1
                if nr == 1:
                    dot_lanes_8_1x1(rows, 0, k, bf, t * k, k, steps, lv, 0)
                elif nt == 3:
                    dot_lanes_8_4x3(rows, 0, k, bf, t * k, k, steps, lv, 0)
                else:
                    dot_lanes_8_4x1(rows, 0, k, bf, t * k, k, steps, lv, 0)
            else:
                nt = 4 if n - t >= 4 else 1
                if nt == 4:
                    dot_lanes_32_1x4(rows, 0, k, bf, t * k, k, steps, lv, 0)
                else:
                    dot_lanes_32_1x1(rows, 0, k, bf, t * k, k, steps, lv, 0)
            for r in range(nr):
                row = rows[r * k:(r + 1) * k]
                for j in range(nt):
                    out[t + j, i0 + r] = _finish(lv, (r * nt + j) * width, row, b, t + j, k, kmain, path)
            t += nt


@jit
def _mm_heads(a, b, out, path):
    """Per K/V head g: out[g] = a[g] x b[g], where b[g] / out[g] stack the tokens of the query
    heads that share it (ggml's r2 broadcast), so each cache row is decoded once per group."""
    for g in range(a.shape[0]):
        _mm(a[g], _W_F16, b[g], path, out[g])


@jit
def _round_f16(x):
    """float32 array -> F16 round-to-nearest-even -> float32 (the src1 -> vec_dot_type step)."""
    y = np.empty_like(x)
    xf, yf = x.reshape(-1), y.reshape(-1)
    for i in range(xf.size):
        yf[i] = f16_bits_to_f32(f32_to_f16_bits(xf[i]))
    return y


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16 and back to float32 (round half to even, NaN forced quiet)."""
    u = x.view(np.uint32).astype(np.uint64)
    h = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    h = np.where(nan, (u >> 16) | 64, h).astype(np.uint32)
    return (h << 16).view(np.float32)


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous view: GGUF memmaps and in-memory arrays share one specialization."""
    v = np.ascontiguousarray(a).view()
    v.flags.writeable = False
    return v


def _tinyblas_takes(m: int, n: int, k: int) -> bool:
    """llamafile_sgemm + tinyBLAS::matmul accept (AVX2, 16 vector registers)."""
    return n >= 2 and k % 8 == 0 and m % 4 == 0


_KIND = {GGMLQuantizationType.F32: (_W_F32, _VD_F32), GGMLQuantizationType.F16: (_W_F16, _VD_F16),
         GGMLQuantizationType.BF16: (_W_BF16, _VD_BF16)}


def mul_mat_float(w: np.ndarray, qtype: GGMLQuantizationType, x: np.ndarray) -> np.ndarray:
    """ggml_compute_forward_mul_mat for a weight src0 of type F32 (w float32 [n_out, n_in]), F16
    (w uint16 half bits, or float16, [n_out, n_in]) or BF16 (w uint16 bf16 bits), src1 = x
    float32 [n_tok, n_in] C-contiguous -> float32 [n_tok, n_out]."""
    if qtype not in _KIND:
        raise UnsupportedError(f"mul_mat_float: weight type {GGMLQuantizationType(qtype).name}")
    kind, vd = _KIND[qtype]
    if kind == _W_F16 and w.dtype == np.float16:
        w = w.view(np.uint16)
    want = np.float32 if kind == _W_F32 else np.uint16
    if w.dtype != want or w.ndim != 2 or x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise QdbgError(f"mul_mat_float: w {w.dtype}{list(w.shape)} ({qtype.name}) "
                         f"and x {x.dtype}{list(x.shape)} do not match")
    n_out, n_in = w.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    w16 = _readonly(np.ascontiguousarray(w).view(np.uint16))  # F32 rows: pairs of LE words
    if kind == _W_F16:
        x = _round_f16(x)
    elif kind == _W_BF16:
        x = _round_bf16(x)
    path = _TINYBLAS if _tinyblas_takes(n_out, x.shape[0], n_in) else vd
    out = np.empty((x.shape[0], n_out), np.float32)
    _mm(w16, kind, x, path, out)
    return out


def mul_mat_f16_heads(a: np.ndarray, b: np.ndarray, b_contiguous: bool) -> np.ndarray:
    """The attention products. a: uint16 half bits [H_a, M, K] (K cache view: M = n_kv cells,
    K = head_dim; or the transposed V cache view: M = head_dim, K = n_kv), b: float32
    [H_b, N, K] (N = tokens), H_b a multiple of H_a (head h uses a[h // (H_b // H_a)]) ->
    float32 [H_b, N, M], exactly as ggml_compute_forward_mul_mat for kq = mul_mat(k, q)
    (b_contiguous=False) and kqv = mul_mat(v, kq_soft_max) (b_contiguous=True).

    b_contiguous changes nothing on this build: tinyBLAS has no F16 x F32 kernel on AVX2, so
    both products convert b to F16 first and then use tinyBLAS (N >= 2) or ggml_vec_dot_f16."""
    if a.dtype == np.float16:
        a = a.view(np.uint16)
    if a.dtype != np.uint16 or a.ndim != 3 or b.ndim != 3 or b.shape[2] != a.shape[2] \
            or b.shape[0] % a.shape[0]:
        raise QdbgError(f"mul_mat_f16_heads: a {a.dtype}{list(a.shape)} and b "
                         f"{b.dtype}{list(b.shape)} do not match")
    h_a, m, k = a.shape
    h_b, n, _ = b.shape
    # path by the per-head token count; query heads g*r .. g*r+r-1 use K/V head g
    path = _TINYBLAS if _tinyblas_takes(m, n, k) else _VD_F16
    bh = _round_f16(np.ascontiguousarray(b, dtype=np.float32)).reshape(h_a, h_b // h_a * n, k)
    out = np.empty((h_a, h_b // h_a * n, m), np.float32)
    _mm_heads(_readonly(a), bh, out, path)
    return out.reshape(h_b, n, m)
