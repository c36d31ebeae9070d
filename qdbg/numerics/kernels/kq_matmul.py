"""The three K-quant x Q8_K matmul kernels of the AVX2 build, in their exact float order.

All three take a weight row unpacked by kq_unpack (integer weights w = scale*code) and the
activation as Q8_K (q int8 [n_tok, n_in], d float32 [n_tok, nb], bsums int16 [n_tok, nb*16]).
Integer sums are exact; only the float steps per 256-element block differ:

vec_dot  ggml_vec_dot_qN_K_q8_K (arch/x86/quants.c, __AVX2__), used for n_tok < 8.
         Integer lane k (of 8) holds the elements with (e % 32) // 4 == k. Per block
         dd = yd*xd, dmn = -yd*xdmin (f32 products), then per lane
           Q2_K  acc = fma(dmn, f(mn[2k]*bs[2k] + mn[2k+1]*bs[2k+1]), acc); acc = fma(dd, f(L), acc)
           Q3_K  acc = fma(dd, f(L), acc)
           Q4_K  accm[k<4] = fma(dmn, f(mn[2k]*S[2k] + mn[2k+1]*S[2k+1]), accm)  (S = per-32 bsums)
                 acc = fma(dd, f(L), acc)
           Q5_K  summs = fma(dmn, f(sum mn*S), summs) (scalar); acc = fma(dd, f(L), acc)
           Q6_K  acc = fma(dd, f(L - 32*(sc[2k]*bs[2k] + sc[2k+1]*bs[2k+1])), acc)
         result hsum8(acc) (+ ((m0+m2)+(m1+m3)) for Q4_K, + summs for Q5_K).
tiled    ggml_compute_forward_mul_mat_tiled (tiled/tiled-kernel.cpp, AVX2 microtile), n_tok >= 8.
         Per output and block: r = xd*f(s1); r = fma(-xdmin, f(s2), r) (types with mins);
         y = fma(r, yd, y), y starting at 0; s1 = sum w*q (Q6_K: minus 32*sum sc*bs), s2 = sum mn*bs.
repack   ggml_gemv/gemm_q4_K_8x8_q8_K (arch/x86/repack.cpp), Q4_K in CPU_REPACK:
         acc = fma(f(s1), f32(xd*yd), acc); accm = fma(f(s2), f32(xdmin*yd), accm); y = acc - accm,
         where gemv (the n_tok % 4 last rows) takes s1, s2 per 256-element block and gemm (groups
         of 4 rows) per 64 elements (two sub-blocks), four FMAs per block.
"""

from __future__ import annotations

import numpy as np

from qdbg.numerics.kernels.kq_unpack import Q2_K, Q4_K, Q5_K, Q6_K, unpack_row
from qdbg.numerics.kernels.nb import fma32, hsum8, jit

VEC_DOT, TILED, REPACK = 0, 1, 2
F32 = np.float32


@jit(inline="always")
def _lanes32(w, q, o, p):
    """p[0:32] = sum over the 8 groups of 32 of w*q, position-wise (exact int32)."""
    for i in range(32):
        p[i] = 0
    for g in range(8):
        for i in range(32):
            p[i] += np.int32(w[o + 32 * g + i]) * np.int32(q[o + 32 * g + i])


@jit(inline="always")
def _lanes64(w, q, o, p):
    """p[0:256] = w*q elementwise over one block (exact int32)."""
    for i in range(256):
        p[i] = np.int32(w[o + i]) * np.int32(q[o + i])


@jit(inline="always")
def _vec_dot(qt, w, sc, mn, xd, xdm, q, yd, bs, nb, p, acc, accm):
    for k in range(8):
        acc[k] = F32(0.0)
        accm[k] = F32(0.0)
    summs = F32(0.0)
    for b in range(nb):
        o = b * 256
        _lanes32(w, q, o, p)
        dd = yd[b] * xd[b]
        dmn = -yd[b] * xdm[b]
        bo = b * 16
        if qt == Q2_K:
            for k in range(8):
                pr = mn[b, 2 * k] * np.int32(bs[bo + 2 * k]) + mn[b, 2 * k + 1] * np.int32(bs[bo + 2 * k + 1])
                acc[k] = fma32(dmn, F32(pr), acc[k])
        elif qt == Q4_K or qt == Q5_K:
            tot = np.int32(0)
            for k in range(4):
                s0 = np.int32(bs[bo + 4 * k]) + np.int32(bs[bo + 4 * k + 1])
                s1 = np.int32(bs[bo + 4 * k + 2]) + np.int32(bs[bo + 4 * k + 3])
                pr = mn[b, 2 * k] * s0 + mn[b, 2 * k + 1] * s1
                accm[k] = fma32(dmn, F32(pr), accm[k])
                tot += pr
            if qt == Q5_K:
                summs = fma32(dmn, F32(tot), summs)
        for k in range(8):
            lk = p[4 * k] + p[4 * k + 1] + p[4 * k + 2] + p[4 * k + 3]
            if qt == Q6_K:
                lk -= 32 * (sc[b, 2 * k] * np.int32(bs[bo + 2 * k]) + sc[b, 2 * k + 1] * np.int32(bs[bo + 2 * k + 1]))
            acc[k] = fma32(dd, F32(lk), acc[k])
    r = hsum8(acc)
    if qt == Q4_K:
        r = r + ((accm[0] + accm[2]) + (accm[1] + accm[3]))
    elif qt == Q5_K:
        r = r + summs
    return r


