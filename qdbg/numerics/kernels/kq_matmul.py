"""The three K-quant x Q8_K matmul kernels of the AVX2 build, in their exact float order.

All three take a weight row unpacked by kq_unpack, turned into w16 = scale * code per element
(int16, exact; the C kernels apply the scale to int16 pair sums, same integers), and the
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

from qdbg.numerics.kernels.kq_unpack import (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, stage_row, unpack_codes,
                                              unpack_scales)
from qdbg.numerics.kernels.kq_simd import kq_sums_4_1, kq_sums_4_4
from qdbg.numerics.kernels.nb import fma32, hsum8, jit

VEC_DOT, TILED, REPACK = 0, 1, 2
F32 = np.float32
_REP4 = np.uint64(0x0001000100010001)


@jit(inline="always")
def _i32(v):
    """Wrap to int32 (keeps LLVM in 32-bit lanes; the values never overflow)."""
    return np.int32(v)


@jit(inline="always")
def _dot(w16, q, o, n):
    """sum(w16[o:o+n] * q[o:o+n]) in int32 (w16 = scale * code)."""
    wb = w16[o:o + n]
    qb = q[o:o + n]
    t = np.int32(0)
    for i in range(n):
        t = _i32(t + _i32(np.int32(wb[i]) * np.int32(qb[i])))
    return t


@jit
def _vec_dot(qt, sc, mn, xd, xdm, yd, bs, nb, c, acc, accm):
    """c: the token's sums of 4 (kq_simd, G = 4), c[b*64 + j] over elements 4j..4j+3 of block b."""
    for k in range(8):
        acc[k] = F32(0.0)
        accm[k] = F32(0.0)
    summs = F32(0.0)
    for b in range(nb):
        dd = yd[b] * xd[b]
        dmn = -yd[b] * xdm[b]
        bo = b * 16
        if qt == Q2_K:
            for k in range(8):
                pr = mn[b, 2 * k] * np.int32(bs[bo + 2 * k]) + mn[b, 2 * k + 1] * np.int32(bs[bo + 2 * k + 1])
                acc[k] = fma32(dmn, F32(pr), acc[k])
        elif qt == Q4_K or qt == Q5_K:
            tot = 0
            for k in range(4):
                s0 = np.int32(bs[bo + 4 * k]) + np.int32(bs[bo + 4 * k + 1])
                s1 = np.int32(bs[bo + 4 * k + 2]) + np.int32(bs[bo + 4 * k + 3])
                pr = mn[b, 2 * k] * s0 + mn[b, 2 * k + 1] * s1
                accm[k] = fma32(dmn, F32(pr), accm[k])
                tot += pr
            if qt == Q5_K:
                summs = fma32(dmn, F32(tot), summs)
        for k in range(8):
            lk = np.int32(0)
            for g in range(8):
                lk = _i32(lk + c[b * 64 + 8 * g + k])
            if qt == Q6_K:
                lk = lk - 32 * (sc[b, 2 * k] * np.int32(bs[bo + 2 * k]) + sc[b, 2 * k + 1] * np.int32(bs[bo + 2 * k + 1]))
            acc[k] = fma32(dd, F32(lk), acc[k])
    r = hsum8(acc)
    if qt == Q4_K:
        r = r + ((accm[0] + accm[2]) + (accm[1] + accm[3]))
    elif qt == Q5_K:
        r = r + summs
    return r


@jit(inline="always")
def _min_sum(qt, sc, mn, bs, b):
    """Per block: sum of mins*bsums (Q2_K per 16, Q4_K/Q5_K per 32), or Q6_K's 32*sum sc*bsums."""
    bo = b * 16
    s2 = 0
    if qt == Q6_K:
        for s in range(16):
            s2 += 32 * sc[b, s] * np.int32(bs[bo + s])
    elif qt == Q2_K:
        for s in range(16):
            s2 += mn[b, s] * np.int32(bs[bo + s])
    elif qt == Q4_K or qt == Q5_K:
        for s in range(8):
            s2 += mn[b, s] * (np.int32(bs[bo + 2 * s]) + np.int32(bs[bo + 2 * s + 1]))
    return s2


