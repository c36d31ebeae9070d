"""Scalar pieces of ggml's CPU flash attention (AVX2 + FMA + F16C build), bit-exact.

- `expf`: libm's expf (llvm.exp.f32 lowers to a call of the process's glibc expf, the one
  libggml-cpu calls).
- `v_expf_lane`: one lane of ggml_v_expf(__m256) (vec.h), the ARM-derived polynomial exp.
- `vec_dot_f16_f32q`: ggml_vec_dot_f16 (vec.cpp, AVX2 path) of a K row (half bits) with a Q row
  already rounded to half and held as float32.
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


@jit(inline="always")
def vec_dot_f16_f32q(k, q):
    """ggml_vec_dot_f16(n, k, q): 4 x 8-lane F32 accumulators over steps of 32 (fma per lane),
    reduce (a0+a2)+(a1+a3), then lo128+hi128 and two hadds; leftovers added in double."""
    n = q.shape[0]
    np_ = n - n % 32
    acc = np.zeros(32, np.float32)
    for i in range(0, np_, 32):
        for l in range(32):
            acc[l] = fma32(f16_bits_to_f32(k[i + l]), q[i + l], acc[l])
    t = np.empty(4, np.float32)
    for l in range(4):
        s_lo = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l])
        s_hi = (acc[4 + l] + acc[20 + l]) + (acc[12 + l] + acc[28 + l])
        t[l] = s_lo + s_hi
    sumf = np.float64((t[0] + t[1]) + (t[2] + t[3]))
    for i in range(np_, n):
        sumf += np.float64(f16_bits_to_f32(k[i]) * q[i])
    return np.float32(sumf)