@jit(inline="always")
def _block_sums(qt, w, sc, mn, q, bs, b, p):
    """(s1, s2) of one block: sum of w*q (Q6_K: with its -32 folded in) and sum of mins*bsums."""
    _lanes32(w, q, b * 256, p)
    s1 = np.int32(0)
    for i in range(32):
        s1 += p[i]
    s2 = np.int32(0)
    bo = b * 16
    for s in range(16):
        if qt == Q6_K:
            s1 -= 32 * sc[b, s] * np.int32(bs[bo + s])
        elif qt == Q2_K:
            s2 += mn[b, s] * np.int32(bs[bo + s])
        elif (qt == Q4_K or qt == Q5_K) and s < 8:
            s2 += mn[b, s] * (np.int32(bs[bo + 2 * s]) + np.int32(bs[bo + 2 * s + 1]))
    return s1, s2


@jit(inline="always")
def _repack(w, mn, xd, xdm, q, yd, bs, nb, p, gemm):
    """Q4_K 8x8 repack: gemm adds to the float accumulators per 64 elements, gemv per block."""
    a = F32(0.0)
    am = F32(0.0)
    for b in range(nb):
        _lanes64(w, q, b * 256, p)
        dd = xd[b] * yd[b]
        dm = xdm[b] * yd[b]
        s1 = np.int32(0)
        s2 = np.int32(0)
        for j in range(4):                  # two 32-element sub-blocks per step
            i1 = np.int32(0)
            for i in range(64):
                i1 += p[64 * j + i]
            bo = b * 16 + 4 * j
            i2 = (mn[b, 2 * j] * (np.int32(bs[bo]) + np.int32(bs[bo + 1]))
                  + mn[b, 2 * j + 1] * (np.int32(bs[bo + 2]) + np.int32(bs[bo + 3])))
            if gemm:
                a = fma32(F32(i1), dd, a)
                am = fma32(F32(i2), dm, am)
            else:
                s1 += i1
                s2 += i2
        if not gemm:
            a = fma32(F32(s1), dd, a)
            am = fma32(F32(s2), dm, am)
    return a - am


@jit
def kq_matmul(w_raw, qt, path, q, yd, bs, out):
    """out [n_tok, n_out] = W (GGUF rows, type code qt) x Q8_K activations, by `path`."""
    n_out = w_raw.shape[0]
    n_tok, n_in = q.shape
    nb = n_in // 256
    w = np.empty(n_in, np.int16)
    sc = np.empty((nb, 16), np.int32)
    mn = np.empty((nb, 16), np.int32)
    xd = np.empty(nb, F32)
    xdm = np.empty(nb, F32)
    p = np.empty(256, np.int32)
    acc = np.empty(8, F32)
    accm = np.empty(8, F32)
    rb = np.empty(w_raw.shape[1], np.int32)
    has_min = qt == Q2_K or qt == Q4_K or qt == Q5_K
    n_gemm = n_tok - n_tok % 4
    for r in range(n_out):
        for i in range(rb.shape[0]):
            rb[i] = w_raw[r, i]
        unpack_row(rb, qt, nb, w, sc, mn, xd, xdm)
        for t in range(n_tok):
            if path == VEC_DOT:
                out[t, r] = _vec_dot(qt, w, sc, mn, xd, xdm, q[t], yd[t], bs[t], nb, p, acc, accm)
            elif path == TILED:
                y = F32(0.0)
                for b in range(nb):
                    s1, s2 = _block_sums(qt, w, sc, mn, q[t], bs[t], b, p)
                    v = xd[b] * F32(s1)
                    if has_min:
                        v = fma32(-xdm[b], F32(s2), v)
                    y = fma32(v, yd[t, b], y)
                out[t, r] = y
            else:
                out[t, r] = _repack(w, mn, xd, xdm, q[t], yd[t], bs[t], nb, p, t < n_gemm)