@jit
def _tiled(qt, w16, sc, mn, xd, xdm, q, yd, bs, nb):
    y = F32(0.0)
    for b in range(nb):
        s1 = _dot(w16, q, b * 256, 256)
        s2 = _min_sum(qt, sc, mn, bs, b)
        if qt == Q6_K:
            v = xd[b] * F32(s1 - s2)
        elif qt == Q3_K:
            v = xd[b] * F32(s1)
        else:
            v = fma32(-xdm[b], F32(s2), xd[b] * F32(s1))
        y = fma32(v, yd[b], y)
    return y


@jit
def _repack(w16, mn, xd, xdm, q, yd, bs, nb, gemm):
    """Q4_K 8x8 repack: gemm adds to the float accumulators per 64 elements, gemv per block."""
    a = F32(0.0)
    am = F32(0.0)
    for b in range(nb):
        dd = xd[b] * yd[b]
        dm = xdm[b] * yd[b]
        s1 = 0
        s2 = 0
        for j in range(4):                  # two 32-element sub-blocks per step
            i1 = _dot(w16, q, b * 256 + 64 * j, 64)
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
    w = np.empty(n_in, np.int8)
    sc = np.empty((nb, 16), np.int32)
    scf = sc.reshape(nb * 16)
    mn = np.empty((nb, 16), np.int32)
    xd = np.empty(nb, F32)
    xdm = np.empty(nb, F32)
    qf = q.reshape(n_tok * n_in)
    ng = n_in // 4
    sums = np.empty(n_tok * ng if path == VEC_DOT else 0, np.int32)
    w16 = np.empty(n_in, np.int16)
    sce = np.empty(n_in, np.int16)
    sce64 = sce.view(np.uint64)
    acc = np.empty(8, F32)
    accm = np.empty(8, F32)
    rb = np.empty(w_raw.shape[1], np.int32)
    st = np.empty(nb * 216, np.uint8)       # blocks at a whole-word stride (<= 216 bytes)
    st64 = st.view(np.uint64)
    w64 = w.view(np.uint64)
    n_gemm = n_tok - n_tok % 4
    for r in range(n_out):
        wr = w_raw[r]
        for i in range(rb.shape[0]):
            rb[i] = wr[i]
        unpack_scales(rb, qt, nb, sc, mn, xd, xdm)
        stage_row(wr, qt, nb, st)
        unpack_codes(st64, qt, nb, w64)
        for j in range(nb * 16):            # each sub-block's scale in 16 int16 lanes (4 words)
            v = np.uint64(scf[j] & 0xFFFF) * _REP4
            for u in range(4):
                sce64[4 * j + u] = v
        for e in range(n_in):               # scale * code: a block's sums are plain dots
            w16[e] = sce[e] * w[e]
        if path == VEC_DOT:                 # sums of 4 (the AVX2 lanes), 4 tokens per pass over w16
            t = 0
            while t < n_tok:
                if t + 4 <= n_tok:
                    kq_sums_4_4(w16, qf, t * n_in, n_in, n_in, sums, t * ng, ng)
                    t += 4
                else:
                    kq_sums_4_1(w16, qf, t * n_in, n_in, n_in, sums, t * ng, ng)
                    t += 1
        for t in range(n_tok):
            if path == VEC_DOT:
                out[t, r] = _vec_dot(qt, sc, mn, xd, xdm, yd[t], bs[t], nb, sums[t * ng:(t + 1) * ng], acc, accm)
            elif path == TILED:
                out[t, r] = _tiled(qt, w16, sc, mn, xd, xdm, q[t], yd[t], bs[t], nb)
            else:
                out[t, r] = _repack(w16, mn, xd, xdm, q[t], yd[t], bs[t], nb, t < n_gemm)
