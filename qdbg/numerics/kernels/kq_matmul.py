"""The three K-quant x Q8_K matmul kernels of the AVX2 build, in their exact float order.

All three take a weight row unpacked by kq_unpack and the integer sums of scale * code * q per 4
(vec_dot's lanes) or 64 elements (kq_simd: u8 code x s8 q pair sums times the sub-block scale, as
the C kernels apply the scale to int16 pair sums; Q3_K's signed codes go through w16 = scale *
code dotted in int32, the same integers), and the
activation as Q8_K (q int8 [n_tok, n_in], d float32 [n_tok, nb], bsums int16 [n_tok, nb*16]).
Integer sums are exact; only the float steps per 256-element block differ:

vec_dot  ggml_vec_dot_qN_K_q8_K (arch/x86/quants.c, __AVX2__), used for n_tok < 8 (Q5_K and
         Q6_K there go to the fused kernels of kq_fused, same order). Integer lane k (of 8) holds
         the elements with (e % 32) // 4 == k. Per block dd = yd*xd, dmn = -yd*xdmin (f32
         products), then per lane
           Q2_K  acc = fma(dmn, f(mn[2k]*bs[2k] + mn[2k+1]*bs[2k+1]), acc); acc = fma(dd, f(L), acc)
           Q3_K  acc = fma(dd, f(L), acc)
           Q4_K  accm[k<4] = fma(dmn, f(mn[2k]*S[2k] + mn[2k+1]*S[2k+1]), accm)  (S = per-32 bsums)
                 acc = fma(dd, f(L), acc)
         result hsum8(acc) (+ ((m0+m2)+(m1+m3)) for Q4_K).
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
from qdbg.numerics.kernels.kq_rows import (kq_repack_row, kq_tiled_row_min8, kq_tiled_row_min16,
                                           kq_tiled_row_q3, kq_tiled_row_q6)
from qdbg.numerics.kernels.kq_simd import (kq_madd_4_1, kq_madd_4_4, kq_madd_64_1, kq_madd_64_2, kq_madd_64_4,
                                           kq_madd_64_8, kq_sums_4_1, kq_sums_4_4)
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
def _vec_dot(qt, mn, xd, xdm, yd, bs, nb, c, acc, accm):
    """Q2_K, Q3_K, Q4_K (unrepacked); c: the token's sums of 4 (kq_simd, G = 4), c[b*64 + j] over
    elements 4j..4j+3 of block b."""
    for k in range(8):
        acc[k] = F32(0.0)
        accm[k] = F32(0.0)
    for b in range(nb):
        dd = yd[b] * xd[b]
        dmn = -yd[b] * xdm[b]
        bo = b * 16
        if qt == Q2_K:
            for k in range(8):
                pr = mn[b, 2 * k] * np.int32(bs[bo + 2 * k]) + mn[b, 2 * k + 1] * np.int32(bs[bo + 2 * k + 1])
                acc[k] = fma32(dmn, F32(pr), acc[k])
        elif qt == Q4_K:
            for k in range(4):
                s0 = np.int32(bs[bo + 4 * k]) + np.int32(bs[bo + 4 * k + 1])
                s1 = np.int32(bs[bo + 4 * k + 2]) + np.int32(bs[bo + 4 * k + 3])
                pr = mn[b, 2 * k] * s0 + mn[b, 2 * k + 1] * s1
                accm[k] = fma32(dmn, F32(pr), accm[k])
        for k in range(8):
            lk = np.int32(0)
            for g in range(8):
                lk = _i32(lk + c[b * 64 + 8 * g + k])
            acc[k] = fma32(dd, F32(lk), acc[k])
    r = hsum8(acc)
    if qt == Q4_K:
        r = r + ((accm[0] + accm[2]) + (accm[1] + accm[3]))
    return r


@jit
def _min_terms(qt, bs, ntp):
    """Per block, sub-block and token, the bsums the mins (or Q6_K's -32 offset) multiply:
    bt[b, s, t] with s < 16 (Q2_K, Q6_K: per 16 elements) or < 8 (Q4_K, Q5_K: per 32); tokens
    padded to ntp with zeros."""
    n_tok = bs.shape[0]
    nb = bs.shape[1] // 16
    bt = np.zeros((nb, 16, ntp), np.int32)
    for t in range(n_tok):
        for b in range(nb):
            bo = 16 * b
            if qt == Q4_K or qt == Q5_K:
                for s in range(8):
                    bt[b, s, t] = np.int32(bs[t, bo + 2 * s]) + np.int32(bs[t, bo + 2 * s + 1])
            else:
                for s in range(16):
                    bt[b, s, t] = np.int32(bs[t, bo + s])
    return bt


@jit
def kq_matmul(w_raw, qt, path, q, yd, bs, out):
    """out [n_tok, n_out] = W (GGUF rows, type code qt) x Q8_K activations, by `path`."""
    n_out = w_raw.shape[0]
    n_tok, n_in = q.shape
    nb = n_in // 256
    w = np.empty(n_in, np.int8)
    codes = w.view(np.uint8)
    sc = np.empty((nb, 16), np.int32)
    scf = sc.reshape(nb * 16)
    mn = np.zeros((nb, 16), np.int32)      # unpack_scales writes only the mins a type has
    xd = np.empty(nb, F32)
    xdm = np.empty(nb, F32)
    qf = q.reshape(n_tok * n_in)
    signed = qt == Q3_K                     # codes -4..3: not bytes the u8 x s8 madd takes
    ntp = (n_tok + 7) // 8 * 8               # tiled/repack: 8 tokens per vector (kq_rows)
    ng = n_in // 4 if path == VEC_DOT else n_in // 64
    # per token: sums of 4 (vec_dot lanes, [t][g]) or sums of 64 (tiled/repack, [g][t], token-minor)
    sums = np.zeros(n_tok * ng if path == VEC_DOT else ng * ntp, np.int32)
    w16 = np.empty(n_in if signed else 0, np.int16)
    sce = np.empty(n_in if signed else 0, np.int16)
    sce64 = sce.view(np.uint64)
    acc = np.empty(8, F32)
    accm = np.empty(8, F32)
    # rows start on 8-byte boundaries when the data does (GGUF aligns tensors to 32) and a
    # block is a whole number of words (Q4_K 144, Q5_K 176 bytes)
    direct = (qt == Q4_K or qt == Q5_K) and w_raw.ctypes.data % 8 == 0 and w_raw.strides[0] % 8 == 0
    st = np.empty(nb * 216, np.uint8)       # blocks at a whole-word stride (<= 216 bytes)
    st64 = st.view(np.uint64)
    w64 = w.view(np.uint64)
    n_gemm = n_tok - n_tok % 4
    coef = np.zeros(nb * 16, np.int32)
    mnf = mn.reshape(nb * 16)
    bt = _min_terms(qt, bs, ntp) if path != VEC_DOT else np.zeros(0, np.int32).reshape(0, 0, 0)
    btf = bt.reshape(bt.size)
    ydT = np.zeros((nb, ntp), F32)
    for t in range(n_tok):
        for b in range(nb):
            ydT[b, t] = yd[t, b]
    ydf = ydT.reshape(nb * ntp)
    y = np.empty(ntp, F32)
    for r in range(n_out):
        wr = w_raw[r]
        unpack_scales(wr, qt, nb, sc, mn, xd, xdm)
        if direct:                          # Q4_K/Q5_K blocks are whole words: read them in place
            unpack_codes(wr.view(np.uint64), qt, nb, w64)
        else:
            stage_row(wr, qt, nb, st)
            unpack_codes(st64, qt, nb, w64)
        if signed:
            for j in range(nb * 16):        # each sub-block's scale in 16 int16 lanes (4 words)
                v = np.uint64(scf[j] & 0xFFFF) * _REP4
                for u in range(4):
                    sce64[4 * j + u] = v
            for e in range(n_in):           # scale * code: a block's sums are plain dots
                w16[e] = sce[e] * w[e]
        t = 0                               # the integer sums, several tokens per pass over the row
        while t < n_tok:
            four = t + 4 <= n_tok
            if path == VEC_DOT:
                if signed:
                    if four:
                        kq_sums_4_4(w16, qf, t * n_in, n_in, n_in, sums, t * ng, ng)
                    else:
                        kq_sums_4_1(w16, qf, t * n_in, n_in, n_in, sums, t * ng, ng)
                elif four:
                    kq_madd_4_4(codes, scf, qf, t * n_in, n_in, n_in, sums, t * ng, ng, 8)
                else:
                    kq_madd_4_1(codes, scf, qf, t * n_in, n_in, n_in, sums, t * ng, ng, 8)
            elif signed:
                for u in range(4 if four else 1):
                    for g in range(ng):
                        sums[g * ntp + t + u] = _dot(w16, q[t + u], 64 * g, 64)
            else:                           # 8, 4, 2 or 1 tokens per pass over the row
                k = 8 if t + 8 <= n_tok else 4 if four else 2 if t + 2 <= n_tok else 1
                if k == 8:
                    kq_madd_64_8(codes, scf, qf, t * n_in, n_in, n_in, sums, t, 1, ntp)
                elif k == 4:
                    kq_madd_64_4(codes, scf, qf, t * n_in, n_in, n_in, sums, t, 1, ntp)
                elif k == 2:
                    kq_madd_64_2(codes, scf, qf, t * n_in, n_in, n_in, sums, t, 1, ntp)
                else:
                    kq_madd_64_1(codes, scf, qf, t * n_in, n_in, n_in, sums, t, 1, ntp)
                t += k
                continue
            t += 4 if four else 1
        if path == VEC_DOT:
            for t in range(n_tok):
                out[t, r] = _vec_dot(qt, mn, xd, xdm, yd[t], bs[t], nb, sums[t * ng:(t + 1) * ng], acc, accm)
            continue
        for j in range(nb * 16):
            coef[j] = 32 * scf[j] if qt == Q6_K else mnf[j]
        if path == REPACK:
            kq_repack_row(sums, coef, btf, xd, xdm, ydf, nb, ntp, n_gemm, y)
        elif qt == Q6_K:
            kq_tiled_row_q6(sums, coef, btf, xd, xdm, ydf, nb, ntp, y)
        elif qt == Q3_K:
            kq_tiled_row_q3(sums, coef, btf, xd, xdm, ydf, nb, ntp, y)
        elif qt == Q2_K:
            kq_tiled_row_min16(sums, coef, btf, xd, xdm, ydf, nb, ntp, y)
        else:
            kq_tiled_row_min8(sums, coef, btf, xd, xdm, ydf, nb, ntp, y)
        for t in range(n_tok):
            out[t, r] = y[t]
