"""Scalar pieces of ggml's CPU flash attention (AVX2 + FMA + F16C build), bit-exact.

- `expf`: libm's expf (llvm.exp.f32 lowers to a call of the process's glibc expf, the one
  libggml-cpu calls).
- `v_expf_lane`: one lane of ggml_v_expf(__m256) (vec.h), the ARM-derived polynomial exp.
- `dot_f16_scores`: ggml_vec_dot_f16 (vec.cpp, AVX2 path) of K rows with a Q row
  already rounded to half, for a range of keys at once.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from qdbg.numerics.kernels.nb import f16_bits_to_f32, fma32, jit


@intrinsic
def f32_as_i32(typingctx, x):
    """bits of a float32 as int32."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def i32_as_f32(typingctx, x):
    """float32 whose bits are the int32 x."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@jit(inline="always")
def expf(x):
    """libm expf of a float32."""
    return np.float32(math.exp(np.float32(x)))


_R = np.float32(float.fromhex("0x1.8p23"))
_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_P0 = np.float32(float.fromhex("0x1.0e4020p-7"))
_P1 = np.float32(float.fromhex("0x1.573e2ep-5"))
_P2 = np.float32(float.fromhex("0x1.555e66p-3"))
_P3 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_P4 = np.float32(float.fromhex("0x1.ffffecp-1"))
_ONE_BITS = np.int32(0x3F800000)


@jit(inline="always")
def v_expf_lane(x):
    """One lane of ggml_v_expf(__m256 x); lanes are independent (the all-lanes-small shortcut
    returns fma(j, k, k), which the general blend also gives for such a lane)."""
    z = fma32(x, _LOG2E, _R)
    n = z - _R
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    e = f32_as_i32(z) << np.int32(23)
    k = i32_as_f32(e + _ONE_BITS)
    an = abs(n)
    u = b * b
    j = fma32(fma32(fma32(_P0, b, _P1), u, fma32(_P2, b, _P3)), u, _P4 * b)
    if not (an > np.float32(126.0)):
        return fma32(k, j, k)
    g = np.int32(-2113929216) if n <= np.float32(0.0) else np.int32(0)  # 0x82000000
    s1 = i32_as_f32(g + np.int32(0x7F000000))
    if an > np.float32(192.0):
        return s1 * s1
    s2 = i32_as_f32(e - g)
    return fma32(s2, j, s2) * s1


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
