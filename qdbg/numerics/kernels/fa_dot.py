"""ggml_vec_dot_f16 (vec.cpp, AVX2 + F16C path) of every key of a KV head with a group of Q rows
already rounded to half, bit-exact and batched so the key axis vectorizes (the per-call
qdbg.numerics.kernels.floats.vec_dot_f16 gives the same bits, 5x slower here). expf and the
ggml_v_expf lane come from qdbg.numerics.kernels.simd_math.
"""

from __future__ import annotations

import numpy as np

from qdbg.numerics.kernels.nb import f16_bits_to_f32, fma32, jit


@jit
def dot_f16_scores(k, hk, qg, sc):
    """sc[r, ic] = ggml_vec_dot_f16(K[ic, hk], Q[r]) for every key: k uint16 [n_kv, n_head_kv, DK],
    qg f32 [R, DK] (half-rounded Q rows), sc f32 [R, n_kv]. Per key: 4 x 8-lane FMA accumulators
    over 32-wide steps, (a0+a2)+(a1+a3), lo128+hi128, two hadds, leftovers in double. Computed
    on 64-key blocks of K transposed, so the key axis vectorizes."""
    n_kv = k.shape[0]
    n = qg.shape[1]
    np_ = n - n % 32
    ktb = np.empty((n, 64), np.float32)
    acc = np.empty((32, 64), np.float32)
    for b0 in range(0, n_kv, 64):
        nb = min(64, n_kv - b0)
        for j in range(nb):
            for d in range(n):
                ktb[d, j] = f16_bits_to_f32(k[b0 + j, hk, d])
        for r in range(qg.shape[0]):
            for l in range(32):
                for j in range(nb):
                    acc[l, j] = 0.0
            for i in range(0, np_, 32):
                for l in range(32):
                    qv = qg[r, i + l]
                    for j in range(nb):
                        acc[l, j] = fma32(ktb[i + l, j], qv, acc[l, j])
            for j in range(nb):
                t0 = ((acc[0, j] + acc[16, j]) + (acc[8, j] + acc[24, j])) + \
                    ((acc[4, j] + acc[20, j]) + (acc[12, j] + acc[28, j]))
                t1 = ((acc[1, j] + acc[17, j]) + (acc[9, j] + acc[25, j])) + \
                    ((acc[5, j] + acc[21, j]) + (acc[13, j] + acc[29, j]))
                t2 = ((acc[2, j] + acc[18, j]) + (acc[10, j] + acc[26, j])) + \
                    ((acc[6, j] + acc[22, j]) + (acc[14, j] + acc[30, j]))
                t3 = ((acc[3, j] + acc[19, j]) + (acc[11, j] + acc[27, j])) + \
                    ((acc[7, j] + acc[23, j]) + (acc[15, j] + acc[31, j]))
                sumf = np.float64((t0 + t1) + (t2 + t3))
                for i in range(np_, n):
                    sumf += np.float64(ktb[i, j] * qg[r, i])
                sc[r, b0 + j] = np.float32(sumf)
