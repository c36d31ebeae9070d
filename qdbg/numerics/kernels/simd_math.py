"""Scalar math of ggml's CPU backend (AVX2 + FMA build), bit-exact, for numba kernels.

libm: libggml-cpu.so imports (nm -D --undefined-only) expf@GLIBC_2.27, powf@GLIBC_2.27,
logf@GLIBC_2.27, tanhf, sincosf, sinf, cosf, erff, expm1f, sqrtf, roundf, ldexpf, fmaxf, fminf,
log2 from the system glibc. The functions below bind the same symbols by name
(numba ExternalFunction, resolved in this process against the same libm.so.6, same ifunc choice).
GCC merged rope_yarn's cosf + sinf into one sincosf call; glibc's sincosf gives the same bits as
sinf/cosf for every float32 (checked over all 2^32 inputs), so `sinf`/`cosf` stand in for it.

- `v_expf`: one lane of ggml_v_expf(__m256) (vec.h), the ARM-derived polynomial exp used by
  softmax, SiLU and flash attention; lanes are independent, so a lane is a scalar function.
- `v_silu`: one lane of ggml_v_silu(__m256): x / (1 + v_expf(0 - x)).
- `silu_f32`: ggml_silu_f32, the scalar tail: x / (1 + expf(-x)).
- `gelu_f32`: ggml_gelu_f32 as GCC compiled it (-ffp-contract=fast): one FMA in 1 + a*x*x.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from qdbg.numerics.kernels.nb import fma32, jit

_f = types.float32
expf = types.ExternalFunction("expf", _f(_f))
tanhf = types.ExternalFunction("tanhf", _f(_f))
sinf = types.ExternalFunction("sinf", _f(_f))
cosf = types.ExternalFunction("cosf", _f(_f))
powf = types.ExternalFunction("powf", _f(_f, _f))


@intrinsic
def f32_bits(typingctx, x):
    """bits of a float32 as uint32."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def bits_f32(typingctx, u):
    """float32 whose bits are the uint32 u."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_R = np.float32(float.fromhex("0x1.8p23"))
_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_C0 = np.float32(float.fromhex("0x1.0e4020p-7"))
_C1 = np.float32(float.fromhex("0x1.573e2ep-5"))
_C2 = np.float32(float.fromhex("0x1.555e66p-3"))
_C3 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_C4 = np.float32(float.fromhex("0x1.ffffecp-1"))
_ONE = np.uint32(0x3F800000)
_G = np.uint32(0x82000000)
_S1 = np.uint32(0x7F000000)
_23 = np.uint32(23)
_126 = np.float32(126.0)
_192 = np.float32(192.0)
_0 = np.float32(0.0)
_1 = np.float32(1.0)


@jit(inline="always")
def v_expf(x):
    """One lane of ggml_v_expf(__m256); x float32.

    z = fma(x, log2e, 0x1.8p23); n = z - 0x1.8p23; b = x - n*ln2_hi - n*ln2_lo (two fnmadd);
    k = 2^n via bits; j = polynomial in b; |n| <= 126: fma(k, j, k) (the all-lanes shortcut
    fma(j, k, k) is the same value); |n| > 192: s1*s1 (0 or inf); else (fma(s2, j, s2))*s1.
    """
    z = fma32(x, _LOG2E, _R)
    n = z - _R
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    e = f32_bits(z) << _23
    k = bits_f32(e + _ONE)
    u = b * b
    j = fma32(fma32(fma32(_C0, b, _C1), u, fma32(_C2, b, _C3)), u, _C4 * b)
    an = abs(n)
    g = _G if n <= _0 else np.uint32(0)
    s1 = bits_f32(g + _S1)
    big = s1 * s1 if an > _192 else fma32(bits_f32(e - g), j, bits_f32(e - g)) * s1
    return big if an > _126 else fma32(k, j, k)  # selects, no branches: LLVM can vectorize


@jit(inline="always")
def v_silu(x):
    """One lane of ggml_v_silu(__m256): x / (1 + v_expf(0 - x))."""
    return x / (_1 + v_expf(_0 - x))


@jit(inline="always")
def silu_f32(x):
    """ggml_silu_f32 (the scalar tail of ggml_vec_swiglu_f32): x / (1 + expf(-x))."""
    return x / (_1 + expf(-x))


_GELU_A = np.float32(0.044715)
_SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)
_HALF = np.float32(0.5)


@jit(inline="always")
def gelu_f32(x):
    """ggml_gelu_f32 as compiled: 0.5x * (1 + tanhf((sqrt(2/pi) x) * fma(0.044715 x, x, 1)))."""
    inner = fma32(_GELU_A * x, x, _1)
    return (_HALF * x) * (_1 + tanhf((_SQRT_2_OVER_PI * x) * inner))
